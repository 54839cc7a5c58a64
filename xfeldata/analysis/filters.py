"""Frame filters: keep the frames a ``(trainId, pulseId)`` mask selects, as a ``frame`` dimension."""

from __future__ import annotations

import numpy as np
import xarray as xr

from ..schema import PULSE_DIM, PULSE_LIKE_DIMS

FRAME_DIM = "frame"


def select_frames(det: xr.Dataset | xr.DataArray, mask: xr.DataArray) -> xr.Dataset | xr.DataArray:
    """The frames where ``mask`` is True, along one ``frame`` dimension.

    Hit finding becomes data reduction: ``mask`` is typically a comparison of
    a per-frame figure (``lit_pixels(...) > 100``).  The result carries
    ``trainId`` and ``pulseId`` as coordinates along ``frame`` (and ``cellId``
    per frame and module), ready for a writer of frame lists such as CXI.
    JUNGFRAU's frames within a train are its memory cells: there ``cell``
    takes the place of ``pulseId``.

    Parameters
    ----------
    det
        A detector Dataset or DataArray with ``trainId`` and ``pulseId`` (or
        ``cell``) dims.
    mask
        Boolean ``(trainId, pulseId)`` (or ``(trainId, cell)``, or
        ``(trainId,)``: every frame of the train); aligned on the labels, so it
        may cover a subset of trains.  It is computed (it is small).

    Returns
    -------
    Dataset or DataArray
        Dims ``(frame, ...)`` in train and pulse order; lazy if ``det`` is.

    Examples
    --------
    >>> ds = xr.Dataset({"v": (("trainId", "pulseId"), np.arange(6).reshape(3, 2))},
    ...                 coords={"trainId": [10, 11, 12], "pulseId": [0, 1]})
    >>> hits = select_frames(ds, ds["v"] % 3 == 0)
    >>> hits["v"].values.tolist(), hits["trainId"].values.tolist(), hits["pulseId"].values.tolist()
    ([0, 3], [10, 11], [0, 1])
    """
    if not isinstance(mask, xr.DataArray):
        raise TypeError(f"mask must be a boolean DataArray over trainId and/or pulseId (e.g. lit > 100), not "
                        f"{type(mask).__name__}: it is matched to the frames by those coordinates")
    if mask.dtype != bool:
        raise TypeError(f"mask must be boolean, not {mask.dtype}")
    pulse = next((d for d in PULSE_LIKE_DIMS if d in det.dims), PULSE_DIM)
    extra = [d for d in mask.dims if d not in ("trainId", pulse)]
    if extra:
        raise ValueError(f"mask must have dims trainId and/or {pulse} (the data's frames), not {extra}")
    frame_dims = [d for d in ("trainId", pulse) if d in det.dims]
    if "trainId" not in frame_dims:
        raise ValueError(f"data to select frames of needs a trainId dim (it has {tuple(det.dims)})")
    full = xr.DataArray(np.zeros([det.sizes[d] for d in frame_dims], bool), dims=frame_dims,
                        coords={d: det[d].values for d in frame_dims})
    aligned = (full | mask.reindex_like(full, fill_value=False)).transpose(*frame_dims)
    picks = np.nonzero(np.asarray(aligned.values))
    out = det.isel({d: xr.DataArray(p, dims=FRAME_DIM) for d, p in zip(frame_dims, picks, strict=True)})
    return out
