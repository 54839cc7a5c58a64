"""The Karabo bridge: wire protocol, client, server, simulator and live buffer.

Examples
--------
>>> from xfeldata.bridge import Client, Simulator, serve
>>> handle = serve(Simulator("AGIPD", modules=[0, 1], frames=4, ntrains=3), background=True)
>>> with Client(handle.endpoint, timeout=10) as client:
...     data, metadata = client.next()
>>> data["SPB_DET_AGIPD1M-1/DET/1CH0:xtdf"]["image.data"].shape
(4, 2, 512, 128)
>>> handle.stop()
"""

from typing import TYPE_CHECKING, Any

from .client import Client, KaraboBridge
from .protocol import ProtocolError, decode, encode, make_metadata
from .server import Server, ServerBusy, ServerClosed, Streamer, append_detector_modules, serve
from .simulate import Simulator

if TYPE_CHECKING:  # pragma: no cover
    from .live import LiveBuffer

__all__ = [
    "Client",
    "KaraboBridge",
    "LiveBuffer",
    "ProtocolError",
    "Server",
    "ServerBusy",
    "ServerClosed",
    "Simulator",
    "Streamer",
    "append_detector_modules",
    "decode",
    "encode",
    "make_metadata",
    "serve",
]


def __getattr__(name: str) -> Any:
    # LiveBuffer builds xarray objects: import it (and xarray, dask, pandas) on first
    # use, so the bridge's command-line tools start quickly.
    if name == "LiveBuffer":
        from .live import LiveBuffer

        globals()["LiveBuffer"] = LiveBuffer
        return LiveBuffer
    raise AttributeError(f"module 'xfeldata.bridge' has no attribute {name!r}")
