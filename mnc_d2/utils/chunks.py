"""Run a vectorised step over slices of its rows in a few threads.

numpy's large array operations and shapely 2's vectorised GEOS calls release the GIL, so a step
that is one long run of such calls over N independent rows can use every core by cutting the rows
into slices. Results are per row, so they equal one call over all rows exactly.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

import numpy as np

A = TypeVar("A")
B = TypeVar("B")


def row_slices(n: int, min_chunk: int, max_workers: int = 4) -> list[slice]:
    """Contiguous slices covering ``range(n)``: one per worker, at most ``max_workers`` and the
    machine's CPU count, none shorter than ``min_chunk`` rows (a single slice when n is small)."""
    workers = min(os.cpu_count() or 1, max_workers, max(1, n // max(min_chunk, 1)))
    bounds = [n * k // workers for k in range(workers + 1)]
    return [slice(bounds[k], bounds[k + 1]) for k in range(workers)]


def concat_row_slices(fn: Callable[[slice], np.ndarray], n: int, min_chunk: int,
                      axis: int = 0, max_workers: int = 4, block: int | None = None) -> np.ndarray:
    """``fn(slice(0, n))`` computed as ``fn`` of each of :func:`row_slices`, the slices run in
    threads when more than one and their arrays joined along ``axis`` (the rows' axis of
    ``fn``'s result). ``block``: each thread calls ``fn`` on at most this many rows at a time
    (a step that makes many temporaries of its rows' size runs faster when they stay small:
    they are reused from the heap and cache instead of fresh pages)."""
    slices = row_slices(n, min_chunk, max_workers)
    run = fn if not block else lambda s: _in_blocks(fn, s, block, axis)
    if len(slices) == 1:
        return run(slices[0])
    with ThreadPoolExecutor(len(slices)) as pool:
        return np.concatenate(list(pool.map(run, slices)), axis=axis)


def _in_blocks(fn: Callable[[slice], np.ndarray], rows: slice, block: int,
               axis: int) -> np.ndarray:
    if rows.stop - rows.start <= block:
        return fn(rows)
    return np.concatenate([fn(slice(b, min(b + block, rows.stop)))
                           for b in range(rows.start, rows.stop, block)], axis=axis)


def in_parallel(first: Callable[[], A], second: Callable[[], B]) -> tuple[A, B]:
    """``(first(), second())``, ``first`` in a second thread while this one runs ``second`` when
    the machine has a second core (for steps made of long numpy/GEOS/arrow calls, which release
    the GIL). An exception of either is raised as it is."""
    if (os.cpu_count() or 1) < 2:
        return first(), second()
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(first)
        other = second()
        return pending.result(), other
