"""``xfeldata export RUN OUT --format ...``: a selection of a run in one of the export formats.

- ``h5``: the facility's format (``run.write``); ``virtual``: HDF5 virtual datasets over
  the run (``run.write_virtual``); ``cxi``: a detector as CXI (``xfeldata.write_cxi``);
- ``nc`` (a file), ``zarr`` (a directory): one group per source, or with ``--detector``
  its stacked Dataset;
- ``csv``, ``json``: the scalar values of control sources, one row per train;
- ``npy`` (a directory, one file per variable), ``mat`` (MATLAB v7.3): as ``nc``;
- ``png`` (a directory): one 16-bit image per recorded detector frame.

Heavy imports happen when the command runs, so ``xfeldata --help`` stays quick.

Examples
--------
.. code-block:: console

    $ xfeldata export r0001 xgm.csv --format csv --select "SA1_XTD2_XGM/DOOCS/MAIN:beamPosition.*"
    $ xfeldata export r0001 frames --format png --detector SPB_DET_AGIPD1M-1 --trains 10000:10004
"""

from __future__ import annotations

import argparse
import fnmatch
import sys
from typing import Any

__all__ = ["FORMATS", "add_commands", "parse_select", "parse_trains"]

#: The formats, and what each writes.
FORMATS = {
    "h5": "the facility's format (run.write)",
    "virtual": "one file of HDF5 virtual datasets over the run's files (run.write_virtual)",
    "cxi": "a detector as CXI (xfeldata.write_cxi)",
    "zarr": "a zarr store: one group per source, or the --detector Dataset",
    "nc": "a netCDF-4 file: one group per source, or the --detector Dataset",
    "csv": "a table of the control sources' scalar values, one row per train",
    "json": "the same table as a list of records",
    "npy": "a directory of .npy files, one per variable (as nc)",
    "mat": "a MATLAB v7.3 file, one variable per variable (as nc)",
    "png": "a directory of 16-bit images, one per recorded detector frame",
}
#: Formats that write a detector; the others write sources (the detector's with --detector).
DETECTOR_FORMATS = ("cxi", "png")
SOURCE_FORMATS = ("h5", "virtual", "csv", "json")


def parse_trains(text: str) -> slice:
    """``FIRST:LAST`` (train IDs, both included; either may be left out) as a slice.

    >>> parse_trains("10000:10009"), parse_trains("10005:")
    (slice(10000, 10009, None), slice(10005, None, None))
    """
    first, sep, last = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return slice(int(first) if first.strip() else None, int(last) if last.strip() else None)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not FIRST:LAST (train IDs, e.g. 10000:10009)") from None


def parse_select(run: Any, text: str) -> tuple[str, str]:
    """``SOURCE[:KEYGLOB]`` as a (source glob, key glob) pair.

    Source names contain colons (``SA1_XTD2_XGM/DOOCS/MAIN:output``): the part
    after the last colon is a key glob when keys of the sources before it
    match it; otherwise the whole text is a source glob (all its keys).
    """
    source, sep, keys = text.rpartition(":")
    if sep and source:
        sources = [s for s in run.sources if fnmatch.fnmatchcase(s, source)]
        if any(fnmatch.fnmatchcase(k, keys) for s in sources for k in run.keys(s)):
            return source, keys
    return text, "*"


def add_commands(sub: Any) -> None:
    """Add the ``export`` subcommand to the ``xfeldata`` parser's subparsers."""
    p = sub.add_parser("export", help="write a selection of a run as h5, virtual, cxi, zarr, nc, csv, "
                                      "json, npy, mat or png",
                       description="Write a selection of a run in one of these formats: "
                                   + "; ".join(f"{k}: {v}" for k, v in FORMATS.items())
                                   + ". Every output is written to a temporary name and renamed when "
                                     "complete.")
    p.add_argument("run", help="run directory or file")
    p.add_argument("out", help="output file or directory")
    p.add_argument("--format", required=True, choices=list(FORMATS), dest="fmt",
                   help="output format (required, no default)")
    p.add_argument("--select", action="append", metavar="SOURCE[:KEYGLOB]", default=None,
                   help="sources (globs) and optionally keys to export; repeat for more "
                        "(default: everything; csv/json: the control sources' scalar keys)")
    p.add_argument("--trains", type=parse_trains, metavar="FIRST:LAST", default=None,
                   help="train IDs to export, both included (e.g. 10000:10009; default: all trains)")
    p.add_argument("--detector", default=None, metavar="NAME",
                   help="the detector (device name) for cxi and png (default: the only one); "
                        "for zarr, nc, npy, mat: write its stacked Dataset instead of the sources")
    p.add_argument("--parallel-gain", action="store_true",
                   help="LPD parallel-gain files: each train's frames are 3 gain stages of its pulses, "
                        "labelled by the first third's pulse IDs (run.detector(parallel_gain=True))")
    p.add_argument("--geometry", default=None, metavar="FILE",
                   help="png: assemble the modules with this CrystFEL .geom file (default: module tiles side by side)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(func=_cmd_export)


def _check_options(args: argparse.Namespace) -> None:
    if args.detector is not None and args.fmt in SOURCE_FORMATS:
        raise ValueError(f"--detector is for cxi, png, zarr, nc, npy and mat, not {args.fmt} "
                         "(use --select with the detector's sources)")
    if args.geometry is not None and args.fmt != "png":
        raise ValueError("--geometry is for --format png")
    if args.parallel_gain and not (args.fmt in DETECTOR_FORMATS or args.detector is not None):
        raise ValueError("--parallel-gain is for a detector's Dataset: --format cxi or png, or --detector")


def _selection(args: argparse.Namespace) -> Any:
    import xfeldata as xd

    run = xd.open_run(args.run)
    if args.trains is not None:
        picked = run.sel(trainId=args.trains)
        if not len(picked.train_ids):
            span = f"{run.train_ids[0]}-{run.train_ids[-1]}" if len(run.train_ids) else "none"
            raise ValueError(f"--trains {args.trains.start}:{args.trains.stop}: no train of {args.run} "
                             f"in that range (its trains: {span})")
        run = picked
    if args.select:
        run = run.select([parse_select(run, text) for text in args.select])
    return run


def _cmd_export(args: argparse.Namespace) -> int:
    _check_options(args)
    run = _selection(args)
    progress = sys.stderr.isatty()
    out = _export(run, args, progress)
    print(f"wrote {out}")
    return 0


def _export(run: Any, args: argparse.Namespace, progress: bool) -> Any:
    from . import formats
    from .xarray import write_netcdf, write_zarr

    opts = {"overwrite": args.overwrite, "progress": progress}
    fmt = args.fmt
    if fmt == "h5":
        return run.write(args.out, **opts)
    if fmt == "virtual":
        return run.write_virtual(args.out, **opts)
    if fmt in ("csv", "json"):
        table = run if args.select else formats.table_selection(run)
        return formats.write_table(table, args.out, fmt, **opts)
    if fmt in DETECTOR_FORMATS or args.detector is not None:
        det = run.detector(args.detector, **({"parallel_gain": True} if args.parallel_gain else {}))
        if fmt == "cxi":
            import xfeldata as xd

            return xd.write_cxi(det, args.out, **opts)
        if fmt == "png":
            geometry = None if args.geometry is None else formats.load_geometry(args.geometry, det.attrs["kind"])
            return formats.write_png(det, args.out, geometry=geometry, **opts)
        obj = det
    else:
        obj = run.to_datatree()
    writers = {"nc": write_netcdf, "zarr": write_zarr, "npy": formats.write_npy, "mat": formats.write_mat}
    return writers[fmt](obj, args.out, **opts)
