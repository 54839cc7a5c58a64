"""Encode and decode Karabo bridge messages (pure functions, no sockets).

A message is a list of frames.  Protocol 2.2 (the default) sends, for each
source in sorted order, a ``msgpack`` (header, payload) pair of the non-array
values followed by one ``array`` pair per numpy array, whose payload is the
raw array memory (no copy).  Protocol 1.0 packs the whole train into one
msgpack frame with msgpack-numpy style array maps.  See the wire protocol
description in the project docs (``bridge-protocol.md``).

:func:`decode` recognises the version from the message itself: one frame is
1.0, (header, payload) pairs are 2.x, and where the metadata sits tells 2.0
(nested ``metadata`` map in the payload), 2.1 (flattened ``metadata.*`` keys)
and 2.2 (``metadata`` in the header).  Anything malformed raises
:class:`ProtocolError`; network input is never unpickled unless the caller
passes ``ser="pickle"``.

Examples
--------
>>> import numpy as np
>>> meta = {"DET/A:out": make_metadata("DET/A:out", 10000, 1700000000.5)}
>>> frames = encode({"DET/A:out": {"n": 2, "image.data": np.arange(6, dtype="u2").reshape(2, 3)}},
...                 meta)
>>> len(frames)
4
>>> data, metadata = decode(frames)
>>> data["DET/A:out"]["image.data"].shape, metadata["DET/A:out"]["timestamp.tid"]
((2, 3), 10000)
"""

from __future__ import annotations

import ast
import math
import pickle
import time
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack
import numpy as np

__all__ = [
    "DECODE_VERSIONS",
    "ENCODE_VERSIONS",
    "MAX_CONTAINERS",
    "MAX_CONTAINER_LEN",
    "MAX_FRAMES",
    "ProtocolError",
    "decode",
    "encode",
    "make_metadata",
    "train_id_of",
]

#: Protocol versions :func:`encode` can produce.
ENCODE_VERSIONS = ("1.0", "2.2")
#: Protocol versions :func:`decode` understands (recognised from the message).
DECODE_VERSIONS = ("1.0", "2.0", "2.1", "2.2")

# dtype kinds accepted from the network: no object arrays (they would need pickle).
_SAFE_KINDS = frozenset("biufcmMSUV")
_MAX_DTYPE_TEXT = 10_000

#: Most frames in one message (a 2.2 train of a 1M detector has a few hundred).
MAX_FRAMES = 10_000
#: Most maps and arrays decoded from one msgpack frame.  An empty map is one
#: byte on the wire and about 64 in memory: this bounds what a small hostile
#: frame can make :func:`decode` allocate.
MAX_CONTAINERS = 100_000
#: Most elements of one msgpack array (entries of one map: a tenth of it).
MAX_CONTAINER_LEN = 10_000_000


class ProtocolError(ValueError):
    """A Karabo bridge message is malformed.

    Raised by :func:`decode` (and so by every client) for anything that is
    not a valid message: an odd number of frames, frames that are not valid
    msgpack, a header without a source, an array frame whose length does not
    match its dtype and shape, an unknown content type, a bad dtype string,
    an error reply from a server (``Error: bad request ...``), an array
    header whose shape and dtype describe more than 2**63 bytes, more than
    :data:`MAX_FRAMES` frames or :data:`MAX_CONTAINERS` maps and arrays in
    one msgpack frame, etc.  The message names the frame index and, where
    known, the source and key (a client adds its endpoint).  The client
    that raised it stays usable.
    """


# ---------------------------------------------------------------------------
# Metadata
# ---------------------------------------------------------------------------


def _split_timestamp(timestamp: float) -> tuple[str, str]:
    """Whole seconds and 18-digit attoseconds of a Unix time, as strings."""
    text = repr(float(timestamp))
    if "e" not in text and "E" not in text and "." in text and timestamp >= 0:
        sec, frac = text.split(".")
        return sec, frac.ljust(18, "0")[:18]
    sec_i = math.floor(timestamp)
    frac_ns = int(round((timestamp - sec_i) * 1e9))
    return str(sec_i), f"{min(frac_ns, 999_999_999):09d}" + "0" * 9


def make_metadata(source: str, train_id: int, timestamp: float | None = None) -> dict[str, Any]:
    """The per-source metadata dict of one train.

    Parameters
    ----------
    source
        Source name.
    train_id
        Train ID (``timestamp.tid``).
    timestamp
        Unix time in seconds; default: now.

    Returns
    -------
    dict
        ``source``, ``timestamp`` (float), ``timestamp.sec`` (str),
        ``timestamp.frac`` (str of 18 digits, attoseconds), ``timestamp.tid`` (int).

    Examples
    --------
    >>> m = make_metadata("DET/A:out", 10000, 1700000000.5)
    >>> m["timestamp.sec"], m["timestamp.frac"], m["timestamp.tid"]
    ('1700000000', '500000000000000000', 10000)
    """
    if timestamp is None:
        timestamp = time.time()
    sec, frac = _split_timestamp(timestamp)
    return {
        "source": source,
        "timestamp": float(timestamp),
        "timestamp.sec": sec,
        "timestamp.frac": frac,
        "timestamp.tid": int(train_id),
    }


def train_id_of(metadata: Mapping[str, Mapping[str, Any]]) -> int | None:
    """The train ID of a decoded message, or None if no source carries one.

    Raises :class:`ProtocolError` if the sources disagree (consumers that
    match trains by ID would otherwise silently drop or mix trains).

    Examples
    --------
    >>> train_id_of({"a": {"timestamp.tid": 5}, "b": {"timestamp.tid": 5}})
    5
    """
    tids = {src: m.get("timestamp.tid") for src, m in metadata.items() if isinstance(m, Mapping)}
    found = {t for t in tids.values() if t is not None}
    if len(found) > 1:
        raise ProtocolError(f"sources carry different train IDs in one message: {tids}")
    return found.pop() if found else None


# ---------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """numpy scalars to Python numbers (msgpack cannot pack them)."""
    if isinstance(value, np.generic):
        return value.item()
    return value


def _wire_array(array: np.ndarray) -> np.ndarray:
    """C-contiguous, little-endian version of an array (a view where possible)."""
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    if not array.flags["C_CONTIGUOUS"]:
        array = np.ascontiguousarray(array)
    return array


def _np_default(obj: Any) -> Any:
    """msgpack ``default`` hook: numpy values as msgpack-numpy maps (protocol 1.0)."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise TypeError("object arrays cannot be sent (they would need pickle)")
        if obj.dtype.kind == "V":
            return {b"nd": True, b"type": obj.dtype.descr, b"kind": b"V",
                    b"shape": obj.shape, b"data": _wire_bytes(obj)}
        return {b"nd": True, b"type": obj.dtype.str, b"kind": b"",
                b"shape": obj.shape, b"data": _wire_bytes(obj)}
    if isinstance(obj, (np.bool_, np.number)):
        return {b"nd": False, b"type": obj.dtype.str, b"data": obj.data}
    if isinstance(obj, complex):
        return {b"complex": True, b"data": repr(obj)}
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def wire_dtype(dtype: np.dtype) -> str | dict[str, Any]:
    """A dtype as a 2.2 array header gives it: its name (``"<u2"`` style: ``str(dtype)``), or for a
    structured dtype the map of numpy's dict form, which ``np.dtype`` (and so the published
    ``karabo-bridge`` package's ``np.frombuffer``) reads back; ``str()`` of a structured dtype it cannot.
    A field that is an array of a nested structure goes as ``[map, shape]``, which only
    :func:`decode` reads (numpy takes no list for it; plain fields and their arrays, and nested
    structures, the published package decodes too).

    >>> wire_dtype(np.dtype("uint16"))
    'uint16'
    >>> spec = wire_dtype(np.dtype([("x", "<f8"), ("t", "<i4")]))
    >>> spec["names"], spec["formats"], np.dtype(spec) == np.dtype([("x", "<f8"), ("t", "<i4")])
    (['x', 't'], ['<f8', '<i4'], True)
    """
    if dtype.names is None:
        return str(dtype)
    formats: list[Any] = []
    for name in dtype.names:
        field = dtype.fields[name][0]
        if field.subdtype is not None:  # a field of several values: "(3,)<f8"
            base, shape = field.subdtype
            formats.append(f"{shape}{base.str}" if base.names is None else [wire_dtype(base), list(shape)])
        else:
            formats.append(field.str if field.names is None else wire_dtype(field))
    return {"names": list(dtype.names), "formats": formats,
            "offsets": [dtype.fields[n][1] for n in dtype.names], "itemsize": dtype.itemsize}


def _wire_bytes(array: np.ndarray):
    return array.data if array.flags["C_CONTIGUOUS"] else array.tobytes()


def _source_metadata(source: str, props: Mapping[str, Any],
                     metadata: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Any]:
    if metadata is not None and source in metadata:
        return dict(metadata[source])
    meta = props.get("metadata", {})
    return dict(meta) if isinstance(meta, Mapping) else {}


def encode(data: Mapping[str, Mapping[str, Any]],
           metadata: Mapping[str, Mapping[str, Any]] | None = None,
           protocol: str = "2.2") -> list:
    """Serialise one train to a list of frames.

    Parameters
    ----------
    data
        ``{source: {key: value}}``; values are Python values, numpy scalars or
        numpy arrays.  Array memory is referenced, not copied (2.2): do not
        modify the arrays until the frames are sent.
    metadata
        ``{source: {...}}`` (see :func:`make_metadata`).  Sources missing here
        take ``data[source]["metadata"]`` or an empty dict.
    protocol
        ``"2.2"`` (default) or ``"1.0"``.

    Returns
    -------
    list
        Frames (``bytes`` and ``memoryview`` objects), ready for
        ``socket.send_multipart(frames, copy=False)``.

    Notes
    -----
    The frames are byte for byte those of ``karabo_bridge.serialize`` for the
    same train, with four deliberate differences where the published
    package fails or sends something wrong: numpy scalars other than
    ``np.number`` (e.g. ``np.bool_``) are sent as plain values, big-endian
    arrays are converted to little-endian, with protocol 2.2 a
    ``"metadata"`` entry of a source's data goes into the header only
    instead of also into the payload, and a structured array's dtype is
    sent in numpy's dict form (:func:`wire_dtype`), which the published
    package decodes, not as ``str(dtype)``, which no client can.

    Examples
    --------
    >>> frames = encode({"SRC": {"x": 1.5}}, {"SRC": make_metadata("SRC", 1, 0.5)})
    >>> [bytes(f)[:1] for f in frames]
    [b'\\x83', b'\\x81']
    """
    if protocol not in ENCODE_VERSIONS:
        raise ValueError(f"unknown protocol version {protocol!r}; can send {ENCODE_VERSIONS}")
    if protocol == "1.0":
        train = {}
        for source, props in data.items():
            src = dict(props)
            src["metadata"] = _source_metadata(source, props, metadata)
            train[source] = src
        return [msgpack.packb(train, use_bin_type=True, default=_np_default)]

    pack = msgpack.Packer(use_bin_type=True).pack
    frames: list = []
    for source, props in sorted(data.items()):
        plain: dict[str, Any] = {}
        arrays: list[tuple[str, np.ndarray]] = []
        for key, value in props.items():
            if key == "metadata" and isinstance(value, Mapping):
                continue
            if isinstance(value, np.ndarray):
                arrays.append((key, value))
            else:
                plain[key] = _plain(value)
        frames.append(pack({"source": source, "content": "msgpack",
                            "metadata": _source_metadata(source, props, metadata)}))
        frames.append(pack(plain))
        for key, array in arrays:
            if array.dtype.hasobject:
                raise TypeError(f"{source} {key}: object arrays cannot be sent")
            array = _wire_array(array)
            frames.append(pack({"source": source, "content": "array", "path": key,
                                "dtype": wire_dtype(array.dtype), "shape": array.shape}))
            frames.append(array.data)
    return frames


# ---------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------


def _buffer(frame: Any, index: int) -> memoryview:
    """A read-only memoryview of a frame (bytes, memoryview, zmq.Frame, ...)."""
    buf = getattr(frame, "buffer", frame)  # zmq.Frame exposes .buffer
    try:
        view = memoryview(buf)
    except TypeError:
        raise ProtocolError(f"frame {index}: not a bytes-like object "
                            f"({type(frame).__name__})") from None
    if view.ndim != 1 or view.itemsize != 1 or view.format not in ("B", "b", "c"):
        try:
            view = view.cast("B")
        except TypeError:  # empty or structured local views (frames off a socket are bytes)
            view = memoryview(view.tobytes())
    return view


class _Containers:
    """msgpack ``object_hook``/``list_hook`` counting the maps and arrays of one frame."""

    def __init__(self, index: int, object_hook=None) -> None:
        self.index = index
        self.count = 0
        self.object_hook = object_hook

    def _count(self) -> None:
        self.count += 1
        if self.count > MAX_CONTAINERS:
            raise ProtocolError(f"frame {self.index}: more than {MAX_CONTAINERS} maps and "
                                f"arrays in one msgpack frame")

    def map(self, obj: dict) -> Any:
        self._count()
        return obj if self.object_hook is None else self.object_hook(obj)

    def list(self, obj: list) -> list:
        self._count()
        return obj


def _unpack(buf: memoryview, index: int, what: str, object_hook=None) -> Any:
    # Every map or array takes at least one byte: a frame of at most MAX_CONTAINERS
    # bytes cannot hold more, so only longer frames pay for counting them in Python.
    if len(buf) <= MAX_CONTAINERS:
        hooks = {} if object_hook is None else {"object_hook": object_hook}
    else:
        counter = _Containers(index, object_hook)
        hooks = {"object_hook": counter.map, "list_hook": counter.list}
    try:
        return msgpack.unpackb(buf, raw=False, max_array_len=MAX_CONTAINER_LEN,
                               max_map_len=MAX_CONTAINER_LEN // 10, **hooks)
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises many types for bad input
        raise ProtocolError(f"frame {index}: {what} is not valid msgpack "
                            f"({type(exc).__name__}: {exc})") from None


def _parse_dtype(text: Any, where: str) -> np.dtype:
    """A numpy dtype from its name on the wire, refusing object dtypes."""
    if isinstance(text, str) and text.startswith(("[", "{")):
        # str() of a structured dtype is a Python literal (list or dict).
        if len(text) > _MAX_DTYPE_TEXT:
            raise ProtocolError(f"{where}: dtype description too long")
        try:
            spec = ast.literal_eval(text)
        except Exception:
            raise ProtocolError(f"{where}: bad dtype {text[:80]!r}") from None
    elif isinstance(text, (str, list)):
        spec = text
    elif isinstance(text, dict):  # a structured dtype in numpy's dict form (wire_dtype)
        spec = _dict_dtype(text, where, 0)
    else:
        raise ProtocolError(f"{where}: dtype must be a string or a map, got {type(text).__name__}")
    if isinstance(spec, list):
        spec = [tuple(s) if isinstance(s, list) else s for s in spec]
    try:
        dtype = np.dtype(spec)
    except Exception:
        raise ProtocolError(f"{where}: bad dtype {str(text)[:80]!r}") from None
    if dtype.hasobject or dtype.kind not in _SAFE_KINDS:
        raise ProtocolError(f"{where}: dtype {dtype} is not allowed from the network")
    if dtype.subdtype is not None:
        # np.dtype("(2,)u1") silently adds dimensions to the array: the shape goes in "shape".
        raise ProtocolError(f"{where}: subarray dtype {str(text)[:80]!r} is not allowed "
                            f"(send the element dtype and the full shape)")
    if dtype.itemsize == 0:
        raise ProtocolError(f"{where}: dtype {dtype} has no size")
    return dtype


def _dict_dtype(spec: dict, where: str, depth: int) -> dict[str, Any]:
    """Numpy's dict form of a structured dtype as :func:`wire_dtype` sends it, checked before numpy
    sees it: only names, formats, offsets and itemsize, of matching lengths, fields nested at most
    4 deep, and no format numpy would evaluate as anything but a dtype name."""
    if depth > 4 or set(spec) - {"names", "formats", "offsets", "itemsize"} or not {"names", "formats"} <= set(spec):
        raise ProtocolError(f"{where}: bad structured dtype {str(spec)[:80]!r}")
    names, formats = spec["names"], spec["formats"]
    offsets = spec.get("offsets", [])
    if not (isinstance(names, list) and isinstance(formats, list) and isinstance(offsets, list)) \
            or len(formats) != len(names) or (offsets and len(offsets) != len(names)) \
            or not all(isinstance(n, str) for n in names) \
            or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets) \
            or not isinstance(spec.get("itemsize", 0), int) or len(str(spec)) > _MAX_DTYPE_TEXT:
        raise ProtocolError(f"{where}: bad structured dtype {str(spec)[:80]!r}")
    checked = []
    for f in formats:
        if isinstance(f, dict):
            checked.append(_dict_dtype(f, where, depth + 1))
        elif isinstance(f, list) and len(f) == 2 and isinstance(f[0], dict):  # [structured base, shape]
            checked.append((_dict_dtype(f[0], where, depth + 1), tuple(_parse_shape(f[1], where))))
        elif isinstance(f, str) and not f.startswith(("[", "{")):
            checked.append(f)
        else:
            raise ProtocolError(f"{where}: bad field format {str(f)[:80]!r}")
    return {**spec, "formats": checked}


def _parse_shape(shape: Any, where: str) -> tuple[int, ...]:
    if not isinstance(shape, (list, tuple)) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise ProtocolError(f"{where}: bad shape {shape!r} (need a list of non-negative ints)")
    if len(shape) > 64:
        raise ProtocolError(f"{where}: too many dimensions ({len(shape)})")
    return tuple(shape)


def _array_from(buf: memoryview, dtype: np.dtype, shape: tuple[int, ...], where: str,
                copy: bool = False) -> np.ndarray:
    # numpy refuses (with a plain ValueError) shapes whose size without the
    # zero-length axes, times the itemsize, does not fit in a signed 64-bit
    # integer, even for an empty array.
    if math.prod(max(n, 1) for n in shape) * dtype.itemsize >= 2**63:
        raise ProtocolError(f"{where}: dtype {dtype} and shape {list(shape)} describe an "
                            f"array too large for any machine")
    expected = math.prod(shape) * dtype.itemsize
    if len(buf) != expected:
        raise ProtocolError(f"{where}: {len(buf)} bytes do not match dtype {dtype} "
                            f"and shape {list(shape)} ({expected} bytes)")
    if expected == 0:
        return np.empty(shape, dtype=dtype)
    array = np.frombuffer(buf, dtype=dtype).reshape(shape)
    return array.copy() if copy else array


def _decode_np(obj: dict) -> Any:
    """msgpack-numpy maps (protocol 1.0) to numpy values, never unpickling."""
    if b"nd" not in obj:
        if b"complex" in obj and isinstance(obj.get(b"data"), str):
            try:
                return complex(obj[b"data"])
            except ValueError:
                raise ProtocolError(f"bad complex value {obj[b'data'][:40]!r}") from None
        return obj
    kind = obj.get(b"kind", b"")
    if kind == b"O" or kind == "O":
        raise ProtocolError("pickled object array in a 1.0 message refused")
    data = obj.get(b"data")
    if not isinstance(data, (bytes, bytearray)):
        raise ProtocolError("1.0 array map without a binary 'data' entry")
    dtype = _parse_dtype(obj.get(b"type"), "1.0 array")
    if obj[b"nd"] is True:
        shape = _parse_shape(obj.get(b"shape"), "1.0 array")
        return _array_from(memoryview(data), dtype, shape, "1.0 array")
    if len(data) != dtype.itemsize:
        raise ProtocolError(f"1.0 scalar: {len(data)} bytes do not match dtype {dtype}")
    return np.frombuffer(data, dtype=dtype)[0]


def _check_train(data: Any, index: int) -> dict:
    if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, dict) for k, v in data.items()):
        raise ProtocolError(f"frame {index}: a 1.0 message must map source names to dicts")
    return data


def _decode_single(buf: memoryview, ser: str) -> tuple[dict, dict]:
    if bytes(buf[:6]) == b"Error:":
        text = bytes(buf[:200]).decode("utf-8", "replace")
        raise ProtocolError(f"frame 0: the server replied with an error: {text!r}")
    if ser == "pickle":
        try:
            data = pickle.loads(buf)
        except Exception as exc:
            raise ProtocolError(f"frame 0: not a valid pickle ({type(exc).__name__})") from None
    else:
        data = _unpack(buf, 0, "the 1.0 train", object_hook=_decode_np)
    data = _check_train(data, 0)
    metadata = {}
    for source, props in data.items():
        meta = props.get("metadata", {})
        metadata[source] = meta if isinstance(meta, dict) else {}
    return data, metadata


def _metadata_from_payload(payload: dict) -> dict:
    """Metadata of 2.0 (nested map) or 2.1 (flattened ``metadata.*`` keys) payloads."""
    nested = payload.get("metadata")
    if isinstance(nested, dict):
        return dict(nested)
    return {k[len("metadata."):]: v for k, v in payload.items() if k.startswith("metadata.")}


def decode(frames: Sequence[Any], ser: str = "msgpack") -> tuple[dict, dict]:
    """Deserialise one message (any supported protocol version).

    Parameters
    ----------
    frames
        The message's frames: ``bytes``, ``memoryview``, ``bytearray`` or
        ``zmq.Frame`` objects.
    ser
        ``"msgpack"`` (default).  ``"pickle"`` accepts a one-frame pickled
        train; unpickling runs code chosen by the sender, so only pass it for
        a trusted server.

    Returns
    -------
    data : dict
        ``{source: {key: value}}``.  Arrays of 2.x messages are read-only
        numpy views on the frames (no copy).  For 1.0 the metadata also
        stays in ``data[source]["metadata"]``.
    metadata : dict
        ``{source: metadata dict}`` (empty dicts where none was sent).

    Raises
    ------
    ProtocolError
        For any malformed message; the text names the frame, source and key.

    Examples
    --------
    >>> decode(encode({"S": {"a": 1}}, {"S": {"timestamp.tid": 7}}))
    ({'S': {'a': 1}}, {'S': {'timestamp.tid': 7}})
    """
    if ser not in ("msgpack", "pickle"):
        raise ValueError(f"unknown serialisation {ser!r} (msgpack or pickle)")
    if isinstance(frames, (bytes, bytearray, memoryview)):
        frames = [frames]
    try:
        n = len(frames)
    except TypeError:
        raise ProtocolError("a message must be a list of frames") from None
    if n == 0:
        raise ProtocolError("empty message (no frames)")
    if n > MAX_FRAMES:
        raise ProtocolError(f"{n} frames in one message (at most {MAX_FRAMES})")
    try:
        return _decode_frames(frames, n, ser)
    except ProtocolError:
        raise
    except (RecursionError, MemoryError, ValueError, TypeError, OverflowError) as exc:
        # A check missing above: still a malformed message, never a crash of the receiver.
        raise ProtocolError(f"malformed message ({type(exc).__name__}: {exc})") from None


def _decode_frames(frames: Sequence[Any], n: int, ser: str) -> tuple[dict, dict]:
    if n == 1:
        return _decode_single(_buffer(frames[0], 0), ser)
    if n % 2:
        raise ProtocolError(f"odd number of frames ({n}); 2.x messages are (header, payload) pairs")

    data: dict[str, dict] = {}
    metadata: dict[str, dict] = {}
    for i in range(0, n, 2):
        header = _unpack(_buffer(frames[i], i), i, "header")
        if not isinstance(header, dict):
            raise ProtocolError(f"frame {i}: header is a {type(header).__name__}, not a map")
        source = header.get("source")
        if not isinstance(source, str):
            raise ProtocolError(f"frame {i}: header without a source name")
        content = header.get("content")
        payload = _buffer(frames[i + 1], i + 1)
        if content == "msgpack":
            if source in data:
                raise ProtocolError(f"frame {i}: source {source!r} sent twice")
            values = _unpack(payload, i + 1, f"payload of {source!r}")
            if not isinstance(values, dict):
                raise ProtocolError(f"frame {i + 1}: payload of {source!r} is not a map")
            data[source] = values
            meta = header.get("metadata")
            if isinstance(meta, dict):
                metadata[source] = meta  # 2.2
            elif meta is None:
                metadata[source] = _metadata_from_payload(values)  # 2.0 / 2.1
            else:
                raise ProtocolError(f"frame {i}: metadata of {source!r} is not a map")
        elif content == "array":
            key = header.get("path")
            where = f"frame {i + 1} (source {source!r}, key {key!r})"
            if not isinstance(key, str):
                raise ProtocolError(f"frame {i}: array header of {source!r} without a path")
            if source not in data:
                raise ProtocolError(f"{where}: array before the source's msgpack frame")
            dtype = _parse_dtype(header.get("dtype"), where)
            shape = _parse_shape(header.get("shape"), where)
            data[source][key] = _array_from(payload, dtype, shape, where)
        else:
            raise ProtocolError(f"frame {i}: unknown content type {content!r} (source {source!r})")
    return data, metadata
