"""Exceptions raised by xfeldata.

Every error names the file, source, key or message at fault.

Examples
--------
>>> err = SourceNameError("SA1_XTD2_XGM/DOOCS/MIAN", ["SA1_XTD2_XGM/DOOCS/MAIN"])
>>> print(err)
source SA1_XTD2_XGM/DOOCS/MIAN is not in this data; did you mean: SA1_XTD2_XGM/DOOCS/MAIN?
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class XfeldataError(Exception):
    """Base class of xfeldata's own exceptions."""


class FileFormatError(XfeldataError, ValueError):
    """A file is not readable as a run file: not HDF5, truncated, or not in the format.

    Parameters
    ----------
    path
        The file at fault.
    problem
        What is wrong with it.
    """

    def __init__(self, path: str, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class IndexWorkerError(XfeldataError, RuntimeError):
    """A process indexing files in parallel failed (crashed, timed out or raised) on one file.

    Parameters
    ----------
    path
        The file the worker was indexing.
    problem
        What happened.
    """

    def __init__(self, path: str, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class DataIndexError(XfeldataError, IndexError):
    """The index of a file points outside the data of one key.

    Raised when the key is read; other keys of the same file still read.
    """

    def __init__(self, path: str, source: str, key: str, problem: str):
        self.path, self.source, self.key = str(path), source, key
        super().__init__(f"{self.path}: source {source}, key {key}: {problem}")


class DataReadError(XfeldataError, OSError):
    """Rows of one dataset could not be read (a corrupt chunk, an I/O error).

    The message names the file, the dataset (with source and key) and the rows.
    """

    def __init__(self, path: str, dataset: str, source: str, key: str, start: int, stop: int,
                 cause: BaseException):
        self.path, self.dataset, self.source, self.key = str(path), dataset, source, key
        self.rows = (start, stop)
        super().__init__(f"{self.path}: cannot read rows {start}:{stop} of {dataset} "
                         f"(source {source}, key {key}): {type(cause).__name__}: {cause}")

    def __str__(self) -> str:  # OSError would format its arguments as a tuple
        return str(self.args[0])


class FileChangedError(XfeldataError, OSError):
    """A run file is no longer the file that was indexed (replaced, truncated or rewritten).

    Open the run again to index the new content.
    """

    def __init__(self, path: str, problem: str):
        self.path = str(path)
        super().__init__(f"{self.path}: file changed since the run was opened ({problem}); "
                         "open the run again to read its new content")

    def __str__(self) -> str:
        return str(self.args[0])


def _close_matches(word: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    candidates = list(candidates)
    matches = difflib.get_close_matches(word, candidates, n=n, cutoff=0.6)
    if not matches:
        lowered = word.lower()
        matches = [c for c in candidates if lowered in c.lower()][:n]
    return matches


class SourceNameError(XfeldataError, KeyError):
    """A source name that is not in the run (or selection)."""

    def __init__(self, source: str, known: Iterable[str]):
        self.source = source
        self.matches = _close_matches(source, known)
        hint = f"; did you mean: {', '.join(self.matches)}?" if self.matches else ""
        super().__init__(f"source {source} is not in this data{hint}")

    def __str__(self) -> str:  # KeyError would print its message in quotes
        return str(self.args[0])


class PropertyNameError(XfeldataError, KeyError):
    """A key that the given source does not have."""

    def __init__(self, key: str, source: str, known: Iterable[str]):
        self.key, self.source = key, source
        self.matches = _close_matches(key, known)
        hint = f"; did you mean: {', '.join(self.matches)}?" if self.matches else ""
        super().__init__(f"key {key} is not in source {source}{hint}")

    def __str__(self) -> str:
        return str(self.args[0])


class TrainIdError(XfeldataError, KeyError):
    """Train IDs asked for by label that the run does not have."""

    def __init__(self, missing: Iterable[int], first: int | None, last: int | None,
                 suspect: Iterable[int] = ()):
        missing = [int(t) for t in missing]
        self.missing = missing
        suspect = [int(t) for t in suspect]
        shown = ", ".join(map(str, missing[:5])) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        span = f" (the run has trains {first} to {last}" if first is not None else " (no good trains"
        if suspect:
            span += f", and suspect train IDs {', '.join(map(str, suspect[:5]))}"
            span += f" and {len(suspect) - 5} more" if len(suspect) > 5 else ""
        super().__init__(f"train ID {shown} not in this data{span})")

    def __str__(self) -> str:
        return str(self.args[0])
