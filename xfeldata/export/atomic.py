"""One rule for every output: write to a temporary name beside the target, rename when complete.

An existing output is only replaced with ``overwrite=True``; a failure (an
exception, Ctrl-C, a full disk) removes the temporary file and leaves an old
output untouched.

Examples
--------
>>> import tempfile, pathlib
>>> out = pathlib.Path(tempfile.mkdtemp()) / "table.csv"
>>> with atomic_output(out) as tmp:
...     _ = tmp.write_text("trainId,value\\n10000,1.5\\n")
>>> out.read_text().splitlines()[1]
'10000,1.5'
>>> with atomic_output(out) as tmp:
...     pass
Traceback (most recent call last):
...
FileExistsError: ... exists; pass overwrite=True (--overwrite) to replace it
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_output", "check_writable"]


def check_writable(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Raise :class:`FileExistsError` if ``path`` exists and ``overwrite`` is False.

    Parameters
    ----------
    path
        The output file or directory.
    overwrite
        Whether an existing output may be replaced.

    Returns
    -------
    pathlib.Path
        ``path`` as a Path.
    """
    path = Path(path)
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    return path


@contextmanager
def atomic_output(path: str | os.PathLike, *, overwrite: bool = False,
                  directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` when the block completes.

    Parameters
    ----------
    path
        The final output (a file, or a directory with ``directory=True``).
    overwrite
        Replace an existing output (else :class:`FileExistsError` before anything is written).
    directory
        Yield a new empty temporary directory instead of a file name.

    Yields
    ------
    pathlib.Path
        Where to write; it does not exist yet for a file, and is empty for a directory.
    """
    path = check_writable(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    if directory:  # (not mkdtemp: its 0700 would keep colleagues out; mkdir follows the umask)
        tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.part"
        tmp.mkdir()
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        tmp.unlink()
    try:
        yield tmp
        if directory and path.is_dir() and not path.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            path.replace(old / path.name)
            tmp.replace(path)
            shutil.rmtree(old)
        else:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            tmp.replace(path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise
