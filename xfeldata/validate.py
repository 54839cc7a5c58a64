"""Index consistency checks of a run (``xfeldata validate``).

Examples
--------
>>> for problem in validate_run("r0001"):          # doctest: +SKIP
...     print(problem)
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

from .errors import FileFormatError
from .files.index import FileIndex, read_file_index
from .files.listing import list_run_files
from .run import RunFiles


@dataclass(frozen=True)
class Problem:
    """One inconsistency: the file at fault (empty for run-wide ones) and what is wrong."""

    file: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.message}" if self.file else self.message


def validate_run(path: str | os.PathLike, include: str = "*") -> list[Problem]:
    """Check every file of a run against the format's index rules.

    Reports unreadable files, zero, repeated and out-of-order train IDs, index
    entries that do not start at 0, overlap, leave gaps or point past the end of
    a dataset, and trains that two files claim for the same source.

    Parameters
    ----------
    path
        A run directory or a single file.
    include
        Glob on file names.

    Returns
    -------
    list of Problem
        Empty when the run is consistent.
    """
    problems: list[Problem] = []
    indexes: list[FileIndex] = []
    for file in list_run_files(path, include):
        try:
            indexes.append(read_file_index(file))
        except FileFormatError as exc:
            problems.append(Problem(exc.path, exc.problem))
    for fi in indexes:
        problems += [Problem(fi.path, p) for p in fi.problems]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        combined = RunFiles(indexes)
    problems += [Problem("", c) for c in combined.conflicts]
    return problems
