"""A run as a selection: one train axis and a catalogue of sources and keys.

:class:`RunFiles` combines the indexes of many files once; :class:`RunSelection`
is an immutable view on it (trains, sources, keys).  Selecting returns a new
selection sharing the same :class:`RunFiles`.  Nothing here opens a file except
:meth:`RunSelection.run_values`, and nothing here knows about xarray: the views
build on top of this module (see :mod:`xfeldata.api`).

Examples
--------
>>> sel = run.select("*XGM*", "beamPosition.*").sel(trainId=slice(10000, 10009))  # doctest: +SKIP
>>> sel.train_ids                                                                 # doctest: +SKIP
"""

from __future__ import annotations

import fnmatch
import math
import os
import warnings
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import h5py
import numpy as np

from .detectors.kinds import match_detector_source
from .errors import DataIndexError, FileFormatError, PropertyNameError, SourceNameError, TrainIdError
from .files.index import (
    CONTROL,
    INSTRUMENT,
    DamagedEntries,
    FileIndex,
    KeyInfo,
    LazyKeys,
    longest_increasing,
)
from .files.layout import parse_file_name, path_to_key
from .files.strings import decode_str

SelectionSpec = str | Mapping[str, Iterable[str] | None] | Iterable[tuple[str, str]]


#: Plans one selection keeps (:meth:`RunSelection.memo`).
MAX_MEMO = 256


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


@dataclass(frozen=True)
class TrainMap:
    """Where the rows of one source's index group are, for every train that lists it.

    Arrays are aligned and sorted by ``train_ids``.
    """

    train_ids: np.ndarray
    file_no: np.ndarray
    first: np.ndarray
    count: np.ndarray

    def lookup(self, train_ids: np.ndarray) -> TrainMap:
        """The entries for the given (sorted) trains that are in this map."""
        pos = np.searchsorted(self.train_ids, train_ids)
        pos_clipped = np.minimum(pos, max(len(self.train_ids) - 1, 0))
        found = (pos < len(self.train_ids)) & (self.train_ids[pos_clipped] == train_ids) \
            if len(self.train_ids) else np.zeros(len(train_ids), bool)
        p = pos_clipped[found]
        return TrainMap(train_ids[found], self.file_no[p], self.first[p], self.count[p])


@dataclass(frozen=True)
class SourceEntry:
    """One source of a run: its category, index groups and keys (from the first file)."""

    name: str
    category: str
    groups: tuple[str, ...]
    keys: Mapping[str, KeyInfo]


def _merged_keys(per_file: list[tuple[str, Mapping[str, KeyInfo]]],
                 clashes: dict[str, tuple[str, str, bool]]) -> dict[str, KeyInfo]:
    """Keys of a source over several files ``[(path, keys)]``.

    A key's information is from the first file, its dtype the common type of
    all files' numeric dtypes (int16 and float64 read as float64, never
    truncated).  Keys whose dtypes have no common type, or whose entry shapes
    differ, are noted in ``clashes``: key -> (the later file, a sentence naming
    both, whether the key cannot be read); so are dtypes read as a common type.
    """
    merged: dict[str, KeyInfo] = {}
    seen_in: dict[str, str] = {}
    seen_dtype: dict[str, np.dtype] = {}
    for path, keys in per_file:
        for key, info in keys.items():
            known = merged.get(key)
            if known is None:
                merged[key], seen_in[key], seen_dtype[key] = info, path, info.dtype
                continue
            if (key in clashes and clashes[key][2]) or (
                    known.dtype == info.dtype and known.entry_shape == info.entry_shape):
                continue
            where = f"in {seen_in[key]}, but {{}} in {path}"
            if known.entry_shape != info.entry_shape:
                clashes[key] = (path, f"entry shape {known.entry_shape} " + where.format(info.entry_shape), True)
            elif known.dtype.kind in "biufc" and info.dtype.kind in "biufc":
                common = np.promote_types(known.dtype, info.dtype)
                merged[key] = replace(known, dtype=common)
                clashes[key] = (path, f"dtype {seen_dtype[key]} " + where.format(info.dtype)
                                + f": read as {common}", False)
            else:
                clashes[key] = (path, f"dtype {known.dtype} " + where.format(info.dtype)
                                + ": no common type", True)
    return merged


def _timestamp_key(info: KeyInfo) -> KeyInfo:
    """The ``<key>.timestamp`` companion of a control key's ``value``."""
    return replace(
        info, key=f"{info.key}.timestamp" if info.key else "timestamp",
        path=info.path[: -len("value")] + "timestamp", dtype=np.dtype(np.uint64),
        shape=info.shape[:1], chunks=None, attrs={},
    )


def _merged_keys_of(files: Sequence[FileIndex], holders: tuple[int, ...], source: str,
                    clashes: dict[str, tuple[str, str, bool]]) -> dict[str, KeyInfo]:
    """:func:`_merged_keys` of one source over the files (numbers) that hold it."""
    return _merged_keys([(files[i].path, files[i].sources[source].keys) for i in holders], clashes)


def _damaged_of(files: Sequence[FileIndex], numbers: Iterable[int]
                ) -> dict[tuple[str, str], list[tuple[FileIndex, DamagedEntries]]]:
    """The damaged index entries of some files, by (source, index group)."""
    damaged: dict[tuple[str, str], list[tuple[FileIndex, DamagedEntries]]] = {}
    for i in numbers:
        for damage in files[i].damaged:
            damaged.setdefault((damage.source, damage.group), []).append((files[i], damage))
    return damaged


class _StoredMaps(Mapping[tuple[str, str], TrainMap]):
    """Train maps cut out of concatenated arrays when first used: ``bounds[k]:bounds[k + 1]``
    is stored map k, and the map of ``names[n]`` is stored map ``map_of[n]`` (index groups
    with the same rows share one); row numbers are widened back to uint64."""

    def __init__(self, names: list[tuple[str, str]], map_of: list[int], bounds: np.ndarray,
                 parts: list[np.ndarray]):
        if len(map_of) != len(names) or any(not 0 <= k < len(bounds) - 1 for k in map_of):
            raise ValueError("run state train maps do not match")
        self._numbers = {name: k for name, k in zip(names, map_of, strict=True)}
        self._bounds, self._parts = bounds.tolist(), parts
        self._made: dict[int, TrainMap] = {}

    def __getitem__(self, name: tuple[str, str]) -> TrainMap:
        k = self._numbers[name]
        found = self._made.get(k)
        if found is None:
            lo, hi = self._bounds[k], self._bounds[k + 1]
            tids, file_no, first, count = (p[lo:hi] for p in self._parts)
            found = self._made[k] = TrainMap(tids, file_no, _readonly(first.astype(np.uint64)),
                                             _readonly(count.astype(np.uint64)))
        return found

    def __iter__(self):
        return iter(self._numbers)

    def __len__(self) -> int:
        return len(self._numbers)


class RunFiles:
    """The file indexes of a run combined once: train axis, catalogue and train maps.

    Parameters
    ----------
    files
        File indexes, in any order (they are sorted by path).
    inc_suspect_trains
        Keep suspect trains (the default, so no real data goes missing).
    stacklevel
        Of the warnings of opening (:func:`warnings.warn`'s, counted from the
        method that warns: 4 is the caller of the function that made this object).
    """

    def __init__(self, files: Iterable[FileIndex], inc_suspect_trains: bool = True, *,
                 stacklevel: int = 4):
        self.files: Sequence[FileIndex] = tuple(sorted(files, key=lambda fi: fi.path))
        self.inc_suspect_trains = inc_suspect_trains
        self.problems: list[tuple[str, str]] = [
            (fi.path, p) for fi in self.files for p in fi.problems
        ]
        #: Per source, keys whose files disagree on dtype or entry shape (found when
        #: the source's keys are first used): key -> (file, sentence naming the files,
        #: True if the key cannot be read, False if it is read as a common dtype).
        self.key_clashes: dict[str, dict[str, tuple[str, str, bool]]] = {}
        self._suspect = self._suspect_masks()
        kept = [fi.train_ids[self._kept(i)] for i, fi in enumerate(self.files)]
        self.train_ids = _readonly(np.unique(np.concatenate(kept or [np.zeros(0, np.uint64)])))
        suspect = [fi.train_ids[fi.valid & self._suspect[i]] for i, fi in enumerate(self.files)]
        self.suspect_train_ids = _readonly(np.unique(np.concatenate(suspect or [np.zeros(0, np.uint64)])))
        self.sources, self.aliases = self._catalogue()
        self.conflicts: list[str] = []
        self._train_maps = self._build_train_maps()
        self._damaged = _damaged_of(self.files, range(len(self.files)))
        self._warn_at_open([i for i, fi in enumerate(self.files) if not len(fi.train_ids)], stacklevel)

    def _warn_at_open(self, no_trains: Iterable[int], stacklevel: int) -> None:
        """The warnings of opening: trains claimed twice, files without trains, damaged index entries."""
        for message in self.conflicts:
            warnings.warn(message, stacklevel=stacklevel)
        for i in no_trains:
            warnings.warn(f"{self.files[i].path}: no trains (INDEX/trainId is empty or all zero); "
                          "none of its data is read", stacklevel=stacklevel)
        for entries in self._damaged.values():
            for fi, damage in entries:
                warnings.warn(f"{fi.path}: {damage.message}", stacklevel=stacklevel)

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Everything combining the files gave, as a JSON-able header and 1-d arrays,
        so that :meth:`from_state` makes the same object without the files' indexes
        (kept in the index cache by :mod:`xfeldata.snapshot`)."""
        names = list(self._train_maps)
        unique: dict[tuple[bytes, ...], int] = {}  # index groups with the same rows store one map
        maps: list[TrainMap] = []
        map_of: list[int] = []
        for m in (self._train_maps[n] for n in names):
            rows_of_m = tuple(getattr(m, a).tobytes() for a in ("train_ids", "file_no", "first", "count"))
            if rows_of_m not in unique:
                unique[rows_of_m] = len(maps)
                maps.append(m)
            map_of.append(unique[rows_of_m])

        def joined(attr: str, dtype: type) -> np.ndarray:
            return np.concatenate([getattr(m, attr) for m in maps] or [np.zeros(0, dtype)]).astype(dtype)

        def rows(attr: str) -> np.ndarray:  # row numbers stored narrow when they fit
            values = joined(attr, np.uint64)
            return values.astype(np.uint32) if not len(values) or values.max() < 2**32 else values

        holders: dict[str, list[int]] = {}
        for i, fi in enumerate(self.files):
            for name in fi.sources:
                holders.setdefault(name, []).append(i)
        header = {
            "paths": [fi.path for fi in self.files], "inc_suspect_trains": self.inc_suspect_trains,
            "problems": [list(p) for p in self.problems], "aliases": self.aliases,
            "sources": [[e.name, e.category, list(e.groups), holders[e.name]] for e in self.sources.values()],
            "maps": [list(n) for n in names], "map_of": map_of, "conflicts": self.conflicts,
            "damaged": sorted({i for i, fi in enumerate(self.files) if fi.damaged}),
            "no_trains": [i for i, fi in enumerate(self.files) if not len(fi.train_ids)],
        }
        arrays = {"train_ids": self.train_ids, "suspect_train_ids": self.suspect_train_ids,
                  "map_bounds": np.cumsum([0, *(len(m.train_ids) for m in maps)]).astype(np.int64),
                  "map_train_ids": joined("train_ids", np.uint64), "map_file_no": joined("file_no", np.int32),
                  "map_first": rows("first"), "map_count": rows("count")}
        return header, arrays

    @classmethod
    def from_state(cls, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray],
                   files: Sequence[FileIndex], stacklevel: int = 2) -> RunFiles:
        """The run of :meth:`state`'s output; ``files`` are the file indexes in
        ``header["paths"]`` order (a lazy sequence: only the files whose keys are
        used, or that had damaged index entries, are looked at).

        Raises
        ------
        ValueError, KeyError, TypeError
            If the state is not one :meth:`state` made for these files.
        """
        if len(files) != len(header["paths"]):
            raise ValueError("run state and files differ")
        self = cls.__new__(cls)
        self.files, self.inc_suspect_trains = files, bool(header["inc_suspect_trains"])
        self.problems = [(str(path), str(message)) for path, message in header["problems"]]
        self.key_clashes = {}
        self.train_ids = _readonly(np.asarray(arrays["train_ids"], np.uint64))
        self.suspect_train_ids = _readonly(np.asarray(arrays["suspect_train_ids"], np.uint64))
        self.sources = {}
        for name, category, groups, holders in header["sources"]:
            merge = partial(_merged_keys_of, files, tuple(holders), name, self.key_clashes.setdefault(name, {}))
            self.sources[name] = SourceEntry(name, category, tuple(groups), LazyKeys(merge))
        self.aliases = dict(header["aliases"])
        self.conflicts = list(header["conflicts"])
        bounds = arrays["map_bounds"]
        parts = [arrays[f"map_{a}"] for a in ("train_ids", "file_no", "first", "count")]
        if not len(bounds) or any(len(p) != bounds[-1] for p in parts):
            raise ValueError("run state train maps do not match")
        self._train_maps = _StoredMaps([(source, group) for source, group in header["maps"]],
                                       [int(k) for k in header["map_of"]], bounds, parts)
        self._damaged = _damaged_of(files, header["damaged"])
        self._warn_at_open(header["no_trains"], stacklevel=stacklevel + 1)
        return self

    def damaged_entries(self, source: str, group: str) -> list[tuple[FileIndex, DamagedEntries]]:
        """The index entries of one source's group that indexing set aside, per file."""
        return self._damaged.get((source, group), [])

    def all_key_clashes(self) -> list[tuple[str, str]]:
        """``(file, sentence)`` for every key whose files disagree on dtype or entry
        shape (merges the keys of every source)."""
        out = []
        for name, entry in self.sources.items():
            len(entry.keys)  # merges the source's keys, noting clashes
            out += [(path, f"source {name}, key {key}: {message}")
                    for key, (path, message, _) in self.key_clashes[name].items()]
        return out

    def _catalogue(self) -> tuple[dict[str, SourceEntry], dict[str, str]]:
        """Sources (category and index groups from the first file that has them, keys
        merged over all files and listed on first use) and legacy source names."""
        sources: dict[str, SourceEntry] = {}
        per_file_keys: dict[str, list[tuple[str, Mapping[str, KeyInfo]]]] = {}
        aliases: dict[str, str] = {}
        for fi in self.files:
            aliases.update(fi.aliases)
            for name, si in fi.sources.items():
                entry = sources.get(name)
                if entry is None:
                    per_file_keys[name] = [(fi.path, si.keys)]
                    merge = partial(_merged_keys, per_file_keys[name], self.key_clashes.setdefault(name, {}))
                    sources[name] = SourceEntry(name, si.category, tuple(si.groups), LazyKeys(merge))
                else:
                    per_file_keys[name].append((fi.path, si.keys))
                    if set(si.groups) - set(entry.groups):
                        sources[name] = replace(entry, groups=tuple(sorted(set(entry.groups) | set(si.groups))))
        return sources, aliases

    def _suspect_masks(self) -> list[np.ndarray]:
        """Per file, the suspect trains: those of the file index, and trains out of
        order across the sequence files of one aggregator.

        A bogus train ID at the end of a file (in files without flags) is in order
        within its file; only the next sequence file shows that it is out of order.
        """
        masks = [fi.suspect.copy() for fi in self.files]
        by_aggregator: dict[tuple, list[int]] = {}
        for i, fi in enumerate(self.files):
            parsed = parse_file_name(fi.name)
            group = (os.path.dirname(fi.path), *parsed[:3]) if parsed else (fi.path,)
            by_aggregator.setdefault(group, []).append(i)
        for numbers in by_aggregator.values():
            if len(numbers) < 2:
                continue
            ids = np.concatenate([self.files[i].train_ids[self.files[i].valid & ~masks[i]]
                                  for i in numbers])  # files sorted by path = by sequence
            if len(ids) < 2 or (np.diff(ids.astype(np.int64)) > 0).all():
                continue
            positions = [(i, p) for i in numbers
                         for p in np.flatnonzero(self.files[i].valid & ~masks[i]).tolist()]
            in_order = longest_increasing(ids)
            for (i, p), ok in zip(positions, in_order.tolist(), strict=True):
                if not ok:
                    masks[i][p] = True
                    self.problems.append((self.files[i].path,
                                          f"train ID {self.files[i].train_ids[p]} out of order with "
                                          "the other sequence files of this aggregator, marked suspect"))
        return masks

    def _kept(self, file_no: int) -> np.ndarray:
        """Mask of the file's positions whose trains are part of the run."""
        fi = self.files[file_no]
        return fi.valid if self.inc_suspect_trains else fi.valid & ~self._suspect[file_no]

    def _index_entries(self, maps: dict[tuple[str, str], int]) -> tuple[np.ndarray, ...]:
        """Every kept train position of every index group of every file, concatenated:
        ``(map number, train ID, file number, first, count)``, in file order."""
        tids, keep, first, count, file_no, map_no = [], [], [], [], [], []
        for i, fi in enumerate(self.files):
            kept = self._kept(i)
            for name, si in fi.sources.items():
                for group, ig in si.groups.items():
                    tids.append(fi.train_ids)
                    keep.append(kept)
                    first.append(ig.first)
                    count.append(ig.count)
                    file_no.append(i)
                    map_no.append(maps[name, group])
        if not tids:
            empty = np.zeros(0, np.uint64)
            return np.zeros(0, np.int64), empty, np.zeros(0, np.int32), empty, empty
        lengths = [len(t) for t in tids]
        mask = np.concatenate(keep)
        return (np.repeat(np.array(map_no, np.int64), lengths)[mask],
                np.concatenate(tids)[mask],
                np.repeat(np.array(file_no, np.int32), lengths)[mask],
                np.concatenate(first).astype(np.uint64, copy=False)[mask],
                np.concatenate(count).astype(np.uint64, copy=False)[mask])

    def _build_train_maps(self) -> dict[tuple[str, str], TrainMap]:
        """The train maps of all index groups, built together (one sort for the run)."""
        names = [(name, group) for name, entry in self.sources.items() for group in entry.groups]
        maps = {name_group: n for n, name_group in enumerate(names)}
        map_no, tids, file_no, first, count = self._index_entries(maps)
        # By map, then train; entries with data sort before entries without, and
        # files stay in name order, so the first entry of a train is the one to read.
        order = np.lexsort((count == 0, tids, map_no))
        map_no, tids, file_no, first, count = (a[order] for a in (map_no, tids, file_no, first, count))
        repeat = (map_no[1:] == map_no[:-1]) & (tids[1:] == tids[:-1])
        claimed_twice = repeat & (count[1:] > 0) & (count[:-1] > 0)
        bounds = np.searchsorted(map_no, np.arange(len(names) + 1))
        for n in np.unique(map_no[1:][claimed_twice]).tolist():
            part = slice(bounds[n], bounds[n + 1])
            self._report_conflict(*names[n], tids[part], file_no[part], count[part])
        first_entry = np.concatenate([[True], ~repeat]) if len(tids) else np.zeros(0, bool)
        map_no, tids, file_no, first, count = (
            _readonly(a[first_entry]) for a in (map_no, tids, file_no, first, count))
        bounds = np.searchsorted(map_no, np.arange(len(names) + 1))
        return {name_group: TrainMap(*(a[bounds[n]:bounds[n + 1]] for a in (tids, file_no, first, count)))
                for n, name_group in enumerate(names)}

    def _report_conflict(self, source: str, group: str, tids: np.ndarray, file_no: np.ndarray,
                         count: np.ndarray) -> None:
        """Note the trains of one index group that several files claim (sorted entries)."""
        with_data = tids[count > 0]
        clash = np.unique(with_data[1:][with_data[1:] == with_data[:-1]])
        files = sorted({self.files[i].name for i in file_no[np.isin(tids, clash) & (count > 0)]})
        label = f"{source}/{group}" if group else source
        self.conflicts.append(
            f"{label}: {len(clash)} train ID(s) "
            f"{', '.join(map(str, clash[:5].tolist()))}{' ...' if len(clash) > 5 else ''} claimed by "
            f"several files ({', '.join(files)}); reading the first"
        )

    def train_map(self, source: str, group: str) -> TrainMap:
        """The train map of one source's index group."""
        return self._train_maps[source, group]


class RunSelection:
    """An immutable selection of trains, sources and keys from a run.

    Use :func:`xfeldata.open_run` to get one; every selection method returns a new
    object sharing the same file indexes.
    """

    def __init__(
        self, files: RunFiles, train_ids: np.ndarray | None = None,
        selection: Mapping[str, frozenset[str] | None] | None = None,
    ):
        self._files = files
        self._train_ids = files.train_ids if train_ids is None else _readonly(
            np.asarray(train_ids, dtype=np.uint64))
        self._selection: dict[str, frozenset[str] | None] = (
            {name: None for name in files.sources} if selection is None else dict(selection)
        )
        self._memo: dict[Hashable, Any] = {}

    def _new(self, train_ids: np.ndarray | None = None,
             selection: Mapping[str, frozenset[str] | None] | None = None) -> RunSelection:
        return type(self)(
            self._files, self._train_ids if train_ids is None else train_ids,
            self._selection if selection is None else selection,
        )

    # ----- what is here ---------------------------------------------------
    @property
    def train_ids(self) -> np.ndarray:
        """The selected train IDs, sorted (uint64, read-only)."""
        return self._train_ids

    @property
    def sources(self) -> list[str]:
        """The selected sources, sorted."""
        return sorted(self._selection)

    @property
    def control_sources(self) -> list[str]:
        """The selected slow-data (CONTROL) sources, sorted."""
        return [s for s in self.sources if self._files.sources[s].category == CONTROL]

    @property
    def instrument_sources(self) -> list[str]:
        """The selected fast-data (INSTRUMENT) sources, sorted."""
        return [s for s in self.sources if self._files.sources[s].category == INSTRUMENT]

    @property
    def files(self) -> list[str]:
        """Paths of the files that hold the selected sources."""
        return [fi.path for fi in self._files.files if any(s in self._selection for s in fi.sources)]

    def __contains__(self, source: object) -> bool:
        return isinstance(source, str) and self._resolve_name(source) in self._selection

    def __len__(self) -> int:
        return len(self._train_ids)

    def keys(self, source: str, timestamps: bool = False) -> list[str]:
        """The selected keys of a source, sorted.

        Control keys are named without ``.value``; with ``timestamps=True`` their
        ``.timestamp`` companions are listed too.
        """
        source = self.resolve_source(source)
        chosen = self._selection[source]
        entry = self._files.sources[source]
        keys = set(entry.keys) if chosen is None else set(chosen)
        if timestamps and entry.category == CONTROL:
            keys |= {f"{k}.timestamp" for k in list(keys)}
        return sorted(keys)

    def _resolve_name(self, source: str) -> str:
        return self._files.aliases.get(source, source)

    def resolve_source(self, source: str) -> str:
        """The current name of a selected source (legacy names resolve); KeyError if absent."""
        name = self._resolve_name(source)
        if name not in self._selection:
            raise SourceNameError(source, self._selection)
        return name

    def key_info(self, source: str, key: str) -> KeyInfo:
        """Where a selected key is stored (from the first file that has it).

        ``key.value`` is accepted for control keys, and ``key.timestamp`` gives the
        time each value last changed.
        """
        source = self.resolve_source(source)
        info = self._file_key_info(self._files.sources[source].keys, source, key)
        clash = self._files.key_clashes.get(source, {}).get(info.key)
        if clash is not None and clash[2]:
            raise FileFormatError(clash[0], f"source {source}, key {info.key}: {clash[1]}")
        return info

    def check_index(self, source: str, key: str) -> None:
        """Raise if the selected trains include index entries of the key's group that
        indexing set aside (pointing outside the data, negative, overflowing).

        Raises
        ------
        DataIndexError
            Naming the file, source, key, index group and trains.
        """
        damage = self.index_damage(source, key)
        if damage:
            raise damage[0][2]

    def index_damage(self, source: str, key: str) -> list[tuple[str, np.ndarray, DataIndexError]]:
        """Per file, the selected trains whose index entries for the key's group were
        set aside when indexing, and the error that reading them raises."""
        source = self.resolve_source(source)
        info = self.key_info(source, key)
        found = []
        for fi, damage in self._files.damaged_entries(source, info.group):
            hit = damage.train_ids[np.isin(damage.train_ids, self._train_ids)]
            if len(hit):
                shown = ", ".join(map(str, hit[:5].tolist())) + (" ..." if len(hit) > 5 else "")
                found.append((fi.path, hit, DataIndexError(
                    fi.path, source, info.key, f"selected train(s) {shown} have a bad index: {damage.message}")))
        return found

    def _file_key_info(self, keys: Mapping[str, KeyInfo], source: str, key: str) -> KeyInfo:
        entry = self._files.sources[source]
        chosen = self._selection.get(source)
        name = key
        is_timestamp = False
        if entry.category == CONTROL:
            if name.endswith(".value") and name[:-6] in entry.keys:
                name = name[:-6]
            elif name.endswith(".timestamp") and name[:-10] in entry.keys:
                name, is_timestamp = name[:-10], True
        if name not in keys or (chosen is not None and name not in chosen):
            raise PropertyNameError(key, source, self.keys(source))
        return _timestamp_key(keys[name]) if is_timestamp else keys[name]

    def file_key_info(self, file_no: int, source: str, key: str) -> KeyInfo:
        """Where a key is stored in one particular file of the run."""
        source = self.resolve_source(source)
        fi = self._files.files[file_no]
        try:
            return self._file_key_info(fi.sources[source].keys, source, key)
        except PropertyNameError:
            self.key_info(source, key)  # not a key of the source at all: that error
            raise FileFormatError(fi.path, f"source {source}: key {key} is missing from this file, though "
                                  "other files of the source have it (a key must be in every file of its "
                                  "source to be read; deselect it, or select the trains of the files that "
                                  "have it)") from None

    def _selected_groups(self, source: str) -> tuple[str, ...]:
        """The index groups that hold the selected keys of a source."""
        entry = self._files.sources[source]
        chosen = self._selection[source]
        if chosen is None:
            return entry.groups
        groups = {entry.keys[k].group for k in chosen if k in entry.keys}
        return tuple(g for g in entry.groups if g in groups)

    def index_groups(self, source: str) -> tuple[str, ...]:
        """The index groups of a source (``("",)`` for control data)."""
        return self._files.sources[self.resolve_source(source)].groups

    @property
    def file_indexes(self) -> tuple[FileIndex, ...]:
        """The indexes of all files of the run (not only the selected sources')."""
        return self._files.files

    def file(self, file_no: int) -> FileIndex:
        """The index of one file of the run, by its number in the train maps."""
        return self._files.files[file_no]

    def rows(self, source: str, group: str = "") -> TrainMap:
        """Where the rows of a source's index group are, for the selected trains that list it."""
        source = self.resolve_source(source)

        def lookup() -> TrainMap:
            found = self._files.train_map(source, group).lookup(self._train_ids)
            return TrainMap(*(_readonly(a) for a in (found.train_ids, found.file_no, found.first, found.count)))
        return self.memo(("rows", source, group), lookup)

    def memo(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """What ``make()`` returns, made once for this selection (which never changes):
        plans derived from its index, e.g. where a key's rows are.  At most
        :data:`MAX_MEMO` are kept (the oldest go first)."""
        memo = self._memo
        found = memo.get(key)
        if found is None:
            found = memo[key] = make()
            if len(memo) > MAX_MEMO:
                del memo[next(iter(memo))]
        return found

    def data_counts(self, source: str, group: str | None = None) -> np.ndarray:
        """Rows of data per selected train (0 where the source has none).

        ``group`` is an index group of the source (``"image"``) or one of its keys
        (``"image.data"``: that key's group); it defaults to the source's first
        index group (``""`` for control data).
        """
        source = self.resolve_source(source)
        groups = self._files.sources[source].groups
        if group is None:
            group = groups[0] if groups else ""
        elif group not in groups and (group or groups):
            try:
                group = self.key_info(source, group).group
            except KeyError:
                raise KeyError(f"{source} has no index group or key {group!r}; its index groups: "
                               f"{', '.join(groups) or '(control data: none)'}") from None
        found = self.rows(source, group)
        counts = np.zeros(len(self._train_ids), np.uint64)
        counts[np.searchsorted(self._train_ids, found.train_ids)] = found.count
        return counts

    def train_timestamps_ns(self) -> np.ndarray:
        """``INDEX/timestamp`` (ns since the Unix epoch, UTC) of each selected train, 0 where no file records one."""
        tids = self._train_ids
        out = np.zeros(len(tids), np.uint64)
        if not len(tids):
            return out
        for fi in self.file_indexes:
            if fi.timestamps is None:
                continue
            ids, ts = fi.train_ids[fi.valid], fi.timestamps[fi.valid]
            pos = np.minimum(np.searchsorted(tids, ids), len(tids) - 1)
            hit = (tids[pos] == ids) & (ts != 0)
            pos, ts = pos[hit], ts[hit]
            unset = out[pos] == 0
            out[pos[unset]] = ts[unset]
        return out

    @property
    def legacy_sources(self) -> dict[str, str]:
        """Legacy source names of the selected sources (corrected data's old ``.../DET/<n>CH0:xtdf``) -> current name.

        :attr:`sources` lists the current names only; ``run[legacy, key]`` and
        :meth:`select` accept either.
        """
        return {legacy: current for legacy, current in sorted(self._files.aliases.items())
                if current in self._selection}

    @property
    def metadata(self) -> dict[str, Any]:
        """Run metadata (format version, creation date, proposal, run number, ...)."""
        meta: dict[str, Any] = {}
        for fi in self._files.files:
            for k, v in fi.metadata.items():
                meta.setdefault(k, v)
        meta.pop("sequenceNumber", None)
        return meta

    @property
    def suspect_train_ids(self) -> np.ndarray:
        """Selected trains that some file marks as suspect."""
        return self._train_ids[np.isin(self._train_ids, self._files.suspect_train_ids)]

    @property
    def problems(self) -> list[tuple[str, str]]:
        """``(file, problem)`` for every inconsistency found while indexing."""
        return list(self._files.problems) + [("", c) for c in self._files.conflicts]

    def run_values(self, source: str) -> dict[str, Any]:
        """The values recorded at the start of the run (the ``RUN`` section) for a source.

        Reads the first file that has the source. Keys are named as by :meth:`keys`
        (scalars unwrapped, strings decoded).
        """
        name = self._resolve_name(source)
        holders = [fi for fi in self._files.files if name in fi.sources]
        if holders and self._files.sources[name].category == INSTRUMENT:
            raise KeyError(f"source {name} is an instrument source: only control sources "
                           "have values recorded at the start of the run")
        # Sources recorded only in RUN are in no index: then look through the slow-data
        # files (not detector modules, which hold no RUN section of other sources).
        candidates = holders or [fi for fi in self._files.files if not _is_detector_file(fi)]
        for fi in candidates:
            with h5py.File(fi.path, "r") as f:
                grp = f.get(f"RUN/{name}")
                if isinstance(grp, h5py.Group):
                    return _read_run_group(grp)
        if holders:
            raise KeyError(f"source {name} has no RUN values in {holders[0].name}")
        raise SourceNameError(source, set(self._files.sources))

    # ----- selecting -------------------------------------------------------
    def sel(self, trainId: Any = None) -> RunSelection:  # noqa: N803 (the label's name)
        """Select trains by train ID: a scalar, a list/array, an inclusive slice, or a filter.

        A filter is a boolean DataArray over ``trainId`` (``xgm > 1000``): the
        trains where it is True are kept (those it leaves out are dropped).

        Raises
        ------
        TrainIdError
            (a ``KeyError``) for scalar or listed train IDs (or a filter's True
            trains) the selection does not have.
        TypeError
            For a plain boolean array (that is positional: ``isel``).

        Examples
        --------
        >>> run.sel(trainId=slice(10000, 10009))    # doctest: +SKIP
        """
        if trainId is None:
            return self
        tids = self._train_ids
        if hasattr(trainId, "dims") and hasattr(trainId, "coords") and trainId.dtype == bool:
            if tuple(trainId.dims) != ("trainId",):
                raise ValueError(f"a boolean train filter must have the single dim trainId, not {trainId.dims}")
            if "trainId" not in trainId.coords:
                raise ValueError("a boolean train filter needs its trainId coordinate (the train IDs it is "
                                 "True or False for); for a mask by position use run.isel(trainId=...)")
            trainId = trainId["trainId"].values[trainId.values]  # the trains where it is True
        elif np.asarray(trainId).dtype == bool:
            raise TypeError("run.sel takes train IDs; select by a boolean array with run.isel(trainId=...) "
                            "or by a boolean DataArray over trainId")
        if isinstance(trainId, slice):
            keep = np.ones(len(tids), bool)
            if trainId.start is not None:
                keep &= tids >= np.uint64(trainId.start)
            if trainId.stop is not None:
                keep &= tids <= np.uint64(trainId.stop)
            out = tids[keep]
            return self._new(train_ids=out[:: trainId.step] if trainId.step else out)
        given = np.atleast_1d(np.asarray(trainId))
        if given.dtype.kind in "if" and (given < 0).any():
            raise TrainIdError(given[given < 0], *self._train_span())
        wanted = given.astype(np.uint64)
        missing = np.setdiff1d(wanted, tids)
        if len(missing):
            raise TrainIdError(missing, *self._train_span())
        return self._new(train_ids=np.unique(wanted))

    def isel(self, trainId: Any = None) -> RunSelection:  # noqa: N803
        """Select trains by position: an int, a slice, a list/array of ints, or a boolean mask.

        A boolean mask must have one value per train (else ``IndexError``).
        """
        if trainId is None:
            return self
        if isinstance(trainId, int | np.integer):
            n = len(self._train_ids)
            if not -n <= int(trainId) < n:
                raise IndexError(f"train position {trainId} out of range for {n} trains")
            return self._new(train_ids=self._train_ids[[int(trainId)]])
        given = np.asarray(trainId)
        if given.dtype == bool and given.shape != self._train_ids.shape:
            raise IndexError(f"boolean train filter of length {given.size} for {len(self._train_ids)} trains")
        picked = self._train_ids[trainId]
        return self._new(train_ids=np.unique(picked))

    def _match(self, spec: SelectionSpec, keys: str) -> dict[str, set[str] | None]:
        """Expand a selection spec into {source: set of keys or None (all)}."""
        wanted: dict[str, set[str] | None] = {}

        def add(source_glob: str, key_globs: Iterable[str] | None) -> None:
            source_glob = self._resolve_name(source_glob)
            matched = [s for s in self._selection if fnmatch.fnmatchcase(s, source_glob)]
            # Legacy names (soft links) match too, and stand for their current source.
            matched += [current for legacy, current in self._files.aliases.items()
                        if current in self._selection and current not in matched
                        and fnmatch.fnmatchcase(legacy, source_glob)]
            if not matched:
                raise SourceNameError(source_glob, self._selection)
            globs = list(key_globs) if key_globs else []
            any_hits = False
            for source in matched:
                if not globs or globs == ["*"]:
                    wanted[source] = None
                    any_hits = True
                    continue
                available = self.keys(source)
                picked = set()
                for glob in globs:
                    glob = glob.removesuffix(".value").removesuffix(".timestamp")  # EXtra-data's names
                    hits = [k for k in available if fnmatch.fnmatchcase(k, glob)]
                    if not hits and not _is_glob(glob) and not _is_glob(source_glob):
                        raise PropertyNameError(glob, source, available)
                    picked.update(hits)
                if not picked:
                    continue  # no key of this source matches: it is not selected
                any_hits = True
                if wanted.get(source, set()) is not None:
                    wanted[source] = (wanted.get(source) or set()) | picked
            if not any_hits:
                raise PropertyNameError(", ".join(globs), source_glob, self.keys(matched[0]))

        if isinstance(spec, str):
            add(spec, [keys])
        elif isinstance(spec, Mapping):
            for source, key_set in spec.items():
                add(source, [key_set] if isinstance(key_set, str) else key_set)
        else:
            for item in spec:
                if isinstance(item, str):  # a list of source names: all their keys
                    add(item, None)
                else:
                    source, key = item
                    add(source, [key])
        return wanted

    def select(self, selection: SelectionSpec, keys: str = "*",
               require_all: bool = False, require_any: bool = False) -> RunSelection:
        """Select sources and keys.

        Parameters
        ----------
        selection
            A source glob (with ``keys`` a key glob), a mapping ``{source: {keys}}``
            where an empty set or None means all keys, or an iterable of
            ``(source glob, key glob)`` pairs or of source globs (all their keys).
        keys
            Key glob used with a source glob.
        require_all
            Keep only the trains where every selected source has data.
        require_any
            Keep only the trains where at least one selected source has data.

        Examples
        --------
        >>> run.select("SPB_DET_AGIPD1M-1/DET/*CH0:xtdf", "image.*")   # doctest: +SKIP
        >>> run.select({"SA1_XTD2_XGM/DOOCS/MAIN": {"beamPosition.ixPos"}})  # doctest: +SKIP
        """
        wanted = self._match(selection, keys)
        new = {s: (None if k is None else frozenset(k)) for s, k in wanted.items()}
        result = self._new(selection=new)
        if require_all and require_any:
            raise ValueError("select: pass require_all or require_any, not both")
        if require_all or require_any:
            has = [result.data_counts(source, group) > 0
                   for source in new for group in result._selected_groups(source)]
            keep = np.logical_and.reduce(has) if require_all else np.logical_or.reduce(has)
            result = result._new(train_ids=result._train_ids[keep])
        return result

    def deselect(self, selection: SelectionSpec, keys: str = "*") -> RunSelection:
        """Remove sources or keys from the selection (same arguments as :meth:`select`)."""
        unwanted = self._match(selection, keys)
        new = dict(self._selection)
        for source, key_set in unwanted.items():
            if key_set is None:
                del new[source]
            else:
                remaining = set(self.keys(source)) - key_set
                if remaining:
                    new[source] = frozenset(remaining)
                else:  # no keys left: the source is not selected any more
                    del new[source]
        return self._new(selection=new)

    def split_trains(self, parts: int | None = None,
                     trains_per_part: int | None = None) -> list[RunSelection]:
        """Split the selected trains into consecutive, nearly equal parts.

        Parameters
        ----------
        parts
            How many parts (at most one per train).
        trains_per_part
            The largest number of trains in a part.
        """
        n = len(self._train_ids)
        if parts is None and trains_per_part is None:
            raise ValueError("split_trains needs parts or trains_per_part")
        if (parts is not None and parts < 1) or (trains_per_part is not None and trains_per_part < 1):
            raise ValueError("parts and trains_per_part must be at least 1")
        count = parts or 1
        if trains_per_part:
            count = max(count, math.ceil(n / trains_per_part))
        count = max(1, min(count, n))
        return [self._new(train_ids=chunk) for chunk in np.array_split(self._train_ids, count)]

    def union(self, *others: RunSelection) -> RunSelection:
        """Combine selections: the union of their trains, sources and keys.

        Selections from different files are merged into one run.
        """
        runs = (self, *others)
        files = self._files
        if any(r._files is not files for r in others):
            by_path = {fi.path: fi for r in runs for fi in r._files.files}
            files = RunFiles(by_path.values(), self._files.inc_suspect_trains)
        train_ids = np.unique(np.concatenate([r._train_ids for r in runs]))
        selection: dict[str, frozenset[str] | None] = {}
        for r in runs:
            for source, key_set in r._selection.items():
                if source not in selection:
                    selection[source] = key_set
                elif selection[source] is None or key_set is None:
                    selection[source] = None
                else:
                    selection[source] = selection[source] | key_set
        return type(self)(files, train_ids, selection)

    def _train_span(self) -> tuple[int | None, int | None, list[int]]:
        """First and last good (not suspect) selected train, and the suspect ones apart.

        A suspect train ID (e.g. 1000010029 among 10000-10029) would make the
        plain first-to-last range misleading.
        """
        suspect = self.suspect_train_ids
        good = self._train_ids[~np.isin(self._train_ids, suspect)]
        first, last = (good[[0, -1]].tolist() if len(good) else (None, None))
        return first, last, suspect.tolist()

    def __repr__(self) -> str:
        first, last, suspect = self._train_span()
        span = f"{first}-{last}" if first is not None else "none"
        if suspect:
            shown = ", ".join(map(str, suspect[:3])) + (f" and {len(suspect) - 3} more" if len(suspect) > 3 else "")
            span += f"; suspect: {shown}"
        name = f"{type(self).__module__.split('.')[0]}.{type(self).__name__}"
        return (f"<{name}: {_plural(len(self._train_ids), 'train')} "
                f"({span}), {_plural(len(self._selection), 'source')}, {_plural(len(self.files), 'file')}>")


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def _is_detector_file(fi: FileIndex) -> bool:
    """True for a file that holds only detector module sources."""
    return bool(fi.sources) and all(match_detector_source(s) for s in fi.sources)


def _read_run_group(grp: h5py.Group) -> dict[str, Any]:
    values: dict[str, Any] = {}

    def visit(name: str, obj: h5py.HLObject) -> None:
        if not isinstance(obj, h5py.Dataset):
            return
        leaf = name.rpartition("/")[2]
        key_path = name[: -len(leaf) - 1] if "/" in name else ""
        if leaf == "value":
            key = path_to_key(key_path)
        elif leaf == "timestamp":
            key = f"{path_to_key(key_path)}.timestamp"
        else:
            key = path_to_key(name)
        value = obj[()]
        if isinstance(value, np.ndarray) and value.shape[:1] == (1,):
            value = value[0]
        if isinstance(value, np.generic):
            value = value.item()
        values[key] = decode_str(value)

    grp.visititems(visit)
    return values


def positions_within(counts: np.ndarray) -> np.ndarray:
    """0, 1, ... within each train's rows.

    >>> positions_within(np.array([2, 0, 3])).tolist()
    [0, 1, 0, 1, 2]
    """
    counts = np.asarray(counts, np.int64)
    total = int(counts.sum())
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(total) - starts


def _plural(n: int, noun: str) -> str:
    """``1 train``, ``2 trains``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"
