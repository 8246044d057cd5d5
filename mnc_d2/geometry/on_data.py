"""Which detections lie on the imagery's data: the rule prediction and evaluation share.

A building with more than ``MAX_OUTSIDE_DATA`` of its area on pixels without data (a nodata
value, an internal mask or an alpha band, a mosaic's gaps: GDAL's dataset mask) is dropped: the
model saw only filled band means there.
"""

from __future__ import annotations

import numpy as np
import shapely

MAX_OUTSIDE_DATA = 0.5


def inside_data(polygons: list, gaps: list, max_outside: float = MAX_OUTSIDE_DATA) -> np.ndarray:
    """(N,) bool: at most ``max_outside`` of the polygon's area lies on pixels without data.

    The rule is on areas, so it gives the same answer in any coordinates the polygon is later
    written in (a representative point does not: ties between equally wide parts of a polygon
    break differently once the coordinates are scaled). ``polygons``: (N,) in pixels;
    ``gaps``: arrays of non-overlapping polygons, in the same pixels, of the pixels without
    data."""
    geoms = np.asarray(polygons, dtype=object)
    keep = np.ones(len(geoms), dtype=bool)
    parts = np.concatenate(gaps) if gaps else np.zeros(0, dtype=object)
    if not len(parts) or not len(geoms):
        return keep
    poly, part = shapely.STRtree(parts).query(geoms, predicate="intersects")
    outside = np.zeros(len(geoms))
    np.add.at(outside, poly, shapely.area(shapely.intersection(geoms[poly], parts[part])))
    return outside <= max_outside * shapely.area(geoms)


def data_region(gaps: list, width: int, height: int, tolerance: float = 1.0):
    """The part of a ``width`` x ``height`` pixel grid that holds data: the grid less ``gaps``
    (arrays of polygons of the pixels without data, in the grid's pixels), its outline
    simplified by ``tolerance`` pixels (a collar's staircase of pixel edges becomes its line).
    None when no pixel lacks data (the region is the grid); an empty polygon when none holds
    any."""
    parts = np.concatenate(gaps) if gaps else np.zeros(0, dtype=object)
    if not len(parts):
        return None
    region = shapely.difference(shapely.box(0, 0, width, height), shapely.union_all(parts))
    return shapely.simplify(region, tolerance, preserve_topology=True)
