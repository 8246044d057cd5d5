"""One building where scenes meet: which per-scene polygons are the same building, and what
stands for it.

A city comes as scenes that abut (SpaceNet's tiles, most providers' tile grids) or overlap (a
mosaic's strips, several acquisitions). A building on a seam is predicted once per scene that
sees it: cut by each scene's edge into pieces that do not overlap, and stop short of the edge by
a pixel or a few (the mask weakens where the image ends: up to 1.5 m at 0.3 m seen on the demo
model's pieces of one tile cut by hand), or predicted whole by a scene that sees all of it and
again, whole or cut, by its neighbour.

The rule, in a local metric CRS (the UTM zone of the buildings being merged):

- A scene's *footprint* is where it holds data: its pixel grid's outline less any nodata
  collar or gap (recorded by predict.py beside the buildings; the scene's own grid otherwise).
  ``t``, the seam tolerance, is ``tolerance_px`` pixels of the scene.
- A polygon that comes within ``t`` of its scene's footprint boundary is *cut* (it may go on
  beyond the scene); the others are *whole*. A cut polygon is extended by ``t`` around it, near
  that boundary only (where its scene's view ends), so that pieces separated by the seam's gap
  meet; nothing is extended away from that boundary.
- Two polygons of different scenes are the *same building* when, inside the zone that both
  scenes see (their footprints, each grown by its ``t``), the overlap of their extended shapes
  covers at least ``min_overlap`` of the smaller one's part there. Across an abutting seam that
  zone is a strip ``2t`` wide, and a cut building's two pieces cover the same stretch of it; in
  an overlap zone the scenes' polygons are compared as predicted, so neighbours that touch or
  overlap by a sliver (a small misregistration between acquisitions) stay apart.
- Groups are the connected components of that relation. A group with a whole member is
  represented by its best-scoring whole member, unchanged (a union of two acquisitions' copies
  would be larger than the building by their misregistration); a group of cut pieces by their
  union, with the gaps between matched pieces bridged (where both extended pieces lie, inside
  the pieces' convex hull).

A scene with pixels outside its data (an orthorectified scene's nodata collar, a mosaic's gaps)
has predict.py's record of where its data lies as its footprint, so that a building the collar
cuts is a piece there, as at a grid edge.

Approximations: a scene whose data region was not recorded (files written before predict.py
recorded it, opened through the manifest) has its grid as footprint (a piece cut by its nodata
collar inside another scene counts as whole, and stands for the building if it scores higher
than the other scene's polygon); scenes whose grid is unknown (files written before
predict.py recorded it, and whose scene cannot be opened) stand for their buildings' bounding
box at :data:`FALLBACK_GSD_M` metres per pixel. Torch-free.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import shapely

from .tiling import components

logger = logging.getLogger(__name__)

# Defaults of tools/merge_footprints.py (--seam-tolerance, --seam-overlap).
SEAM_TOLERANCE_PX = 6.0  # 1.8 m at 0.3 m: the demo model's pieces stop up to 1.5 m short
SEAM_MIN_OVERLAP = 0.5
FALLBACK_GSD_M = 0.3  # a scene without a known grid: SpaceNet's pixel size


@dataclass
class SceneExtent:
    """Where one scene's pixels lie: ``footprint`` (EPSG:4326 polygon) and metres per pixel
    (``gsd_m``)."""

    footprint: shapely.Polygon
    gsd_m: float


@lru_cache(maxsize=128)
def _transformer(source: str, target: str):
    from pyproj import Transformer

    return Transformer.from_crs(source, target, always_xy=True)


def reproject(geoms: np.ndarray, source: str, target: str) -> np.ndarray:
    """(N,) shapely geometries from CRS ``source`` to ``target`` (WKT or "EPSG:n"), with one
    cached pyproj transformer per pair (a GeoSeries.to_crs builds one per call)."""
    move = _transformer(str(source), str(target))
    return shapely.transform(geoms, lambda xy: np.column_stack(move.transform(xy[:, 0],
                                                                              xy[:, 1])))


def grid_extent(crs, transform, width: int, height: int, region=None) -> SceneExtent:
    """The footprint and pixel size of a pixel grid (``crs``: rasterio/pyproj CRS or WKT; the
    pixel size from the grid's area on the WGS 84 ellipsoid). ``region``: where the scene holds
    data (a polygon in ``crs``), its footprint instead of the grid's outline."""
    from pyproj import Geod

    corners = [transform @ (0, 0), transform @ (width, 0), transform @ (width, height),
               transform @ (0, height)]
    shapes = np.array([shapely.Polygon(corners)] + ([] if region is None else [region]),
                      dtype=object)
    step = max(abs(transform.a) + abs(transform.b), abs(transform.d) + abs(transform.e))
    shapes = shapely.segmentize(shapes, step * max(width, height) / 32)  # curved in 4326
    wkt = crs if isinstance(crs, str) else crs.to_wkt()
    outline, *footprint = reproject(shapes, wkt, "EPSG:4326")
    area = abs(Geod(ellps="WGS84").geometry_area_perimeter(outline)[0])
    return SceneExtent(footprint[0] if footprint else outline,
                       float(np.sqrt(area / max(width * height, 1))))


def recorded_extent(schema_metadata: dict | None) -> SceneExtent | None:
    """The extent a per-scene GeoParquet's ``mnc_d2_grid`` metadata records; None without (or
    without a CRS). Its footprint is where the scene holds data when predict.py recorded that
    (a scene with a nodata collar or gaps), else the grid's outline."""
    from .scenes import recorded_data_region, recorded_grid

    grid = recorded_grid(schema_metadata)
    if grid is None or not grid[0]:
        return None
    return grid_extent(*grid, region=recorded_data_region(schema_metadata))


@dataclass
class SeamGroups:
    """What :func:`seam_groups` found for N polygons: ``label`` (N,) group of each (the
    smallest index in it), ``whole`` (N,) bool, and the matched pairs (``pairs``: (P, 2)
    indices) with each pair's bridge (``bridges``: (P,) metric polygons, possibly empty)."""

    label: np.ndarray
    whole: np.ndarray
    pairs: np.ndarray
    bridges: np.ndarray


def seam_groups(geoms: np.ndarray, scene: np.ndarray, footprints: dict, tolerance: dict,
                min_overlap: float = SEAM_MIN_OVERLAP) -> SeamGroups:
    """Group polygons of different scenes that are the same building (module docstring).

    geoms: (N,) polygons in a metric CRS; scene: (N,) scene key of each; footprints: scene key
    -> its footprint in the same CRS; tolerance: scene key -> ``t`` in metres.
    """
    n = len(geoms)
    t = np.array([tolerance[k] for k in scene.tolist()], dtype=float)
    edge = {k: shapely.buffer(shapely.boundary(footprints[k]), tolerance[k])
            for k in set(scene.tolist())}
    edges = np.array([edge[k] for k in scene.tolist()], dtype=object)
    cut = shapely.intersects(geoms, edges)
    extended = geoms.copy()
    if cut.any():
        grown = shapely.intersection(shapely.buffer(geoms[cut], t[cut], join_style="mitre"),
                                     edges[cut])
        extended[cut] = shapely.union(geoms[cut], grown)
    a, b = shapely.STRtree(extended).query(extended, predicate="intersects")
    keep = (a < b) & (scene[a] != scene[b])
    a, b = a[keep], b[keep]
    zones: dict = {}  # scene pair -> the zone both see
    for key in {tuple(sorted(pair)) for pair in zip(scene[a].tolist(), scene[b].tolist())}:
        zones[key] = shapely.intersection(
            shapely.buffer(footprints[key[0]], tolerance[key[0]], join_style="mitre"),
            shapely.buffer(footprints[key[1]], tolerance[key[1]], join_style="mitre"))
    pairs = zip(scene[a].tolist(), scene[b].tolist())
    zone = np.array([zones[tuple(sorted(pair))] for pair in pairs], dtype=object).reshape(-1)
    part_a = shapely.intersection(extended[a], zone)
    part_b = shapely.intersection(extended[b], zone)
    smaller = np.minimum(shapely.area(part_a), shapely.area(part_b))
    same = (smaller > 0) & (shapely.area(shapely.intersection(part_a, part_b))
                            >= min_overlap * smaller)
    a, b = a[same], b[same]
    bridges = np.array([shapely.Polygon()] * len(a), dtype=object)
    if len(a):
        hull = shapely.convex_hull(shapely.union(geoms[a], geoms[b]))
        bridges = shapely.intersection(shapely.intersection(extended[a], extended[b]), hull)
    return SeamGroups(components(n, a, b), ~cut, np.stack([a, b], axis=1).reshape(-1, 2),
                      bridges)
