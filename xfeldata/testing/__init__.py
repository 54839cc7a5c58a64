"""Synthetic European XFEL data for tests, examples and benchmarks.

Like ``zarr.testing``, this package is not part of the data path: nothing in
:mod:`xfeldata.files`, the run, array or view layers imports it.  It holds

- :mod:`xfeldata.testing.synthetic`: deterministic content (detector frames,
  slow and instrument sources) that a test can recompute for any train;
- :mod:`xfeldata.testing.example`: :func:`make_example`, which writes that
  content as a run directory in the facility's format.

The live-bridge simulator streams the same content.

Examples
--------
>>> import tempfile
>>> from xfeldata.testing import make_example
>>> run = make_example(tempfile.mkdtemp() + "/r0001", detector=None, n_trains=3)
>>> sorted(p.name for p in run.iterdir())
['RAW-R0001-DA01-S00000.h5', 'RAW-R0001-DA02-S00000.h5']
"""

from . import synthetic
from .example import BOGUS_TRAIN_OFFSET, IRREGULAR_PADDING, make_example

__all__ = ["make_example", "synthetic", "BOGUS_TRAIN_OFFSET", "IRREGULAR_PADDING"]
