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

    Reports unreadable files, files without trains (``INDEX/trainId`` empty or
    all zero), zero, repeated and out-of-order train IDs, index entries that are
    not integers, negative, overflowing, do not start at 0, overlap, leave gaps
    or point past the end of a dataset, trains that two files claim for the same
    source, and keys whose dtype or entry shape changes between files (a dtype
    change with a common type is read as that type, and still reported).

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
    return check_run(path, include)[0]


def check_run(path: str | os.PathLike, include: str = "*") -> tuple[list[Problem], list[str]]:
    """:func:`validate_run`, plus notes on what is expected but worth knowing.

    Notes are not problems: suspect trains that the DAQ flagged (counted, and
    listed up to 10) are normal in real runs.

    Returns
    -------
    problems : list of Problem
        As :func:`validate_run`.
    notes : list of str
        Readable sentences.
    """
    problems: list[Problem] = []
    indexes: list[FileIndex] = []
    for file in list_run_files(path, include):
        try:
            indexes.append(read_file_index(file))
        except FileFormatError as exc:
            problems.append(Problem(exc.path, exc.problem))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        combined = RunFiles(indexes)
    # The files' own problems, and run-wide ones such as trains out of order
    # across sequence files; then trains claimed by several files.
    problems += [Problem(file, message) for file, message in combined.problems]
    problems += [Problem("", c) for c in combined.conflicts]
    problems += [Problem(file, message) for file, message in combined.all_key_clashes()]
    notes = []
    suspect = combined.suspect_train_ids
    if len(suspect):
        shown = ", ".join(map(str, suspect[:10].tolist())) + (" ..." if len(suspect) > 10 else "")
        notes.append(f"{len(suspect)} suspect train(s), kept by default "
                     f"(open_run(..., inc_suspect_trains=False) drops them): {shown}")
    return problems, notes
