"""Writers for building predictions: SpaceNet proposal CSV and GeoJSON. Every write is atomic."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import geopandas as gpd

from ..utils.atomic import atomic_path, atomic_write
from .tester_polygons import wkt_for_tester

logger = logging.getLogger(__name__)

PROPOSAL_HEADER = ("ImageId", "BuildingId", "PolygonWKT_Pix", "Confidence")




def write_proposal_csv(path: str | Path,
                       predictions: Mapping[str, Sequence[tuple[object, float]]],
                       precision: int = 2) -> int:
    """Write ``{ImageId: [(pixel polygon, confidence), ...]}`` as a SpaceNet proposal CSV.

    Polygons are written as the SpaceNet 2 tester reads them (:func:`wkt_for_tester`: rings
    joined by ``),(``; a MultiPolygon as one row per part, since the tester stops on a
    MULTIPOLYGON proposal). An image without polygons gets the ``ImageId,-1,POLYGON EMPTY,1.0``
    row SpaceNet uses. BuildingIds number the rows of an image from 0 in descending confidence.
    Returns the number of polygon rows written.
    """
    rows = 0
    with atomic_write(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(PROPOSAL_HEADER)
        for image_id, items in predictions.items():
            ordered = sorted(items, key=lambda item: -float(item[1]))
            texts = [(text, conf) for geom, conf in ordered
                     for text in wkt_for_tester(geom, precision)]
            if not texts:  # no polygons, or only empty ones
                writer.writerow([image_id, -1, "POLYGON EMPTY", 1.0])
            for building_id, (text, conf) in enumerate(texts):
                writer.writerow([image_id, building_id, text, f"{conf:.6f}"])
                rows += 1
    return rows


def write_geojson(path: str | Path, geometries: Iterable, crs, properties: Iterable[dict]
                  ) -> int:
    """Write map-coordinate polygons with their properties as GeoJSON in ``crs``.

    ``crs`` is anything pyproj understands (a rasterio CRS, WKT, "EPSG:32616"); it is written to
    the file (GDAL names it in the ``crs`` member) so GIS tools place the polygons correctly.
    Returns the number of features.
    """
    frame = gpd.GeoDataFrame(list(properties), geometry=list(geometries), crs=crs)
    if frame.crs is not None and frame.crs.to_epsg() is None:
        logger.warning(
            "CRS of %s has no EPSG code; GeoJSON can only name it by its WKT, which some tools "
            "ignore. The same polygons are georeferenced exactly in the GeoPackage next to it.",
            path,
        )
        with atomic_path(Path(path).with_suffix(".gpkg")) as tmp:
            frame.to_file(tmp, driver="GPKG")
    with atomic_path(path) as tmp:
        frame.to_file(tmp, driver="GeoJSON")
    return len(frame)
