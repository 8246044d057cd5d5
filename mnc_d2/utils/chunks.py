"""Run a vectorised step over slices of its rows in a few threads.

numpy's large array operations and shapely 2's vectorised GEOS calls release the GIL, so a step
that is one long run of such calls over N independent rows can use every core by cutting the rows
into slices. Results are per row, so they equal one call over all rows exactly.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np


def row_slices(n: int, min_chunk: int, max_workers: int = 4) -> list[slice]:
    """Contiguous slices covering ``range(n)``: one per worker, at most ``max_workers`` and the
    machine's CPU count, none shorter than ``min_chunk`` rows (a single slice when n is small)."""
    workers = min(os.cpu_count() or 1, max_workers, max(1, n // max(min_chunk, 1)))
    bounds = [n * k // workers for k in range(workers + 1)]
    return [slice(bounds[k], bounds[k + 1]) for k in range(workers)]


def concat_row_slices(fn: Callable[[slice], np.ndarray], n: int, min_chunk: int,
                      axis: int = 0, max_workers: int = 4) -> np.ndarray:
    """``fn(slice(0, n))`` computed as ``fn`` of each of :func:`row_slices`, the slices run in
    threads when more than one and their arrays joined along ``axis`` (the rows' axis of
    ``fn``'s result)."""
    slices = row_slices(n, min_chunk, max_workers)
    if len(slices) == 1:
        return fn(slices[0])
    with ThreadPoolExecutor(len(slices)) as pool:
        return np.concatenate(list(pool.map(fn, slices)), axis=axis)
