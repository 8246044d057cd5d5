"""Nearly parallel neighbours made parallel: one orientation per block of buildings.

Buildings of one block, one row or one estate are usually built parallel; outlines predicted one
at a time come out a few degrees apart, which a mapper sees at once. :func:`align_neighbours`
groups buildings that are close (``max_gap`` pixels apart or less) and nearly parallel (dominant
orientations within ``max_angle_deg`` of each other, modulo 90 degrees), and rotates each member
of a group about its centroid onto the group's area-weighted mean orientation (a member that would turn by more than ``max_angle_deg``,
possible when near neighbours chain, stays as it is). Buildings whose orientation no neighbour
shares stay as they are. :func:`neighbour_angle_spread` measures the
result: the mean orientation difference over close, nearly parallel pairs.

Orientation is :func:`mnc_d2.geometry.polygons.dominant_orientation` (length-weighted edge
direction modulo 90 degrees): meaningful for rectilinear outlines, so this is applied after
simplification or regularisation. Approximations named: groups are formed per tile (the
evaluator's image, or one predict.py tile; neighbours across a tile seam are not aligned), and
rotation keeps area exactly but moves each outline by up to ``max_angle_deg`` about its centroid.
"""

from __future__ import annotations

import math

import numpy as np
import shapely
from shapely import affinity
from shapely.geometry import Polygon

from .polygons import dominant_orientation

QUARTER = math.pi / 2


def orientation(geom) -> float:
    """Dominant orientation (radians, [0, pi/2)) of a polygon, or of a multipolygon's largest
    part; NaN for an empty geometry."""
    if geom is None or geom.is_empty:
        return float("nan")
    if geom.geom_type == "MultiPolygon":
        geom = max(geom.geoms, key=lambda part: part.area)
    return dominant_orientation(geom)


def _angle_gap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| modulo 90 degrees, in [0, 45] degrees (inputs in radians)."""
    d = np.abs(a - b) % QUARTER
    return np.degrees(np.minimum(d, QUARTER - d))


def close_pairs(polys: list[Polygon], max_gap: float) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) index pairs, i < j, of polygons at most ``max_gap`` apart."""
    geoms = np.asarray(polys, dtype=object)
    if len(geoms) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    i, j = shapely.STRtree(geoms).query(geoms, predicate="dwithin", distance=max_gap)
    keep = i < j
    return i[keep], j[keep]


def neighbour_angle_spread(polys: list[Polygon], max_gap: float = 10.0,
                           max_angle_deg: float = 10.0) -> tuple[float, int]:
    """Mean orientation difference in degrees over pairs of polygons at most ``max_gap`` apart
    whose orientations differ by ``max_angle_deg`` or less (the pairs alignment would make
    parallel), and the number of such pairs (NaN, 0 when there are none)."""
    i, j = close_pairs(polys, max_gap)
    if len(i) == 0:
        return float("nan"), 0
    theta = np.array([orientation(p) for p in polys])
    gap = _angle_gap(theta[i], theta[j])
    near = gap <= max_angle_deg  # NaN (an empty geometry) is never near
    return (float(gap[near].mean()) if near.any() else float("nan")), int(near.sum())


def align_neighbours(polys: list[Polygon], max_angle_deg: float = 10.0,
                     max_gap: float = 10.0) -> list[Polygon]:
    """The polygons (same order) with each group of close, nearly parallel neighbours rotated
    onto the group's area-weighted mean orientation (module docstring)."""
    n = len(polys)
    if n < 2 or max_angle_deg <= 0:
        return list(polys)
    theta = np.array([orientation(p) for p in polys])
    i, j = close_pairs(polys, max_gap)
    near = _angle_gap(theta[i], theta[j]) <= max_angle_deg
    parent = list(range(n))

    def root(k: int) -> int:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for a, b in zip(i[near].tolist(), j[near].tolist()):
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for k in range(n):
        groups.setdefault(root(k), []).append(k)
    area = np.array([p.area for p in polys])
    out = list(polys)
    for members in groups.values():
        if len(members) < 2:
            continue
        m = np.asarray(members)
        # mean direction on the circle of 4 * theta (orientations repeat every 90 degrees)
        s = float((area[m] * np.sin(4 * theta[m])).sum())
        c = float((area[m] * np.cos(4 * theta[m])).sum())
        target = (math.atan2(s, c) / 4) % QUARTER
        for k in members:
            turn = (target - theta[k] + QUARTER / 2) % QUARTER - QUARTER / 2  # in [-45, 45)
            # a chain of near neighbours can span more than the limit: never turn beyond it
            if turn and abs(math.degrees(turn)) <= max_angle_deg:
                out[k] = affinity.rotate(polys[k], turn, origin="centroid", use_radians=True)
    return out
