"""Tiling a large raster into overlapping windows, and merging per-tile polygons.

Merge rule. With overlap ``o`` between neighbouring tiles, every tile has a *core*: the tile less
``o/2`` on each side that touches another tile. Core regions partition the scene. A detection is
kept only by the tile whose core holds its polygon's centroid, so a building no wider than ``o``
is reported once, from a tile that sees all of it. Larger buildings may still be cut by tile
edges: kept polygons from different tiles that overlap (intersection over the smaller area above
``merge_overlap``) are then unioned into one polygon with the higher score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
from rasterio.windows import Window


@dataclass(frozen=True)
class Tile:
    """A window of the scene and its core (scene pixel coordinates)."""

    window: Window
    core: tuple[float, float, float, float]  # x0, y0, x1, y1


def _starts(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)  # last tile flush with the edge
    return sorted(set(starts))


def tile_grid(width: int, height: int, tile: int, overlap: int) -> list[Tile]:
    """Overlapping tiles covering a width x height scene (edge tiles are shifted inwards)."""
    if overlap < 0 or overlap >= tile:
        raise ValueError(f"overlap={overlap} must be in [0, tile={tile})")
    stride = tile - overlap
    xs, ys = _starts(width, tile, stride), _starts(height, tile, stride)
    tiles = []
    for j, y in enumerate(ys):
        for i, x in enumerate(xs):
            w, h = min(tile, width - x), min(tile, height - y)
            # Core borders sit half-way through the overlap with each neighbour.
            x0 = 0 if i == 0 else (x + xs[i - 1] + tile) / 2
            x1 = width if i == len(xs) - 1 else (xs[i + 1] + x + w) / 2
            y0 = 0 if j == 0 else (y + ys[j - 1] + tile) / 2
            y1 = height if j == len(ys) - 1 else (ys[j + 1] + y + h) / 2
            tiles.append(Tile(Window(x, y, w, h), (x0, y0, x1, y1)))
    return tiles


def in_core(polygons: list, core: tuple[float, float, float, float]) -> np.ndarray:
    """(N,) bool: which polygons (scene pixel coordinates) have their centroid in ``core``."""
    if not polygons:
        return np.zeros(0, dtype=bool)
    c = shapely.centroid(np.asarray(polygons, dtype=object))
    x, y = shapely.get_x(c), shapely.get_y(c)
    x0, y0, x1, y1 = core
    return (x >= x0) & (x < x1) & (y >= y0) & (y < y1)


def overlap_groups(geoms: np.ndarray, sources: np.ndarray, min_overlap: float = 0.0
                   ) -> np.ndarray:
    """(N,) group label of each polygon (the smallest index in its group): the connected
    components of "from different ``sources`` and intersecting by more than ``min_overlap`` x the
    smaller polygon's area" (``0``: any overlap of positive area). Polygons of one source are
    joined only through polygons of another.

    geoms: (N,) shapely polygons; sources: (N,) tile or scene of each.
    """
    n = len(geoms)
    a, b = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    keep = (a < b) & (sources[a] != sources[b])
    a, b = a[keep], b[keep]
    if a.size:
        inter = shapely.area(shapely.intersection(geoms[a], geoms[b]))
        smaller = np.minimum(shapely.area(geoms[a]), shapely.area(geoms[b]))
        join = inter > min_overlap * np.maximum(smaller, 1e-9)
        a, b = a[join], b[join]
    return components(n, a, b)


def components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n,) label of each of n nodes: the smallest index of its connected component, the
    edges being the pairs ``a[k]``-``b[k]`` (union-find)."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(np.asarray(a).tolist(), np.asarray(b).tolist()):
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    return np.array([find(i) for i in range(n)], dtype=np.int64)


def merge_across_tiles(polygons: list, scores: list[float], tile_ids: list[int],
                       merge_overlap: float = 0.3) -> tuple[list, list[float]]:
    """Union polygons of *different* tiles that overlap (see module docstring)."""
    if len(polygons) == 0:
        return [], []
    geoms = np.asarray(polygons, dtype=object)
    label = overlap_groups(geoms, np.asarray(tile_ids), merge_overlap)
    groups: dict[int, list[int]] = {}
    for i, root in enumerate(label.tolist()):
        groups.setdefault(root, []).append(i)
    merged, merged_scores = [], []
    for members in groups.values():
        geom = shapely.union_all(geoms[members]) if len(members) > 1 else geoms[members[0]]
        if geom.geom_type != "Polygon":
            parts = [g for g in shapely.get_parts(geom) if g.geom_type == "Polygon"]
            geom = max(parts, key=lambda g: g.area) if parts else geom
        merged.append(geom)
        merged_scores.append(max(scores[i] for i in members))
    return merged, merged_scores
