"""Multi-module detectors: the kinds table and the stacking of modules.

- :mod:`xfeldata.detectors.kinds`: one entry per detector kind holding every
  kind-specific fact (a leaf module: the files layer and the synthetic writer
  import it without importing the layers above).
- :mod:`xfeldata.detectors.stacking`: ``run.detector()``, stacking the modules
  of a run selection into one labelled Dataset.

This package module imports only the kinds table, so that importing it from
the files layer pulls in nothing above that layer.

Examples
--------
>>> from xfeldata.detectors import DETECTORS
>>> DETECTORS["LPD1M"].modules[-1]
15
"""

from .kinds import (
    DETECTORS,
    DetectorKind,
    detector_kind_of_device,
    group_detector_sources,
    match_detector_source,
)

__all__ = ["DETECTORS", "DetectorKind", "detector_kind_of_device", "group_detector_sources",
           "match_detector_source"]
