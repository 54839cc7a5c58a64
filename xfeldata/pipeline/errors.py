"""The exception of the pipeline layer."""

from __future__ import annotations

from ..errors import XfeldataError

__all__ = ["PipelineError"]


class PipelineError(XfeldataError, RuntimeError):
    """A pipeline step gave no usable result: it raised, or its result breaks the contract.

    The message names the trains (offline blocks) or the script at fault.

    Examples
    --------
    >>> print(PipelineError("fn failed on trains 10000-10009: boom"))
    fn failed on trains 10000-10009: boom
    """
