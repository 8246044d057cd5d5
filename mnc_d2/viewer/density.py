"""Building density for a city's zoomed-out view (``SITE/data/density.json`` and
``SITE/data/density_scores.f64``).

A city's footprints come as vector tiles from zoom 16 on (:mod:`.tiles`): drawing every building
of a whole city is what made it slow. Zoomed out, the page would then show imagery and scene
outlines only, and say nothing of where the buildings are, or where a scene yielded none. This
module aggregates the buildings into a grid of web-mercator tiles at ``CELL_ZOOM`` (18: about
150 m at the equator, 120 m at 40 degrees of latitude); the page draws each cell below zoom 16,
coloured by buildings per km2 at the slider's threshold.

Exact at any threshold: each cell keeps its buildings' scores (sorted, the same rounded doubles
as the tiles' score property), so the page counts them by binary search as it counts the whole
city (``scores.f64``). A building belongs to the one cell holding its representative point
(shapely's ``point_on_surface``), so the cells' counts add up to the page's building count.

Layout: ``density.json`` = {"zoom", "layer_max_zoom", "cells": [[x, y, start, count], ...]} with
cells in row-major order; ``density_scores.f64``: little-endian float64, cell after cell, each
cell's ``count`` scores ascending from ``start``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import shapely

from ..utils.atomic import atomic_write
from .tiles import tile_index

CELL_ZOOM = 18


def density_cells(frame, zoom: int = CELL_ZOOM,
                  score_column: str = "score") -> tuple[np.ndarray, np.ndarray]:
    """Group the buildings of ``frame`` (a GeoDataFrame with a ``score_column``, any CRS) by
    the web-mercator tile at ``zoom`` holding each one's representative point.

    Returns ``cells`` (C, 4) int64 rows of (x, y, start, count), row-major by (y, x), and
    ``scores`` (N,) float64: cell after cell, each cell's scores ascending, ``start`` indexing
    into it. Buildings with an empty geometry are left out (they have no place on the map).
    """
    merc = frame.to_crs(3857)
    geoms = np.asarray(merc.geometry)
    keep = ~(shapely.is_empty(geoms) | shapely.is_missing(geoms))
    if not keep.any():
        return np.zeros((0, 4), dtype=np.int64), np.zeros(0)
    points = shapely.point_on_surface(geoms[keep])
    xy = shapely.get_coordinates(points)
    scores = merc[score_column].to_numpy(dtype=np.float64)[keep]
    tx, ty = tile_index(xy[:, 0], xy[:, 1], zoom)
    order = np.lexsort((scores, tx, ty))  # by row, column, then score
    tx, ty, scores = tx[order], ty[order], scores[order]
    first = np.flatnonzero(np.r_[True, (tx[1:] != tx[:-1]) | (ty[1:] != ty[:-1])])
    counts = np.diff(np.r_[first, len(tx)])
    cells = np.stack([tx[first], ty[first], first, counts], axis=1).astype(np.int64)
    return cells, scores


def write_density(frame, data: Path, layer_max_zoom: int, zoom: int = CELL_ZOOM,
                  name: str = "density", score_column: str = "score") -> dict:
    """Write ``data``/``name``.json and ``data``/``name``_scores.f64 (module docstring) for
    the buildings of ``frame`` by their ``score_column``; the page draws the cells below
    ``layer_max_zoom`` (where the buildings themselves appear). Returns the summary for
    ``meta.json``. The site's misses use it too: the truth polygons the rules keep, by the
    score of the building that matched each (-1: none), so the polygons under a threshold
    are its misses (FN)."""
    cells, scores = density_cells(frame, zoom, score_column)
    with atomic_write(data / f"{name}_scores.f64", "wb") as handle:
        handle.write(scores.astype("<f8").tobytes())
    with atomic_write(data / f"{name}.json", "w") as handle:
        json.dump({"zoom": zoom, "layer_max_zoom": layer_max_zoom, "cells": cells.tolist()},
                  handle, separators=(",", ":"))
    return {"url": f"data/{name}.json", "scores": f"data/{name}_scores.f64", "zoom": zoom,
            "layer_max_zoom": layer_max_zoom, "cells": int(len(cells))}
