"""The ``xfeldata`` command.

Examples
--------
.. code-block:: console

    $ xfeldata demo
    $ xfeldata make-example r0001 --detector AGIPD1M --trains 20 --frames 4 --sequences 2
    $ xfeldata info r0001 --details
    $ xfeldata validate r0001
    $ xfeldata export r0001 xgm.csv --format csv --select "SA1_XTD2_XGM/*"
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TextIO

from . import __version__
from .bridge.cli import (
    DETECTOR_CHOICES,
    add_commands,
    check_detector_options,
    detector_name,
    module_list,
    positive_int,
)
from .detectors.kinds import DETECTORS
from .export.cli import add_commands as add_export_commands
from .files.layout import FORMAT_VERSIONS
from .pipeline.cli import add_commands as add_pipeline_commands


def _cmd_info(args: argparse.Namespace) -> int:
    # The selection layer is all a summary needs: no xarray, dask or pandas to import.
    from .files.collect import index_files
    from .files.listing import list_run_files
    from .run import RunFiles, RunSelection
    from .summary import format_info

    strict = os.path.isfile(args.path)
    indexes = index_files(list_run_files(args.path, args.include), strict=strict)
    print(format_info(RunSelection(RunFiles(indexes)), details=args.details, counts=args.counts,
                      auxiliary=args.auxiliary))
    return 0


def _cmd_ls(args: argparse.Namespace) -> int:
    from .errors import FileFormatError
    from .files.index import read_file_index
    from .files.listing import list_run_files

    status = 0
    for given in args.files:
        for path in list_run_files(given):
            try:
                fi = read_file_index(path)
            except FileFormatError as exc:
                print(f"{path}: ERROR {exc.problem}")
                status = 1
                continue
            tids = fi.good_train_ids()
            span = f"{tids[0]}-{tids[-1]}" if len(tids) else "no trains"
            print(f"{fi.name}  format {fi.format_version}  {len(tids)} trains ({span})  "
                  f"{fi.size / 1e6:.1f} MB")
            for source, si in sorted(fi.sources.items()):
                print(f"    {si.category:<10} {source}  ({len(si.keys)} keys)")
            for legacy, current in sorted(fi.aliases.items()):
                print(f"    {'alias':<10} {legacy} -> {current}")
            for si in sorted(fi.auxiliary, key=lambda si: si.name) if args.auxiliary else ():
                print(f"    {si.category:<10} {si.name}  ({len(si.keys)} keys)")
    return status


def _cmd_validate(args: argparse.Namespace) -> int:
    from .validate import check_run

    problems, notes = check_run(args.path, include=args.include)
    for problem in problems:
        print(problem)
    for note in notes:
        print(f"note: {note}")
    if problems:
        print(f"{len(problems)} problem(s) found", file=sys.stderr)
        return 1
    print(f"{args.path}: no problems found")
    return 0


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 1e9:.1f} GB" if n_bytes >= 1e9 else f"{n_bytes / 1e6:.1f} MB"


def _pixel_data_note(args: argparse.Namespace) -> str | None:
    """What make-example's pixel data amounts to before compression (None without a detector)."""
    import numpy as np

    if args.detector == "none":
        return None
    kind = DETECTORS[args.detector]
    n_modules = len(args.modules) if args.modules else len(kind.modules)
    shape = kind.corrected_entry_shape if args.corrected else kind.raw_entry_shape
    itemsize = 4 if args.corrected else np.dtype(kind.raw_dtype).itemsize  # corrected: float32
    total = n_modules * args.trains * args.frames * math.prod(shape) * itemsize
    bound = "at most " if args.irregular else ""
    return (f"writing {kind.name}: {n_modules} modules x {args.trains} trains x {args.frames} frames of "
            f"{shape}: {bound}{_size(total)} of pixel data before compression")


def _cmd_make_example(args: argparse.Namespace) -> int:
    from .testing import make_example

    note = _pixel_data_note(args)
    if note:
        print(note, flush=True)
    per_seq = math.ceil(args.trains / args.sequences) if args.sequences > 1 else None
    path = make_example(
        args.directory,
        detector=None if args.detector == "none" else args.detector,
        corrected=args.corrected, new_corr_names=not args.legacy_names,
        modules=args.modules, n_trains=args.trains, frames_per_train=args.frames,
        trains_per_sequence=per_seq, format_version=args.format, old_index=args.old_index,
        compression=None if args.compression == "none" else args.compression,
        pixel_chunk_frames=args.pixel_chunk_frames,
        slow_sources=not args.no_slow, first_train_id=args.first_train, seed=args.seed,
        irregular=args.irregular, proposal=args.proposal, run=args.run,
        progress=sys.stderr.isatty(),
    )
    files = sorted(Path(path).glob("*.h5"))
    size = sum(f.stat().st_size for f in files)
    print(f"wrote example run to {path} ({len(files)} files, {_size(size)})")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(keep=args.keep)
    return 0


def _detector_or_none(text: str) -> str:
    """``--detector`` of make-example: a detector name or alias (any case), or ``none``."""
    if text.strip().lower() == "none":
        return "none"
    try:
        return detector_name(text)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{exc}, or none for no detector") from None


def _check_make_example(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject make-example options that do not fit together (argparse error, exit 2)."""
    if args.frames is None:  # a camera (ePix100) records one frame per train
        kind = DETECTORS.get(args.detector)
        args.frames = 1 if kind is not None and not (kind.row_per_frame or kind.cell_axis) else 16
    if args.detector == "none":
        if args.modules is not None:
            parser.error("argument --modules: no detector to take modules from (--detector none)")
        if args.no_slow:
            parser.error("nothing to write: --detector none and --no-slow")
    else:
        problem = check_detector_options(args.detector, args.modules, args.frames)
        if problem:
            parser.error(problem)
    if args.sequences > args.trains:
        parser.error(f"argument --sequences: {args.sequences} sequence files need at least "
                     f"as many trains, not --trains {args.trains}")
    if args.old_index and args.format != "0.5":
        parser.error("argument --old-index: the first/last/status index needs --format 0.5")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``xfeldata`` command (subcommands included)."""
    parser = argparse.ArgumentParser(
        prog="xfeldata",
        description="European XFEL runs and Karabo bridge streams as labelled arrays.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("info", help="summarise a run directory or file")
    p.add_argument("path", help="run directory or single file")
    p.add_argument("--details", action="store_true", help="list keys with shapes and dtypes")
    p.add_argument("--counts", action="store_true", help="in how many trains each source has data")
    p.add_argument("-x", "--auxiliary", action="store_true",
                   help="also list the auxiliary (REDUCTION, ERRATA) sources, as lsxfel -x does")
    p.add_argument("--include", default="*", help="glob on file names (default: all)")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("ls", help="list what single files hold")
    p.add_argument("files", nargs="+", help="files or directories")
    p.add_argument("-x", "--auxiliary", action="store_true",
                   help="also list the auxiliary (REDUCTION, ERRATA) sources, as lsxfel -x does")
    p.set_defaults(func=_cmd_ls)

    p = sub.add_parser("validate", help="check a run's indexes; exit 1 on problems")
    p.add_argument("path", help="run directory or single file")
    p.add_argument("--include", default="*", help="glob on file names (default: all)")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("make-example", help="write a synthetic run in the facility's format")
    p.add_argument("directory", help="where to write the run (created if needed)")
    p.add_argument("--detector", default="AGIPD1M", choices=[*DETECTOR_CHOICES, "none"],
                   type=_detector_or_none,
                   help="detector kind, any case (AGIPD, LPD and DSSC stand for the 1M ones; "
                        "default AGIPD1M)")
    p.add_argument("--corrected", action="store_true", help="corrected (CORR) detector data")
    p.add_argument("--legacy-names", action="store_true",
                   help="corrected data under the old .../DET/nCH0:xtdf names only")
    p.add_argument("--modules", type=module_list, default=None,
                   help="e.g. 0-3,8 (default: all modules of the detector)")
    p.add_argument("--trains", type=positive_int, default=20, help="trains in the run (default 20)")
    p.add_argument("--frames", type=positive_int, default=None,
                   help="frames (memory cells) per train (default 16; EPIX100: 1)")
    p.add_argument("--sequences", type=positive_int, default=1,
                   help="sequence files per aggregator (default 1)")
    p.add_argument("--format", default="1.3", choices=FORMAT_VERSIONS,
                   help="file format version (default 1.3)")
    p.add_argument("--old-index", action="store_true", help="first/last/status index (0.5)")
    p.add_argument("--compression", default="facility", choices=["facility", "none", "gzip", "lzf"],
                   help="pixel data compression; facility: raw uncompressed, corrected deflate 1 + shuffle "
                        "(default facility)")
    p.add_argument("--pixel-chunk-frames", type=positive_int, default=1,
                   help="frames per HDF5 chunk of pixel data (default 1, as the facility writes)")
    p.add_argument("--no-slow", action="store_true", help="no slow or instrument sources")
    p.add_argument("--first-train", type=positive_int, default=10000,
                   help="first train ID (default 10000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random data (default 0)")
    p.add_argument("--irregular", action="store_true",
                   help="missing modules, varying frames, zero padding, suspect train, empty source")
    p.add_argument("--proposal", type=int, default=700000,
                   help="proposal number in the metadata (default 700000)")
    p.add_argument("--run", type=int, default=1,
                   help="run number in the metadata and file names (default 1)")
    p.set_defaults(func=_cmd_make_example, check=partial(_check_make_example, p))

    p = sub.add_parser("demo", help="write a synthetic run, open it, summarise it and read it")
    p.add_argument("--keep", metavar="DIR", default=None,
                   help="write the run here and keep it (default: a temporary directory)")
    p.set_defaults(func=_cmd_demo)

    add_commands(sub)
    add_pipeline_commands(sub)
    add_export_commands(sub)
    return parser


@contextmanager
def _warnings_as_lines(command: str) -> Iterator[None]:
    """Show warnings as ``xfeldata <command>: warning: <message>`` lines while inside."""
    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: TextIO | None = None, line: str | None = None) -> None:
        try:
            print(f"xfeldata {command}: warning: {message}", file=file or sys.stderr)
        except OSError:  # like warnings.showwarning: a warning has nowhere to go
            pass

    saved = warnings.showwarning
    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = saved


def _silence_stdout() -> None:
    """Point stdout at devnull after a broken pipe, so that the flush at exit is quiet.

    See the note on SIGPIPE in the documentation of Python's :mod:`signal`.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout is no real file (e.g. captured)
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``xfeldata`` command; returns the exit code.

    Errors about the user's input (missing paths, unreadable or existing
    files, unknown names, bad options) are printed in one line without a
    traceback, with exit code 2; warnings are printed as one line each.  When
    the reader of stdout goes away (``xfeldata ls r0001 | head``), the command
    stops quietly with exit code 1.

    Parameters
    ----------
    argv
        The arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit code.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    check = getattr(args, "check", None)
    if check is not None:
        check(args)
    from .errors import XfeldataError

    try:
        with _warnings_as_lines(args.command):
            status = int(args.func(args) or 0)
            sys.stdout.flush()  # a broken pipe shows here rather than at exit
        return status
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _silence_stdout()
        return 1
    except (OSError, XfeldataError, KeyError, ValueError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"xfeldata {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
