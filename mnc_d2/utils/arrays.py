"""Small numpy helpers for the torch-free command-line paths.

``np.unique`` imports ``numpy.ma`` on its first call (about 8 ms, a few percent of a small
``tools/score.py`` run); :func:`unique` gives the same sorted distinct values without it.
"""

from __future__ import annotations

import numpy as np


def unique(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values of a 1-D array (``np.unique(values)`` for numbers)."""
    ordered = np.sort(np.asarray(values).ravel())
    if len(ordered) == 0:
        return ordered
    keep = np.empty(len(ordered), dtype=bool)
    keep[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


def ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, e)`` for every pair of ``starts``/``ends`` (N,), without a
    Python loop."""
    counts = ends - starts
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    return np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(total)
