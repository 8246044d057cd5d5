"""GeoJSON output of building polygons in map coordinates (atomic writes). Torch-free."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterable

import geopandas as gpd

from ..utils.atomic import atomic_path, atomic_write

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
            frame.to_file(tmp, driver="GPKG", layer=Path(path).stem)
    # the layer (GeoJSON's "name") after the file, not after the temporary file written first
    with atomic_path(path) as tmp:
        frame.to_file(tmp, driver="GeoJSON", layer=Path(path).stem)
    return len(frame)


def write_label_geojson(path: Path, features: list, crs: str | None = None) -> None:
    """A label FeatureCollection; ``crs`` (e.g. "EPSG:32616") is named in the file when given
    (lon/lat files name none, as SpaceNet's)."""
    collection = {"type": "FeatureCollection", "features": features}
    if crs is not None:
        collection["crs"] = {"type": "name", "properties": {"name": crs}}
    with atomic_write(path, "w") as f:
        json.dump(collection, f)
