"""Overlap areas of convex polygon pairs, many at once (numpy), for the scorer's fast path.

Most building footprints a scorer meets are strictly convex quadrilaterals or close to it, and
GEOS's general overlay (shapely ``intersection``) spends about 10 us on each such pair. For
pairs of strictly convex simple rings the overlap is computed here by clipping one polygon by
every edge of the other (Sutherland-Hodgman) with all pairs advanced together, then the
shoelace area of what remains. Both are exact constructions, so the result differs from GEOS's
only by floating-point rounding (relative ~1e-15 on pixel coordinates); :mod:`.spacenet_metric`
still settles with GEOS every pair whose IoU lies within a margin of the threshold or of another
candidate of the same proposal, so the matching cannot change.

Approximation named: this is not GEOS and not the tester's ``java.awt.geom.Area``; all three
agree to rounding (see :mod:`.tester_polygons`).
"""

from __future__ import annotations

import numpy as np

from ..utils.arrays import unique
from ..utils.chunks import concat_row_slices

MAX_VERTICES = 8  # rings with more distinct vertices take GEOS's overlay


def convex_rings(coords: np.ndarray, ring_offsets: np.ndarray, poly_offsets: np.ndarray,
                 max_vertices: int = MAX_VERTICES):
    """Which polygons are one strictly convex simple ring, with their vertices.

    coords (K, 2), ring_offsets (R + 1,), poly_offsets (N + 1,): a :class:`PolygonTable`'s
    arrays. Returns ``convex`` (N,) bool; ``vertices`` (N, max_vertices, 2) counter-clockwise,
    zero-padded (meaningful where ``convex``); ``count`` (N,) vertices per polygon; ``area``
    (N,) the ring's enclosed area (0 where not convex). Strictly convex: at least 3 distinct
    vertices (a closing repeat of the first is dropped), every turn in the same direction and
    none straight, turning once around (a pentagram turns twice).
    """
    n_poly = len(poly_offsets) - 1
    convex = np.zeros(n_poly, dtype=bool)
    vertices = np.zeros((n_poly, max_vertices, 2))
    count = np.zeros(n_poly, dtype=np.int64)
    area = np.zeros(n_poly)
    if n_poly == 0:
        return convex, vertices, count, area
    one_ring = np.flatnonzero(np.diff(poly_offsets) == 1)
    ring = poly_offsets[one_ring]
    start, end = ring_offsets[ring], ring_offsets[ring + 1]
    size = end - start
    has = size > 0
    closed = np.zeros(len(ring), dtype=bool)
    closed[has] = (coords[start[has]] == coords[end[has] - 1]).all(axis=1)
    n = size - closed
    fits = (n >= 3) & (n <= max_vertices)
    idx, start, n = one_ring[fits], start[fits], n[fits]
    for size in unique(n).tolist():  # rings of one vertex count at a time: plain rolls
        sel = n == size
        rows, first = idx[sel], start[sel]
        v = coords[first[:, None] + np.arange(size)[None, :]]  # (M, size, 2)
        e = np.roll(v, -1, axis=1) - v  # edge j: v[j] -> v[j + 1]
        e_next = np.roll(e, -1, axis=1)
        cross = e[..., 0] * e_next[..., 1] - e[..., 1] * e_next[..., 0]
        left, right = (cross > 0).all(axis=1), (cross < 0).all(axis=1)
        ok = left | right
        if size > 4:  # turns all one way sum to 2 pi k with k < size / 2: k = 1 below 5 vertices
            turning = np.arctan2(cross, (e * e_next).sum(axis=-1)).sum(axis=1)
            ok &= np.abs(np.abs(turning) - 2 * np.pi) < 1e-6
        v_next = np.roll(v, -1, axis=1)
        shoelace = 0.5 * (v[..., 0] * v_next[..., 1] - v[..., 1] * v_next[..., 0]).sum(axis=1)
        v = np.where(right[:, None, None], v[:, ::-1], v)  # every ring counter-clockwise
        keep = rows[ok]
        convex[keep] = True
        vertices[keep, :size] = v[ok]
        count[keep] = size
        area[keep] = np.abs(shoelace[ok])
    return convex, vertices, count, area


def overlap_areas(subject: np.ndarray, subject_n: np.ndarray, clip: np.ndarray,
                  clip_n: np.ndarray) -> np.ndarray:
    """(M,) area of ``subject[i] & clip[i]`` for counter-clockwise convex rings (NaN where the
    input was not convex after all: the caller overlays those with GEOS).

    subject (M, S, 2) / clip (M, K, 2): zero-padded vertices; subject_n / clip_n (M,): counts.
    Each clip edge cuts every subject at once; a convex polygon cut by a half-plane gains at most
    one vertex, so S + K slots always suffice.
    """
    m, s = subject.shape[:2]
    k_max = clip.shape[1]
    cap = s + k_max
    if m == 0:
        return np.zeros(0)
    # Work relative to each pair's first clip vertex: smaller numbers, less cancellation.
    origin = clip[:, :1, :].copy()
    poly = np.zeros((m, cap, 2))
    poly[:, :s] = subject - origin
    clip = clip - origin
    cnt = subject_n.astype(np.int64).copy()
    rows = np.arange(m)
    slots = np.arange(cap)
    failed = np.zeros(m, dtype=bool)  # more vertices than slots: cannot happen for convex input
    for k in range(k_max):
        live = np.flatnonzero((k < clip_n) & (cnt > 0) & ~failed)  # rows cut by edge k
        if len(live) == 0:
            continue
        sub, n = poly[live], cnt[live]
        a = clip[live, k]
        ab = clip[live, (k + 1) % clip_n[live]] - a
        d = ab[:, None, 0] * (sub[..., 1] - a[:, None, 1]) - ab[:, None, 1] * (
            sub[..., 0] - a[:, None, 0])  # (L, cap): >= 0 left of (on) the clip edge
        valid = slots[None, :] < n[:, None]
        nxt = (slots[None, :] + 1) % n[:, None]
        lr = np.arange(len(live))[:, None]
        d_n = d[lr, nxt]
        inside = d >= 0
        keep_cur = valid & inside
        cross = valid & (inside != (d_n >= 0))
        emitted = keep_cur.astype(np.int64) + cross
        start = np.cumsum(emitted, axis=1) - emitted  # first output slot of vertex j
        new_n = emitted.sum(axis=1)
        over = new_n > cap
        failed[live[over]] = True
        out = np.zeros_like(sub)
        r, c = np.nonzero(keep_cur & ~over[:, None])
        out[r, start[r, c]] = sub[r, c]
        r, c = np.nonzero(cross & ~over[:, None])
        c_n = nxt[r, c]
        t = d[r, c] / (d[r, c] - d_n[r, c])
        out[r, start[r, c] + keep_cur[r, c]] = sub[r, c] + t[:, None] * (sub[r, c_n] - sub[r, c])
        poly[live] = out
        cnt[live] = np.where(over, cnt[live], new_n)
    valid = slots[None, :] < cnt[:, None]
    nxt = (slots[None, :] + 1) % np.maximum(cnt, 1)[:, None]
    p_n = poly[rows[:, None], nxt]
    twice = np.where(valid, poly[..., 0] * p_n[..., 1] - poly[..., 1] * p_n[..., 0], 0.0)
    out = np.maximum(0.5 * twice.sum(axis=1), 0.0)
    out[failed] = np.nan
    return out


def pair_overlap_areas(vert_a: np.ndarray, n_a: np.ndarray, vert_b: np.ndarray,
                       n_b: np.ndarray, min_chunk: int = 4096, block: int = 8192) -> np.ndarray:
    """(M,) :func:`overlap_areas` of pairs given as (M, V, 2) vertices and (M,) counts, run in
    buckets of similar vertex counts (the work grows with the widest ring of a batch); a large
    bucket is cut into slices of at least ``min_chunk`` pairs clipped in threads (numpy releases
    the GIL in the long array operations; the areas are per pair, so identical to one call), each
    thread clipping ``block`` pairs at a time (about a third faster than 100,000 pairs in one
    call on 2-core x86 machines: the temporaries stay in cache)."""
    out = np.zeros(len(n_a))
    widest = np.maximum(n_a, n_b)
    low = 0
    for high in (4, 6, vert_a.shape[1]):
        sel = np.flatnonzero((widest > low) & (widest <= high))
        low = high
        if len(sel):
            def clip(part: slice, sel=sel, high=high) -> np.ndarray:
                rows = sel[part]
                return overlap_areas(vert_a[rows, :high], n_a[rows], vert_b[rows, :high],
                                     n_b[rows])

            out[sel] = concat_row_slices(clip, len(sel), min_chunk, block=block)
    return out
