"""Building labels: SpaceNet summary CSVs and per-image GeoJSON -> pixel polygons of one raster.

Documented repairs (each counted and logged once per load, never silent):

* self-intersecting polygons are made valid and only their polygonal parts are kept;
* a MultiPolygon feature becomes one building per part;
* features with NaN coordinates, and ``POLYGON EMPTY`` rows, are dropped (an image whose only
  row is ``POLYGON EMPTY`` is an image without buildings);
* labels crossing the tile edge are clipped to the tile, not dropped.

A GeoJSON that names no CRS is lon/lat by the GeoJSON spec. If its coordinates cannot be lon/lat
(beyond +-180/+-90) they are taken to be in the raster's CRS when they fall inside the raster
(with a warning); otherwise loading stops with an error naming the file.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely
from affine import Affine
from shapely.geometry import box

from ..geometry.polygons import map_to_pixel, polygonal_parts
from ..formats.spacenet_csv import read_truth_csv

logger = logging.getLogger(__name__)


class LabelError(ValueError):
    """Labels that cannot be used; the message names the file and the fix."""


class RepairLog(Counter):
    """Counts of the documented repairs; ``report`` logs them once."""

    def report(self, source: str) -> None:
        if self:
            logger.warning("%s: label repairs: %s", source,
                           ", ".join(f"{k}: {v}" for k, v in sorted(self.items())))


def clean_footprints(geoms, repairs: RepairLog) -> list:
    """Raw label geometries -> valid Polygons, one per building (see module docstring)."""
    out = []
    for geom in geoms:
        if geom is None or geom.is_empty:
            continue
        if np.isnan(shapely.get_coordinates(geom)).any():
            repairs["dropped: NaN coordinates"] += 1
            continue
        if shapely.has_z(geom):  # heights ([x, y, 0] as in SpaceNet's CSVs; CAD exports): dropped
            geom = shapely.force_2d(geom)
            repairs["made 2D: heights dropped"] += 1
        was_multi = geom.geom_type == "MultiPolygon"
        if not geom.is_valid:
            geom = shapely.make_valid(geom, method="structure", keep_collapsed=False)
            repairs["made valid: self-intersecting"] += 1
        parts = polygonal_parts(geom)
        if was_multi and len(parts) > 1:
            repairs["split: MultiPolygon into parts"] += 1
        out.extend(parts)
    return out


def clip_to_tile(polygons: list, width: int, height: int, repairs: RepairLog) -> list:
    """Clip pixel polygons to [0, width] x [0, height]; those fully outside are dropped."""
    tile = box(0, 0, width, height)
    out = []
    for poly in polygons:
        if tile.contains(poly):
            out.append(poly)
            continue
        clipped = poly.intersection(tile)
        parts = polygonal_parts(clipped)
        if not parts:
            repairs["dropped: outside the tile"] += 1
            continue
        repairs["clipped: crossing the tile edge"] += 1
        out.append(parts[0] if len(parts) == 1 else shapely.MultiPolygon(parts))
    return out


def read_summary_csv(path: str | Path) -> dict[str, list]:
    """SpaceNet summary CSV -> {ImageId: [pixel geometry, ...]} on the 650x650 label grid.

    Every ImageId in the file is a key (``POLYGON EMPTY`` rows give an empty list). A wrong
    header or malformed WKT raises a ``ValueError`` naming the file, the line and the format.
    """
    frame = read_truth_csv(path)
    out: dict[str, list] = {}
    for image_id, geom in zip(frame["ImageId"], frame["geometry"]):
        out.setdefault(image_id, [])
        if not geom.is_empty:
            out[image_id].append(geom)
    return out


def _declared_crs(path: Path):
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as exc:
            raise LabelError(f"{path} is not valid JSON ({exc}); expected a GeoJSON "
                             "FeatureCollection") from None
    if data.get("type") != "FeatureCollection":
        raise LabelError(f"{path}: expected a GeoJSON FeatureCollection, got type "
                         f"{data.get('type')!r}")
    return data.get("crs"), len(data.get("features", []))


def read_geojson_footprints(path: str | Path, raster_crs, transform: Affine, width: int,
                            height: int, repairs: RepairLog,
                            cuts: RepairLog | None = None) -> list:
    """Building GeoJSON -> pixel polygons of a raster with ``raster_crs`` and ``transform``
    (``cuts``: where the clipping to the raster is counted, default ``repairs``)."""
    path = Path(path)
    if not path.is_file():
        raise LabelError(f"label file {path} does not exist (an image without buildings needs "
                         "an empty FeatureCollection)")
    declared, n_features = _declared_crs(path)
    if n_features == 0:
        return []
    frame = gpd.read_file(path, on_invalid="ignore")  # unreadable geometry (NaN...) -> None
    unreadable = int(frame.geometry.isna().sum())
    if unreadable:
        repairs["dropped: NaN or unreadable coordinates"] += unreadable
        frame = frame[frame.geometry.notna()]
        if frame.empty:
            return []
    if declared is None:
        xmin, ymin, xmax, ymax = frame.total_bounds
        if max(abs(xmin), abs(xmax)) > 180 or max(abs(ymin), abs(ymax)) > 90:
            frame = _assume_raster_crs(frame, path, raster_crs, transform, width, height)
        else:
            frame = frame.set_crs("EPSG:4326", allow_override=True)
    if frame.crs is None:
        raise LabelError(f"{path} has no CRS; add a 'crs' member or write it as lon/lat")
    if raster_crs is not None and not frame.crs.equals(raster_crs):
        frame = frame.to_crs(raster_crs)
    return to_pixel_footprints(frame.geometry, transform, width, height, repairs, cuts)


def to_pixel_footprints(geoms, transform: Affine, width: int, height: int,
                        repairs: RepairLog, cuts: RepairLog | None = None) -> list:
    """Label geometries in a raster's CRS -> its pixel polygons (``transform``), cleaned
    (:func:`clean_footprints`) and clipped to ``width`` x ``height`` (:func:`clip_to_tile`,
    counted in ``cuts``, default ``repairs``)."""
    polygons = clean_footprints(list(geoms), repairs)
    return clip_to_tile([map_to_pixel(p, transform) for p in polygons], width, height,
                        repairs if cuts is None else cuts)


def _assume_raster_crs(frame, path, raster_crs, transform, width, height):
    """Projected coordinates in a GeoJSON that names no CRS: use the raster's CRS if it fits."""
    if raster_crs is None or raster_crs.is_geographic:
        raise LabelError(
            f"{path}: coordinates {tuple(np.round(frame.total_bounds, 1))} are not lon/lat, but "
            "the file names no CRS and the raster's CRS is geographic; add a 'crs' member "
            "to the GeoJSON naming its projection")
    left, top = transform @ (0, 0)
    right, bottom = transform @ (width, height)
    tile = box(min(left, right), min(top, bottom), max(left, right), max(top, bottom))
    if not tile.intersects(box(*frame.total_bounds)):
        raise LabelError(
            f"{path}: names no CRS and its coordinates {tuple(np.round(frame.total_bounds, 1))} "
            "are neither lon/lat nor inside the raster; add a 'crs' member to the GeoJSON")
    logger.warning("%s names no CRS and its coordinates are not lon/lat; they fall inside the "
                   "raster, so the raster's CRS is assumed", path)
    return frame.set_crs(raster_crs, allow_override=True)
