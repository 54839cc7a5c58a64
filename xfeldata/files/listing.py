"""Finding run files: in a directory, or for a proposal's run under the data root.

Examples
--------
>>> list_run_files("r0001")                     # doctest: +SKIP
['r0001/RAW-R0001-AGIPD00-S00000.h5', ...]
"""

from __future__ import annotations

import fnmatch
import glob
import os
import warnings
from pathlib import Path

from .layout import DATA_ROOT_ENV, DEFAULT_DATA_ROOT


def list_run_files(path: str | os.PathLike, include: str = "*") -> list[str]:
    """The run files of a directory (``*.h5`` but ``overview.h5``), or the file itself.

    Dangling links and directories named ``*.h5`` are skipped; links that
    cannot be followed (a symlink loop) are skipped with a warning.

    Raises
    ------
    FileNotFoundError
        If the path does not exist, or the directory holds no (matching) run files.
    """
    path = str(Path(path))
    if os.path.isfile(path):
        return [path]
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file or directory")
    with os.scandir(path) as entries:  # file types from the directory listing, no stat each
        names = sorted(
            e.name for e in entries
            if os.path.splitext(e.name)[1] == ".h5" and e.name != "overview.h5" and _is_file(e)
        )
    if not names:
        raise FileNotFoundError(f"{path}: no run files (*.h5) in this directory")
    picked = names if include == "*" else [n for n in names if fnmatch.fnmatchcase(n, include)]
    if not picked:
        raise FileNotFoundError(
            f"{path}: no run files match include={include!r} (of {len(names)} files)")
    return [os.path.join(path, n) for n in picked]


def _is_file(entry: os.DirEntry) -> bool:
    """True for a file or a link to one; False, with a warning, for a link that
    cannot be followed (a loop, no permission); False for dangling links and directories."""
    try:
        return entry.is_file()
    except OSError as exc:
        warnings.warn(f"{entry.path}: skipped, cannot be followed ({exc.strerror or exc})", stacklevel=4)
        return False


def proposal_run_dir(proposal: int | str, run: int | str, data: str = "raw") -> Path:
    """The directory of a run: ``<root>/<INSTRUMENT>/<CYCLE>/p<proposal>/<data>/r<run>``.

    The root is ``$XFELDATA_ROOT`` or the facility's ``/gpfs/exfel/exp``.

    Raises
    ------
    FileNotFoundError
        If no instrument/cycle folder holds the proposal.
    """
    root = Path(os.environ.get(DATA_ROOT_ENV, DEFAULT_DATA_ROOT))
    prop = f"p{int(str(proposal).lstrip('p')):06d}"
    matches = sorted(glob.glob(str(root / "*" / "*" / prop)))
    if not matches:
        raise FileNotFoundError(
            f"proposal {prop} not found under {root}/<instrument>/<cycle>/ "
            f"(set {DATA_ROOT_ENV} to use another data root)")
    return Path(matches[0]) / data / f"r{int(str(run).lstrip('r')):04d}"
