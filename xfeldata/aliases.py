"""Short names for sources and keys, read from EXtra-data's alias definitions.

An alias stands for a source (``"sa1-xgm": "SA1_XTD2_XGM/DOOCS/MAIN"``) or a
source and key (``"sa1-x": ("SA1_XTD2_XGM/DOOCS/MAIN", "beamPosition.ixPos")``).
Definitions come as dicts or as files in EXtra-data's format, YAML (``.yml``,
``.yaml``), JSON or TOML, holding ``alias: source``, ``alias: [source, key]`` or,
for several keys of one source, ``source: {alias: key, ...}``.  Names are
compared as EXtra-data compares them: case-insensitive, ``_`` the same as ``-``.

Examples
--------
>>> load_aliases({"SA1_XGM": "SA1_XTD2_XGM/DOOCS/MAIN"})
{'sa1-xgm': 'SA1_XTD2_XGM/DOOCS/MAIN'}
>>> normalise_alias("Sa1_XGM")
'sa1-xgm'
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_ALIASES_FILE", "Alias", "load_aliases", "normalise_alias"]

#: Where a proposal keeps its aliases (``{}`` is the proposal directory), as in EXtra-data.
DEFAULT_ALIASES_FILE = "{}/usr/extra-data-aliases.yml"

#: What an alias stands for: a source name, or ``(source, key)``.
Alias = str | tuple[str, str]


def normalise_alias(name: str) -> str:
    """The form aliases are compared in: lower case, ``-`` for ``_``."""
    return name.lower().replace("_", "-")


def _read_file(path: Path) -> dict[str, Alias]:
    suffix = path.suffix.lower()
    if suffix == ".json":
        with open(path) as f:
            data = json.load(f)
    elif suffix in (".yml", ".yaml"):
        import yaml

        with open(path) as f:
            data = yaml.safe_load(f) or {}
    elif suffix == ".toml":
        import tomllib

        with open(path, "rb") as f:
            data = tomllib.load(f)
    else:
        raise ValueError(f"{path}: alias files are .yml, .yaml, .json or .toml, not {suffix or 'no suffix'}")
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: an alias file holds a mapping of aliases, not {type(data).__name__}")
    aliases: dict[str, Alias] = {}
    for name, value in data.items():
        if isinstance(value, str):
            aliases[str(name)] = value
        elif isinstance(value, list) and len(value) == 2:
            aliases[str(name)] = (str(value[0]), str(value[1]))
        elif isinstance(value, Mapping):  # source: {alias: key}
            for alias, key in value.items():
                aliases[str(alias)] = (str(name), str(key))
        else:
            raise ValueError(f"{path}: alias {name!r} must be a source, [source, key] or "
                             f"{{alias: key}}, not {value!r}")
    return aliases


def _check_dict(definition: Mapping[Any, Any]) -> dict[str, Alias]:
    for name, value in definition.items():
        ok = isinstance(name, str) and (
            isinstance(value, str) or (isinstance(value, tuple) and len(value) == 2))
        if not ok:
            raise ValueError(f"alias {name!r}: a dict of aliases maps str to a source (str) "
                             f"or to (source, key), not {value!r}")
    return dict(definition)


def load_aliases(*definitions: Mapping[str, Alias] | str | os.PathLike,
                 existing: Mapping[str, Alias] | None = None) -> dict[str, Alias]:
    """Merge alias definitions (dicts or file paths) into one ``{normalised alias: target}`` dict.

    Parameters
    ----------
    definitions
        Dicts of ``alias -> source or (source, key)``, or paths of alias files.
    existing
        Aliases already defined (already normalised), merged first.

    Raises
    ------
    ValueError
        If one alias (in any spelling) is given two different targets, or a
        definition is malformed (the message names the file and alias).
    FileNotFoundError
        If an alias file does not exist.
    """
    merged: dict[str, Alias] = dict(existing or {})
    for definition in definitions:
        if isinstance(definition, Mapping):
            parsed = _check_dict(definition)
        elif isinstance(definition, str | os.PathLike):
            parsed = _read_file(Path(definition))
        else:
            raise TypeError(f"aliases are given as dicts or file paths, not {type(definition).__name__}")
        for name, target in parsed.items():
            key = normalise_alias(name)
            if merged.setdefault(key, target) != target:
                raise ValueError(f"conflicting definitions of alias {key!r}: {merged[key]!r} and {target!r}")
    return merged
