"""Execute the notebooks and store copies with their outputs in ``notebooks/executed/``.

The notebooks themselves are kept without outputs (the test suite executes them);
the executed copies are for readers of the repository.  Outputs name no place on
the machine that made them: the temporary directory the notebooks write their
data to becomes ``<tmp>``, the repository's own path is dropped (file names stay
relative, e.g. in warnings), the Python installation becomes ``<python>`` and the
home directory ``~``; a copy that still holds an absolute path or the host name
is not written.

Run from the repository root::

    python -m notebooks.execute                      # every notebook
    python -m notebooks.execute offline_demo         # some of them

Examples
--------
>>> sanitise("/scratch/x/tmpab12/r0001 and /repo/xfeldata/api.py:3", {"/scratch/x": "<tmp>", "/repo/": ""})
'<tmp>/r0001 and xfeldata/api.py:3'
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import sys
import sysconfig
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "executed"
#: An absolute path in text: a ``/`` that starts a word, then at least two path parts.
ABSOLUTE_PATH = re.compile(r"(?<![\w.:/<>~-])/(?:[\w.+@-]+/)+[\w.+@-]*")


def sanitise(text: str, replacements: dict[str, str]) -> str:
    """``text`` with each prefix of ``replacements`` replaced (a temporary directory's
    ``tmp*`` entry below a replaced prefix goes with it)."""
    for prefix, neutral in sorted(replacements.items(), key=lambda item: -len(item[0])):
        if neutral == "<tmp>":
            text = re.sub(re.escape(prefix.rstrip("/")) + r"(?:/tmp[\w-]+)?", neutral, text)
        else:
            text = text.replace(prefix, neutral)
    return text


def machine_strings(text: str) -> list[str]:
    """Absolute paths and the host name found in ``text`` (empty if it names no place)."""
    found = ABSOLUTE_PATH.findall(text)
    host = socket.gethostname()
    if host and len(host) > 3 and host in text:
        found.append(host)
    return found


def _replacements(tmp: str) -> dict[str, str]:
    repo = str(HERE.parent)
    found = {tmp: "<tmp>", os.path.realpath(tmp): "<tmp>", repo + "/": "", os.path.realpath(repo) + "/": ""}
    for name in ("purelib", "platlib", "stdlib"):
        found[sysconfig.get_paths()[name]] = "<python>"
    found[sys.prefix] = "<python>"
    found[os.path.expanduser("~")] = "~"
    return found


def _clean(value: object, replacements: dict[str, str]) -> object:
    if isinstance(value, str):
        return sanitise(value, replacements)
    if isinstance(value, list):
        return [_clean(v, replacements) for v in value]
    if isinstance(value, dict):
        return {k: (v if k in ("image/png", "image/jpeg") else _clean(v, replacements)) for k, v in value.items()}
    return value


def execute(path: Path, out_dir: Path = OUT, timeout: int = 300) -> Path:
    """Execute one notebook and write its sanitised copy to ``out_dir``; returns the copy's path.

    Raises
    ------
    nbclient.exceptions.CellExecutionError
        If a cell fails.
    ValueError
        If an output still names an absolute path or the host name.
    """
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory() as tmp:
        saved = {name: os.environ.get(name) for name in ("TMPDIR", "PYTHONPATH")}
        os.environ["TMPDIR"] = tmp   # the kernel's temporary directories are below tmp
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE.parent), saved["PYTHONPATH"]) if p)
        try:
            NotebookClient(nb, kernel_name="python3", timeout=timeout,
                           resources={"metadata": {"path": tmp}}).execute()
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        replacements = _replacements(tmp)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell["outputs"] = [nbformat.from_dict(_clean(out, replacements)) for out in cell["outputs"]]
    nb.metadata.pop("widgets", None)
    leaks = machine_strings(nbformat.writes(_without_images(nb)))
    if leaks:
        raise ValueError(f"{path.name}: outputs still name places on this machine: {sorted(set(leaks))[:5]}")
    out_dir.mkdir(exist_ok=True)
    target = out_dir / path.name
    nbformat.write(nb, target)
    return target


def _without_images(nb):
    """A copy of a notebook without image data (base64 may hold any characters)."""
    import copy

    stripped = copy.deepcopy(nb)
    for cell in stripped.cells:
        for out in cell.get("outputs", []):
            for key in ("image/png", "image/jpeg"):
                out.get("data", {}).pop(key, None)
    return stripped


def main(argv: list[str] | None = None) -> int:
    """Execute the named notebooks (default: all of ``notebooks/``) into ``notebooks/executed/``."""
    parser = argparse.ArgumentParser(prog="python -m notebooks.execute", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="notebook names without .ipynb (default: all)")
    args = parser.parse_args(argv)
    paths = [HERE / f"{n.removesuffix('.ipynb')}.ipynb" for n in args.names] or sorted(HERE.glob("*.ipynb"))
    for path in paths:
        print(f"executing {path.name} ...", flush=True)
        print(f"  wrote {execute(path).relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
