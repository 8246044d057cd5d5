"""GeoJSON output of building polygons in map coordinates (atomic writes). Torch-free."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

import geopandas as gpd

from ..utils.atomic import atomic_path

logger = logging.getLogger(__name__)


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
