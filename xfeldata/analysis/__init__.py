"""Analysis on lazy detector data: masked means, calibrate, assemble, count photons, integrate, filter.

Every function takes the detector Datasets of ``run.detector()`` and
``LiveBuffer.detector()`` (or their ``image.data`` DataArray): a ``module``
dimension and the pixel dimensions ``slow_scan``, ``fast_scan``, any other
dimensions (``trainId``, ``pulseId``, ``frame`` ...) kept with their
coordinates.  numpy inputs give numpy results; dask inputs stay lazy, with
each mapping computed once and applied to every block of frames.

This package sits above the views; no lower layer imports it.

Examples
--------
>>> from xfeldata import analysis
>>> sorted(analysis.__all__)[:3]
['assemble', 'calibrate', 'dark_constants']
"""

from .calibration import calibrate, dark_constants, masked
from .filters import select_frames
from .geometry import assemble
from .integration import radial_profile, radial_profile_2d
from .photons import lit_pixels, photon_count
from .reduce import masked_mean, masked_sum

__all__ = [
    "assemble", "calibrate", "dark_constants", "lit_pixels", "masked", "masked_mean", "masked_sum", "photon_count",
    "radial_profile", "radial_profile_2d", "select_frames",
]
