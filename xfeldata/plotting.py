"""Which sources miss which trains: a table and a plot (matplotlib, the ``plot`` extra).

Examples
--------
>>> table = missing_data(run)                  # doctest: +SKIP
>>> ax = plot_missing_data(run)                # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .run import RunSelection

__all__ = ["missing_data", "plot_missing_data"]


def missing_data(run: RunSelection, min_saved_pct: float = 95) -> pd.DataFrame:
    """Sources (detector modules included) with data in at most ``min_saved_pct`` % of the trains.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``trainId``, one boolean column per such source (True where
        it has data), ordered by how many trains they miss (most first), as
        EXtra-data's ``plot_missing_data`` orders them.
    """
    n = len(run.train_ids)
    present = {}
    for source in run.sources:
        groups = run.index_groups(source) or ("",)
        has = np.zeros(n, bool)
        for group in groups:  # a source has data in a train if any of its index groups has
            has |= run.data_counts(source, group) > 0
        if n and has.mean() * 100 <= min_saved_pct:
            present[source] = has
    order = sorted(present, key=lambda s: (int(present[s].sum()), s))
    return pd.DataFrame({s: present[s] for s in order}, index=pd.Index(run.train_ids, name="trainId"))


def plot_missing_data(run: RunSelection, min_saved_pct: float = 95, ax: Any = None) -> Any:
    """Plot which trains the sources of :func:`missing_data` miss (black) or have (pink).

    Parameters
    ----------
    run
        A run or selection.
    min_saved_pct
        Show the sources with data in at most this percentage of the trains.
    ax
        A matplotlib Axes to draw on (default: a new figure's).

    Returns
    -------
    matplotlib.axes.Axes
        Each row labelled ``"<source> (<percent saved>%)"``.
    """
    try:
        import matplotlib.pyplot as plt
        from matplotlib.colors import ListedColormap
    except ImportError:
        raise ImportError("plot_missing_data needs matplotlib: pip install 'xfeldata[plot]'") from None
    table = missing_data(run, min_saved_pct)
    if ax is None:
        _, ax = plt.subplots(figsize=(9, max(3, len(table.columns) / 3.5)))
    if len(table.columns):
        ax.imshow(table.to_numpy().T, aspect="auto", interpolation="none",
                  cmap=ListedColormap(["black", "deeppink"]), vmin=0, vmax=1)
    ax.set_yticks(np.arange(len(table.columns)),
                  labels=[f"{s} ({table[s].mean() * 100:.2f}%)" for s in table.columns], fontsize=8)
    ax.set_xlabel("train index in the selection")
    ax.set_title(f"Sources with at most {min_saved_pct}% of trains saved (pink: saved, black: missing)")
    return ax
