"""The progress bar: tqdm's notebook widget where it can be drawn, its text bar elsewhere.

``tqdm.auto`` warns "IProgress not found" in a notebook without ipywidgets
(at import, even if no bar is ever shown); the text bar works there too.
"""

from __future__ import annotations

import importlib.util

if importlib.util.find_spec("ipywidgets") is None:
    from tqdm.std import tqdm
else:  # pragma: no cover - depends on the environment
    from tqdm.auto import tqdm

__all__ = ["tqdm"]
