"""The index of one run file: trains, sources, keys and where their rows are.

Reading an index touches only the ``METADATA`` and ``INDEX`` groups and the
metadata (shape, dtype, chunking, attributes) of datasets; it never reads data.
Files are opened read-only and closed before :func:`read_file_index` returns.
Everything goes through h5py's low-level object API (object ids, whole-dataset
reads into numpy arrays): its high-level ``File``/``Group``/``Dataset`` wrappers
cost more than the HDF5 calls themselves for the few small objects read here.
What costs on a first open is HDF5 reading each object header once, so as few
objects as possible are touched: datasets are found by walking links (no
headers), only leaves are opened, and of ``METADATA`` only ``dataFormatVersion``
is read (the other scalars when first asked for, :class:`LazyMetadata`).

Examples
--------
>>> idx = read_file_index("RAW-R0450-DA01-S00001.h5")          # doctest: +SKIP
>>> idx.train_ids[:3], sorted(idx.sources)[:2]                  # doctest: +SKIP
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import h5py
import numpy as np

from ..errors import FileFormatError
from .layout import parse_file_name, path_to_key
from .strings import decode_str

CONTROL = "CONTROL"
INSTRUMENT = "INSTRUMENT"
#: The sections of auxiliary sources (``METADATA/auxiliarySources/<section>``), as the DAQ writes them.
AUXILIARY_SECTIONS = ("REDUCTION", "ERRATA")


@dataclass(frozen=True)
class KeyInfo:
    """Where and how one key of one source is stored in one file.

    Attributes
    ----------
    source, key
        The source name and user-facing key (dotted, control keys without ``.value``).
    group
        The index group whose ``first``/``count`` locate the rows (``""`` for control data).
    path
        The dataset's path in the file.
    dtype, shape, chunks
        As h5py reports them; ``shape[0]`` is the number of rows.
    compression, compression_opts, shuffle
        The dataset's filters.
    attrs
        Attributes of the key (for control keys merged from the key's group and ``value``).
    """

    source: str
    key: str
    group: str
    path: str
    dtype: np.dtype
    shape: tuple[int, ...]
    chunks: tuple[int, ...] | None
    compression: str | None
    compression_opts: Any
    shuffle: bool
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def entry_shape(self) -> tuple[int, ...]:
        """The shape of one row."""
        return self.shape[1:]

    @property
    def nrows(self) -> int:
        """The number of rows in the dataset."""
        return self.shape[0] if self.shape else 0


class LazyMapping(Mapping[str, Any]):
    """A read-only mapping that is made on first use.

    Parameters
    ----------
    load
        Returns the mapping; called at most once (twice if two threads race,
        which gives equal results).

    Examples
    --------
    >>> m = LazyMapping(lambda: {"a": 1})
    >>> m.loaded, m["a"], m.loaded
    (False, 1, True)
    """

    def __init__(self, load: Callable[[], Mapping[str, Any]]):
        self._load = load
        self._items: Mapping[str, Any] | None = None

    @property
    def loaded(self) -> bool:
        """Whether the mapping has been made."""
        return self._items is not None

    def _loaded(self) -> Mapping[str, Any]:
        if self._items is None:
            self._items = self._load()
        return self._items

    def __getitem__(self, key: str) -> Any:
        return self._loaded()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._loaded())

    def __len__(self) -> int:
        return len(self._loaded())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dict(self._loaded())!r})"


class LazyKeys(LazyMapping):
    """The keys of a source, ``{key: KeyInfo}``, made on first use (see :class:`LazyMapping`).

    Examples
    --------
    >>> keys = LazyKeys(dict)
    >>> len(keys)
    0
    """


@dataclass(frozen=True)
class IndexGroup:
    """``first``/``count`` of one index group, one entry per train position of the file."""

    first: np.ndarray
    count: np.ndarray


@dataclass(frozen=True)
class DamagedEntries:
    """Entries of one index group that cannot be right, set to no rows when indexing.

    Their ``first``/``count`` point before the start of the data, past the end
    of every dataset of the group, or overflow; reading a key of the group for
    these trains raises :class:`~xfeldata.errors.DataIndexError` with ``message``.
    """

    source: str
    group: str
    train_ids: np.ndarray
    message: str


@dataclass(frozen=True)
class SourceInfo:
    """One source of one file: its category, index groups and keys.

    ``keys`` is a dict when the file was just indexed, a :class:`LazyKeys` when it
    comes from the index cache (decoded on first use).
    """

    name: str
    category: str
    groups: dict[str, IndexGroup]
    keys: Mapping[str, KeyInfo]


@dataclass(frozen=True)
class FileIndex:
    """Everything xfeldata needs to know about one file without reading its data.

    Train positions run over ``INDEX/trainId`` without the zero padding at its end.

    Attributes
    ----------
    path, size, mtime, inode
        The file, and its size, modification time and inode number when it was
        indexed (inode 0: unknown).
    format_version
        ``"0.5"`` ... ``"1.3"``.
    metadata
        The length-1 datasets of ``METADATA`` (decoded); a :class:`LazyMetadata`
        (read on first use) when the file was just indexed or cached unread.
    train_ids
        ``INDEX/trainId`` without the padding (uint64).
    timestamps
        ``INDEX/timestamp`` (ns since the epoch) or None.
    valid
        True where the position holds a train: not zero, not a repeat of a train
        earlier in the file.
    suspect
        True where a valid train is suspect: flagged by the DAQ, or out of order in
        a file without flags.
    sources
        Sources by name.
    aliases
        Legacy source name -> current name (soft links in new corrected files).
    problems
        Inconsistencies found while indexing, as readable sentences.
    damaged
        Index entries that cannot be right (see :class:`DamagedEntries`); those of
        auxiliary sources name the source as ``<section>/<source>``.
    auxiliary
        Auxiliary sources (``REDUCTION``, ``ERRATA``), their ``category`` the section;
        apart from :attr:`sources`, as the same name may be a source too.
    """

    path: str
    size: int
    mtime: float
    format_version: str
    metadata: Mapping[str, Any]
    train_ids: np.ndarray
    timestamps: np.ndarray | None
    valid: np.ndarray
    suspect: np.ndarray
    sources: dict[str, SourceInfo]
    aliases: dict[str, str]
    problems: tuple[str, ...] = ()
    inode: int = 0
    damaged: tuple[DamagedEntries, ...] = ()
    auxiliary: tuple[SourceInfo, ...] = ()

    @property
    def name(self) -> str:
        """The file's base name."""
        return os.path.basename(self.path)

    @property
    def aggregator(self) -> str | None:
        """The aggregator in the file name (``DA01``, ``AGIPD00``), or None."""
        parsed = parse_file_name(self.name)
        return parsed.aggregator if parsed else None

    def good_train_ids(self, inc_suspect_trains: bool = True) -> np.ndarray:
        """The file's trains, optionally without suspect ones."""
        keep = self.valid if inc_suspect_trains else self.valid & ~self.suspect
        return self.train_ids[keep]


def _open(loc: h5py.h5g.GroupID, path: str) -> Any:
    """The low-level id of the object at ``path`` below ``loc``, or None if there is none."""
    try:
        return h5py.h5o.open(loc, path.encode())
    except KeyError:
        return None


def _dataset(loc: h5py.h5g.GroupID, path: str) -> h5py.h5d.DatasetID | None:
    """The dataset at ``path`` below ``loc``, or None if there is none (or it is a group)."""
    obj = _open(loc, path)
    return obj if isinstance(obj, h5py.h5d.DatasetID) else None


def _read(dsid: h5py.h5d.DatasetID) -> np.ndarray:
    """A whole dataset as a numpy array (variable-length strings as bytes objects)."""
    out = np.empty(dsid.shape or (), dsid.dtype)
    if out.size:
        dsid.read(h5py.h5s.ALL, h5py.h5s.ALL, out)
    return out


def _read_member(grp: h5py.h5g.GroupID, name: str) -> np.ndarray:
    """The whole dataset ``name`` of a group; KeyError if there is none."""
    dsid = _dataset(grp, name)
    if dsid is None:
        raise KeyError(name)
    return _read(dsid)


def _read_source_list(fid: h5py.h5f.FileID, path: str) -> list[str]:
    for list_path in ("METADATA/dataSources/dataSourceId", "METADATA/dataSourceId"):
        dsid = _dataset(fid, list_path)
        if dsid is not None:
            return [s for s in decode_str(_read(dsid)) if s]
    for root_path, dev_path in (
        ("METADATA/dataSources/root", "METADATA/dataSources/deviceId"),
        ("METADATA/root", "METADATA/deviceId"),
    ):
        root_ds, dev_ds = _dataset(fid, root_path), _dataset(fid, dev_path)
        if root_ds is not None and dev_ds is not None:
            roots, devices = decode_str(_read(root_ds)), decode_str(_read(dev_ds))
            return [f"{r}/{d}" for r, d in zip(roots, devices, strict=False) if r and d]
    raise FileFormatError(path, "no METADATA source list (dataSourceId): not a run file")


def split_source_entry(entry: str) -> tuple[str, str, str] | None:
    """Split a source-list entry into ``(category, source, index group)``.

    >>> split_source_entry("INSTRUMENT/SA3_XTD10_MCP/ADC/1:channel_5.output/data")
    ('INSTRUMENT', 'SA3_XTD10_MCP/ADC/1:channel_5.output', 'data')
    >>> split_source_entry("CONTROL/SA1_XTD2_XGM/DOOCS/MAIN")
    ('CONTROL', 'SA1_XTD2_XGM/DOOCS/MAIN', '')
    >>> split_source_entry("Karabo_TimerServer/x") is None
    True
    """
    category, _, rest = entry.partition("/")
    if category == CONTROL:
        return CONTROL, rest, ""
    if category == INSTRUMENT:
        device, colon, channel_and_group = rest.partition(":")
        channel, _, group = channel_and_group.partition("/")
        if not colon or not group:
            return None
        return INSTRUMENT, f"{device}:{channel}", group
    return None


def _format_version(fid: h5py.h5f.FileID) -> str:
    """``METADATA/dataFormatVersion`` (``"0.5"`` if there is none): the one scalar indexing needs."""
    dsid = _dataset(fid, "METADATA/dataFormatVersion")
    if dsid is None:
        return "0.5"
    if dsid.shape not in ((1,), ()):
        return "1.0"
    value = _read(dsid)
    value = value[0] if dsid.shape == (1,) else value[()]
    return str(decode_str(value.item() if isinstance(value, np.generic) else value))


def _read_metadata(fid: h5py.h5f.FileID) -> dict[str, Any]:
    """The length-1 datasets of ``METADATA`` (decoded)."""
    meta: dict[str, Any] = {}
    if _dataset(fid, "METADATA/dataFormatVersion") is None:
        return {"dataFormatVersion": "0.5"}
    group = h5py.h5o.open(fid, b"METADATA")
    names: list[bytes] = []
    group.links.iterate(names.append)
    for name in names:
        obj = h5py.h5o.open(group, name)
        if isinstance(obj, h5py.h5d.DatasetID) and obj.shape in ((1,), ()):
            value = _read(obj)
            value = value[0] if obj.shape == (1,) else value[()]
            meta[name.decode("utf-8", "surrogateescape")] = decode_str(
                value.item() if isinstance(value, np.generic) else value)
    return meta


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The length-1 datasets of a file's ``METADATA`` group (creation date, run number, ...).

    Raises
    ------
    FileFormatError
        If the file cannot be opened or its METADATA read.

    Examples
    --------
    >>> read_metadata("RAW-R0001-DA01-S00000.h5")["runNumber"]   # doctest: +SKIP
    1
    """
    path = os.fspath(path)
    try:
        fid = h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDONLY)
    except OSError as exc:
        raise FileFormatError(path, f"cannot be opened to read its METADATA: {exc}") from None
    try:
        return _read_metadata(fid)
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        raise FileFormatError(path, f"unreadable METADATA ({type(exc).__name__}: {exc})") from None
    finally:
        fid.close()


class LazyMetadata(LazyMapping):
    """A file's METADATA scalars (:func:`read_metadata`), read from the file on first use.

    Indexing reads only ``dataFormatVersion``: the other scalars (about a fifth
    of the time of indexing a file) are needed only by :attr:`Run.metadata
    <xfeldata.run.Run.metadata>` and exports.

    Examples
    --------
    >>> meta = LazyMetadata("RAW-R0001-DA01-S00000.h5")   # doctest: +SKIP
    >>> meta.loaded, meta["runNumber"], meta.loaded       # doctest: +SKIP
    (False, 1, True)
    """

    def __init__(self, path: str):
        super().__init__(partial(read_metadata, path))
        self._path = path

    def __repr__(self) -> str:
        return f"LazyMetadata({self._path!r})" if not self.loaded else super().__repr__()


def longest_increasing(ids: np.ndarray) -> np.ndarray:
    """Mask of a longest strictly increasing subsequence (drops the fewest trains)."""
    tails: list[int] = []  # smallest tail value of increasing runs of each length
    tail_pos: list[int] = []
    prev = np.full(len(ids), -1)
    for i, v in enumerate(ids.tolist()):
        j = bisect_left(tails, v)
        if j == len(tails):
            tails.append(v)
            tail_pos.append(i)
        else:
            tails[j] = v
            tail_pos[j] = i
        prev[i] = tail_pos[j - 1] if j else -1
    keep = np.zeros(len(ids), dtype=bool)
    i = tail_pos[-1] if tail_pos else -1
    while i >= 0:
        keep[i] = True
        i = prev[i]
    return keep


def train_validity(
    train_ids: np.ndarray, flags: np.ndarray | None, format_version: str
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decide which train positions hold trains and which of those are suspect.

    Zero train IDs are never trains; a train ID repeated in one file is kept once
    (the first time). Flagged trains are suspect; so are trains out of order,
    chosen so that the fewest are dropped to leave the rest increasing.

    Returns
    -------
    valid, suspect, problems

    Examples
    --------
    >>> v, s, _ = train_validity(np.array([10, 11, 999, 12, 0], np.uint64), None, "0.5")
    >>> v.tolist(), s.tolist()
    ([True, True, True, True, False], [False, False, True, False, False])
    """
    problems: list[str] = []
    nonzero = train_ids != 0
    if (~nonzero).any():
        problems.append(f"{int((~nonzero).sum())} zero train ID(s) inside INDEX/trainId")
    _, first_seen = np.unique(train_ids, return_index=True)
    first_time = np.zeros(len(train_ids), dtype=bool)
    first_time[first_seen] = True
    repeated = nonzero & ~first_time
    if repeated.any():
        problems.append(
            "repeated train ID(s) " + ", ".join(map(str, train_ids[repeated][:5].tolist()))
        )
    valid = nonzero & first_time
    suspect = np.zeros(len(train_ids), dtype=bool)
    if flags is not None and len(flags) >= len(train_ids):
        good_value = 0 if format_version == "1.1" else 1
        suspect = valid & (flags[: len(train_ids)] != good_value)
    unflagged = np.flatnonzero(valid & ~suspect)
    ids = train_ids[unflagged]
    if len(ids) > 1 and not (np.diff(ids.astype(np.int64)) > 0).all():
        in_order = longest_increasing(ids)
        suspect[unflagged[~in_order]] = True
        problems.append(
            "train ID(s) out of order, marked suspect: "
            + ", ".join(map(str, ids[~in_order][:5].tolist()))
        )
    return valid, suspect, problems


def _integer_index(values: np.ndarray, name: str, problems: list[str]) -> np.ndarray | None:
    """An INDEX ``first``/``count``/``last`` array as int64, with -1 for values no
    dataset can have (negative, or 2**63 and more); None if it is not integers.

    >>> _integer_index(np.array([0, 2**64 - 1], np.uint64), "first", []).tolist()
    [0, -1]
    """
    if values.ndim != 1 or values.dtype.kind not in "iu":
        problems.append(f"{name} is not a 1-d integer array ({values.dtype}, shape {values.shape})")
        return None
    out = values.astype(np.int64)  # uint64 of 2**63 and more wrap to negative values
    out[out < 0] = -1
    return out


def _index_arrays(fid: h5py.h5f.FileID, path: str, index_path: str, train_ids: np.ndarray,
                  keys: Mapping[str, KeyInfo], problems: list[str], grp: Any = None
                  ) -> tuple[IndexGroup, DamagedEntries | None]:
    """``first``/``count`` of one index group (``grp``: its id if already open), checked
    against the rows of its datasets.

    Entries that cannot be right (negative or overflowing values, rows past the
    end of every dataset of the group, ``keys``) are set to no rows
    and returned as :class:`DamagedEntries` (source and group left empty for the
    caller); the problems name the group and the trains.
    """
    n = len(train_ids)
    nrows = max((k.nrows for k in keys.values()), default=0)
    grp = _open(fid, index_path) if grp is None else grp
    if grp is None:
        raise KeyError(index_path)
    count_ds = _dataset(grp, "count")
    if count_ds is not None:
        raw = {"first": _read_member(grp, "first"), "count": _read(count_ds)}
        first = _integer_index(raw["first"], f"{index_path}/first", problems)
        count = _integer_index(raw["count"], f"{index_path}/count", problems)
    elif _dataset(grp, "last") is not None and _dataset(grp, "status") is not None:
        # the old index format of early 0.5 files: count = (last - first + 1) * status
        raw = {name: _read_member(grp, name) for name in ("first", "last", "status")}
        first = _integer_index(raw["first"], f"{index_path}/first", problems)
        last = _integer_index(raw["last"], f"{index_path}/last", problems)
        status = _integer_index(raw["status"], f"{index_path}/status", problems)
        count = None
        if first is not None and last is not None and status is not None:
            m = min(len(first), len(last), len(status))
            first, last, on = first[:m], last[:m], status[:m] > 0
            ok = (first >= 0) & (last >= first - 1)
            count = np.where(on, np.where(ok, last - first + 1, -1), 0)
            first = np.where(on, first, 0)
    else:
        raise FileFormatError(path, f"{index_path} has neither first/count nor first/last/status")
    if first is None or count is None:  # not integers: no entry can be located
        first, count = np.zeros(n, np.int64), np.full(n, -1, np.int64)
    elif len(first) != len(count):
        problems.append(f"{index_path}: first and count differ in length ({len(first)} and {len(count)})")
    if len(first) < n or len(count) < n:
        problems.append(f"{index_path}: index shorter ({min(len(first), len(count))}) than INDEX/trainId ({n})")
        first = np.concatenate([first[:n], np.zeros(max(0, n - len(first)), np.int64)])
        count = np.concatenate([count[:n], np.zeros(max(0, n - len(count)), np.int64)])
    first, count = first[:n], count[:n]
    # first + count <= nrows, tested so that nothing overflows (both are >= -1 here)
    bad = (count < 0) | ((count > 0) & ((first < 0) | (first > nrows) | (count > nrows - first)))
    if bad.any():
        shown = "; ".join(
            f"train {train_ids[i]}: " + ", ".join(
                f"{name}={values[i].item() if values.ndim == 1 and i < len(values) else '?'}"
                for name, values in raw.items())
            for i in np.flatnonzero(bad)[:3].tolist())
        names = ", ".join(sorted(keys)[:5]) + (" ..." if len(keys) > 5 else "") if keys else "no datasets"
        message = (f"{index_path}: {int(bad.sum())} index entr{'y' if bad.sum() == 1 else 'ies'} "
                   f"negative, overflowing or past the end of the data ({nrows} rows: {names}), "
                   f"not read: {shown}")
        problems.append(message)
        damaged = DamagedEntries("", "", train_ids[bad], message)
        count = np.where(bad, 0, count)
    else:
        damaged = None
    first = np.where(count > 0, first, np.maximum(first, 0))
    return IndexGroup(first=first.astype(np.uint64), count=count.astype(np.uint64)), damaged


_COMPRESSION_NAMES = {h5py.h5z.FILTER_DEFLATE: "gzip", h5py.h5z.FILTER_SZIP: "szip", 32000: "lzf"}


def _dataset_info(source: str, key: str, group: str, dsid: h5py.h5d.DatasetID, path: str,
                  attrs: dict) -> KeyInfo:
    """KeyInfo from a low-level dataset id (much cheaper than h5py's Dataset objects)."""
    plist = dsid.get_create_plist()
    chunks = tuple(plist.get_chunk()) if plist.get_layout() == h5py.h5d.CHUNKED else None
    compression, opts, shuffle = None, None, False
    for i in range(plist.get_nfilters()):
        code, _, values, _ = plist.get_filter(i)
        if code == h5py.h5z.FILTER_SHUFFLE:
            shuffle = True
        elif code in _COMPRESSION_NAMES:
            compression = _COMPRESSION_NAMES[code]
            opts = values[0] if code == h5py.h5z.FILTER_DEFLATE and values else None
        elif compression is None:
            compression = str(code)
    merged = dict(attrs)
    merged.update(_attr_dict(dsid))
    return KeyInfo(
        source=source, key=key, group=group, path=path, dtype=dsid.dtype, shape=dsid.shape,
        chunks=chunks, compression=compression, compression_opts=opts, shuffle=shuffle,
        attrs=merged,
    )


def _attr_value(oid: Any, aid: h5py.h5a.AttrID, name: str) -> Any:
    """One attribute's value: plain numbers and strings read directly (h5py's
    ``attrs[name]`` costs several times more), anything else through ``attrs``."""
    dtype = aid.dtype
    plain = dtype.kind in "biufS" or (dtype.kind == "O" and h5py.check_string_dtype(dtype) is not None)
    if aid.shape is None or dtype.subdtype is not None or not plain:
        hl = h5py.Group(oid) if isinstance(oid, h5py.h5g.GroupID) else h5py.Dataset(oid)
        return hl.attrs[name]
    value = np.empty(aid.shape, dtype)
    aid.read(value)
    return value[()] if value.ndim == 0 else value


def _attr_dict(oid: Any) -> dict[str, Any]:
    """The attributes of an object (low-level id), strings decoded."""
    out = {}
    for i in range(h5py.h5a.get_num_attrs(oid)):
        aid = h5py.h5a.open(oid, index=i)
        name = aid.name.decode("utf-8", "surrogateescape")
        value = _attr_value(oid, aid, name)
        out[name] = decode_str(value.item() if isinstance(value, np.generic) else value)
    return out


def _datasets_below(group: h5py.h5g.GroupID, wanted: Callable[[str], bool] | None = None
                    ) -> list[tuple[str, h5py.h5d.DatasetID]]:
    """``(relative name, dataset id)`` of every dataset below a group (reached by hard
    links, each object once), in visiting order; with ``wanted``, only datasets whose
    name it accepts.

    The names come from one walk over the links, which reads no object headers;
    only names without children are opened (a name followed by ``name/...`` is a
    group), as reading an object header is what costs.
    """
    names: list[bytes] = []
    seen: set[int] = set()

    def visit(name: bytes, info: h5py.h5l.LinkInfo) -> None:
        if info.type == h5py.h5l.TYPE_HARD and info.u not in seen:
            seen.add(info.u)
            names.append(name)

    group.links.visit(visit, info=True)
    found: list[tuple[str, h5py.h5d.DatasetID]] = []
    for i, name in enumerate(names):
        if i + 1 < len(names) and names[i + 1].startswith(name + b"/"):
            continue  # a group with members
        text = name.decode("utf-8", "surrogateescape")
        if wanted is not None and not wanted(text):
            continue
        obj = h5py.h5o.open(group, name)
        if isinstance(obj, h5py.h5d.DatasetID):
            found.append((text, obj))
    return found


def _is_value(name: str) -> bool:
    """Whether a name below a control source is a key's ``value`` dataset."""
    return name == "value" or name.endswith("/value")


def _required(fid: h5py.h5f.FileID, path: str) -> Any:
    """The low-level id of the object at ``path``; KeyError if there is none."""
    obj = _open(fid, path)
    if obj is None:
        raise KeyError(path)
    return obj


def _control_keys(fid: h5py.h5f.FileID, source: str) -> dict[str, KeyInfo]:
    keys: dict[str, KeyInfo] = {}
    root_path = f"{CONTROL}/{source}"
    root = _required(fid, root_path)
    for name, dsid in _datasets_below(root, _is_value):
        key_path = name[: -len("/value")] if "/" in name else ""
        parent = h5py.h5o.open(root, key_path.encode()) if key_path else root
        attrs = _attr_dict(parent)
        key = path_to_key(key_path)
        keys[key] = _dataset_info(source, key, "", dsid, f"/{root_path}/{name}", attrs)
    return keys


def _instrument_keys(data: h5py.h5g.GroupID, source: str, group: str,
                     section: str = INSTRUMENT) -> dict[str, KeyInfo]:
    keys: dict[str, KeyInfo] = {}
    root_path = f"{section}/{source}/{group}"
    for name, dsid in _datasets_below(data):
        key = f"{group}.{path_to_key(name)}"
        keys[key] = _dataset_info(source, key, group, dsid, f"/{root_path}/{name}", {})
    return keys


def _alias_target(fid: h5py.h5f.FileID, source: str) -> str | None:
    """If ``INSTRUMENT/<source>`` is reached through a soft link, the source it points to."""
    parts = f"{INSTRUMENT}/{source}".split("/")
    for depth in range(2, len(parts) + 1):
        path = "/".join(parts[:depth])
        try:
            link_type = fid.links.get_info(path.encode()).type
        except (KeyError, RuntimeError):
            if _open(fid, path) is None:  # missing
                return None
            raise
        if link_type == h5py.h5l.TYPE_HARD:
            continue
        if _open(fid, path) is None:  # a dangling link
            return None
        if link_type == h5py.h5l.TYPE_SOFT:
            target = fid.links.get_val(path.encode()).decode("utf-8", "surrogateescape").lstrip("/")
            rest = "/".join(parts[depth:])
            full = f"{target}/{rest}" if rest else target
            return full.partition("/")[2]
    return None


def read_file_index(path: str | os.PathLike) -> FileIndex:
    """Index one run file.

    Parameters
    ----------
    path
        An HDF5 file in the European XFEL format, any version from 0.5 to 1.3.

    Raises
    ------
    FileFormatError
        If the file is missing, not HDF5, truncated, or not in the format.

    Examples
    --------
    >>> idx = read_file_index("RAW-R0001-DA01-S00000.h5")   # doctest: +SKIP
    >>> idx.format_version                                   # doctest: +SKIP
    '1.3'
    """
    path = os.fspath(path)
    try:
        st = os.stat(path)
        fid = h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDONLY)
    except FileNotFoundError:
        raise FileFormatError(path, "no such file") from None
    except OSError as exc:
        raise FileFormatError(path, f"cannot be opened as HDF5 (truncated or not HDF5?): {exc}") from None
    try:
        return _index_open_file(fid, path, st)
    except FileFormatError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        raise FileFormatError(path, f"unreadable index ({type(exc).__name__}: {exc})") from None
    finally:
        fid.close()


def _index_open_file(fid: h5py.h5f.FileID, path: str, st: os.stat_result) -> FileIndex:
    train_ds = _dataset(fid, "INDEX/trainId")
    if train_ds is None or _open(fid, "METADATA") is None:
        raise FileFormatError(path, "no INDEX/trainId or METADATA group: not a European XFEL run file")
    version = _format_version(fid)
    metadata = {"dataFormatVersion": "0.5"} if version == "0.5" else LazyMetadata(path)
    problems: list[str] = []
    raw_ids = _read(train_ds).astype(np.uint64)
    nonzero = np.flatnonzero(raw_ids)
    n = int(nonzero[-1]) + 1 if len(nonzero) else 0  # zero padding at the end is normal
    train_ids = raw_ids[:n]
    stamp_ds, flag_ds = _dataset(fid, "INDEX/timestamp"), _dataset(fid, "INDEX/flag")
    timestamps = _read(stamp_ds)[:n].astype(np.uint64) if stamp_ds is not None else None
    flags = _read(flag_ds)[:n] if flag_ds is not None else None
    valid, suspect, train_problems = train_validity(train_ids, flags, version)
    problems.extend(train_problems)
    if n == 0:
        problems.append(f"no trains: INDEX/trainId is {'all zero' if len(raw_ids) else 'empty'} "
                        f"({len(raw_ids)} entries), so no data of this file is read")

    sources: dict[str, SourceInfo] = {}
    aliases: dict[str, str] = {}
    damaged: list[DamagedEntries] = []
    entries: dict[str, tuple[str, list[str]]] = {}
    for entry in _read_source_list(fid, path):
        split = split_source_entry(entry)
        if split is None:
            continue
        category, source, group = split
        entries.setdefault(source, (category, []))[1].append(group)

    for source, (category, groups) in entries.items():
        if category == INSTRUMENT:
            target = _alias_target(fid, source)
            if target is not None and target != source:
                aliases[source] = target
                continue
        try:
            index_groups, keys = {}, {}
            if category == CONTROL:
                keys = _control_keys(fid, source)
                located = [("", f"INDEX/{source}", keys, None)]
            else:
                keys, located = _locate_groups(fid, "INSTRUMENT", source, groups, problems)
            for group, index_path, group_keys, index_grp in located:
                index_groups[group], bad = _index_arrays(fid, path, index_path, train_ids, group_keys, problems,
                                                         index_grp)
                if bad is not None:
                    damaged.append(replace(bad, source=source, group=group))
        except KeyError:
            problems.append(f"{source}: listed in METADATA but missing from INDEX or data")
            continue
        sources[source] = SourceInfo(source, category, index_groups, keys)
        problems.extend(_check_source_index(source, index_groups, keys))
    auxiliary = _auxiliary_sources(fid, path, train_ids, problems, damaged)

    return FileIndex(
        path=path, size=st.st_size, mtime=st.st_mtime, format_version=version, metadata=metadata,
        train_ids=train_ids, timestamps=timestamps, valid=valid, suspect=suspect,
        sources=sources, aliases=aliases, problems=tuple(problems), inode=st.st_ino,
        damaged=tuple(damaged), auxiliary=auxiliary,
    )


def _locate_groups(fid: h5py.h5f.FileID, section: str, source: str, groups: list[str],
                   problems: list[str], label: str = "") -> tuple[dict[str, KeyInfo], list[tuple]]:
    """The keys of a source's groups below ``section`` and, per group found, ``(group,
    index path, its keys, INDEX group)``; a group without data or index is reported in
    ``problems`` (prefixed with ``label``) and left out."""
    keys: dict[str, KeyInfo] = {}
    located = []
    for group in groups:
        data = _open(fid, f"{section}/{source}/{group}")
        index_grp = _open(fid, f"INDEX/{source}/{group}") if data is not None else None
        if index_grp is None:
            problems.append(f"{label}{source}/{group}: listed but no INDEX or {section} group")
            continue
        group_keys = _instrument_keys(data, source, group, section)
        keys.update(group_keys)
        located.append((group, f"INDEX/{source}/{group}", group_keys, index_grp))
    return keys, located


def _check_source_index(
    source: str, groups: dict[str, IndexGroup], keys: dict[str, KeyInfo]
) -> list[str]:
    """The consistency checks of format.md for one source's index."""
    problems = []
    for group, idx in groups.items():
        label = f"{source}/{group}" if group else source
        has = idx.count > 0
        if not has.any():
            continue
        first, count = idx.first[has].astype(np.int64), idx.count[has].astype(np.int64)
        if first[0] != 0:
            problems.append(f"{label}: index does not start at row 0 (first = {first[0]})")
        step = first[1:] - (first[:-1] + count[:-1])
        if (step < 0).any():
            problems.append(f"{label}: index entries overlap ({int((step < 0).sum())} train(s))")
        if (step > 0).any():
            problems.append(f"{label}: gaps between index entries ({int((step > 0).sum())} train(s))")
        end = int((first + count).max())
        for key in keys.values():
            if key.group == group and key.nrows < end:
                problems.append(
                    f"{label}: index points past the end of {key.key} ({end} rows > {key.nrows})"
                )
    return problems


def _auxiliary_sources(fid: h5py.h5f.FileID, path: str, train_ids: np.ndarray, problems: list[str],
                       damaged: list[DamagedEntries]) -> tuple[SourceInfo, ...]:
    """The sources listed in ``METADATA/auxiliarySources/<section>`` (``REDUCTION``, ``ERRATA``).

    An entry is ``<section>/<source>/<index group>`` (the source may lack a
    ``:channel``); its data is below ``/<section>/<source>/<group>`` and its index
    in ``INDEX/<source>/<group>``, as an instrument source's.  Problems and
    damaged entries are added to ``problems`` and ``damaged``.
    """
    found: list[SourceInfo] = []
    if _open(fid, "METADATA/auxiliarySources") is None:  # most files: one lookup
        return ()
    for section in AUXILIARY_SECTIONS:
        dsid = _dataset(fid, f"METADATA/auxiliarySources/{section}")
        if dsid is None:
            continue
        groups: dict[str, list[str]] = {}
        for entry in decode_str(_read(dsid)):
            source, _, group = entry.removeprefix(f"{section}/").rpartition("/")
            if entry.startswith(f"{section}/") and source and group:
                groups.setdefault(source, []).append(group)
        for source, names in groups.items():
            index_groups = {}
            keys, located = _locate_groups(fid, section, source, names, problems, label=f"{section} ")
            for group, index_path, group_keys, index_grp in located:
                index_groups[group], bad = _index_arrays(
                    fid, path, index_path, train_ids, group_keys, problems, index_grp)
                if bad is not None:
                    damaged.append(replace(bad, source=f"{section}/{source}", group=group))
            found.append(SourceInfo(source, section, index_groups, keys))
            problems.extend(f"{section} {p}" for p in _check_source_index(source, index_groups, keys))
    return tuple(found)
