"""The one string rule of the package: stored bytes are UTF-8, decoded to ``str``
without ever failing (bad bytes become U+FFFD), as ``format.md`` requires.

Every reader of strings (the index, run values, views, control tables, the
xarray backend, the live buffer) decodes through these two functions.

Examples
--------
>>> decode_str(b"1.3"), decode_str(b"bad \\xff"), decode_str(7)
('1.3', 'bad \\ufffd', 7)
>>> decode_strings(np.array([[b"a", b"b"]], dtype=object))
array([['a', 'b']], dtype=object)
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["decode_str", "decode_strings"]


def decode_str(value: Any) -> Any:
    """Decode bytes (also numpy bytes) as UTF-8; an array of strings becomes a list of
    ``str``; anything else is returned as it is.

    >>> decode_str(np.array([b"x", b"y"]))
    ['x', 'y']
    """
    if isinstance(value, np.ndarray) and value.dtype.kind in "OS":
        return [decode_str(v) for v in value.tolist()]
    if isinstance(value, bytes | np.bytes_):
        return bytes(value).decode("utf-8", errors="replace")
    return value


def decode_strings(block: ArrayLike) -> np.ndarray:
    """Bytes to ``str`` in an object array of the same shape (other values kept).

    >>> decode_strings([b"on", "off"]).tolist()
    ['on', 'off']
    """
    block = np.asarray(block, dtype=object)
    out = np.empty(block.shape, dtype=object)
    flat_in, flat_out = block.reshape(-1), out.reshape(-1)
    for i, v in enumerate(flat_in.tolist()):
        flat_out[i] = decode_str(v)
    return out
