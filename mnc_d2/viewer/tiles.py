"""Footprints as Mapbox vector tiles (``SITE/data/footprints/{z}/{x}/{y}.pbf``), for cities.

One GeoJSON of every footprint is what a browser must parse and hold before it draws the first
building; at a city's 200,000 buildings that took over a minute and panned at under 10 frames a
second (BENCHMARKS.md, the web map at scale). Vector tiles let the map load only the buildings
in view, at the zoom in view. Tiles are cut here, at site build, so any static host serves them:
web-mercator tiles from ``MIN_ZOOM`` to ``MAX_ZOOM`` (both 16, about 1 km across a screen: a
whole city in view would still draw every building, which the measurement showed is what makes
a city slow, so buildings appear from there on and the map over-zooms past it), each building
clipped to its tiles with a small buffer, encoded with ``mapbox-vector-tile`` (4096 units per
tile side: 0.15 m at zoom 16). The scores of all buildings go beside them,
sorted (``SITE/data/scores.f64``), so the page counts the buildings at any threshold exactly
without holding the footprints.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import shapely

from ..utils.atomic import atomic_write

MIN_ZOOM, MAX_ZOOM = 16, 16
EXTENT = 4096
BUFFER = 64  # tile units around each tile (MapLibre draws a tile's features up to its edge)
LAYER = "buildings"
HALF = 20037508.342789244  # half the web-mercator world, metres


def tile_index(x: np.ndarray, y: np.ndarray, zoom: int) -> tuple[np.ndarray, np.ndarray]:
    """(column, row) int64 indices of the web-mercator tiles at ``zoom`` holding EPSG:3857
    points ``x``, ``y`` (N,) (rows from the north; points beyond the world clipped to its
    edge tiles)."""
    size = 2 * HALF / 2 ** zoom
    top = 2 ** zoom - 1
    return (np.clip(np.floor((np.asarray(x) + HALF) / size), 0, top).astype(np.int64),
            np.clip(np.floor((HALF - np.asarray(y)) / size), 0, top).astype(np.int64))


def _tile_ranges(bounds: np.ndarray, zoom: int) -> tuple[np.ndarray, ...]:
    """(x0, x1, y0, y1) inclusive tile index ranges of EPSG:3857 ``bounds`` (N, 4) at ``zoom``."""
    x0, y1 = tile_index(bounds[:, 0], bounds[:, 1], zoom)
    x1, y0 = tile_index(bounds[:, 2], bounds[:, 3], zoom)
    return x0, x1, y0, y1


def write_vector_tiles(frame, out: Path, properties: list[str],
                       min_zoom: int = MIN_ZOOM, max_zoom: int = MAX_ZOOM,
                       layer: str = LAYER) -> dict:
    """Write ``frame`` (a GeoDataFrame in any CRS) as vector tiles under ``out``/{z}/{x}/{y}.pbf
    with the ``properties`` columns, in one ``layer``; returns {"tiles": count, "min_zoom",
    "max_zoom", "layer"}. Each file is written atomically."""
    import mapbox_vector_tile

    merc = frame.to_crs(3857)
    geoms = np.asarray(merc.geometry)
    bounds = shapely.bounds(geoms)
    # a missing value (NaN: a shape column of a building without a match) is left out of the
    # feature, as GeoJSON writes it null
    records = [{k: v for k, v in r.items() if not (isinstance(v, float) and np.isnan(v))}
               for r in merc[properties].to_dict("records")]
    written = 0
    for zoom in range(min_zoom, max_zoom + 1):
        size = 2 * HALF / 2 ** zoom
        pad = size * BUFFER / EXTENT
        members = defaultdict(list)
        for i, (x0, x1, y0, y1) in enumerate(zip(*_tile_ranges(bounds, zoom))):
            for x in range(x0, x1 + 1):
                for y in range(y0, y1 + 1):
                    members[(x, y)].append(i)
        for (x, y), idx in members.items():
            west, north = -HALF + x * size, HALF - y * size
            box = (west, north - size, west + size, north)
            clipped = shapely.clip_by_rect(geoms[idx], box[0] - pad, box[1] - pad, box[2] + pad,
                                           box[3] + pad)
            features = [{"geometry": g, "properties": records[i]}
                        for g, i in zip(clipped, idx) if not g.is_empty]
            if not features:
                continue
            data = mapbox_vector_tile.encode(
                [{"name": layer, "features": features}],
                default_options={"quantize_bounds": box, "extents": EXTENT})
            path = out / str(zoom) / str(x) / f"{y}.pbf"
            with atomic_write(path, "wb") as handle:
                handle.write(data)
            written += 1
    return {"tiles": written, "min_zoom": min_zoom, "max_zoom": max_zoom, "layer": layer}


def write_sorted_scores(scores: np.ndarray, path: Path) -> None:
    """Every building's score, ascending, as little-endian float64 (the page's exact counts: the
    same doubles as the tiles' and the GeoJSON's score property)."""
    with atomic_write(path, "wb") as handle:
        handle.write(np.sort(np.asarray(scores, dtype="<f8")).tobytes())

