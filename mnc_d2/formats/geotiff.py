"""GeoTIFF writing (atomic). Torch-free."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import Affine

from ..utils.atomic import atomic_path


def write_geotiff(path: Path, data: np.ndarray, transform: Affine, crs: str = "EPSG:4326") -> None:
    """(C, H, W) array -> GeoTIFF (atomic: written beside, then renamed)."""
    with atomic_path(path) as tmp, rasterio.open(
            tmp, "w", driver="GTiff", height=data.shape[1], width=data.shape[2],
            count=data.shape[0], dtype=str(data.dtype), crs=crs, transform=transform,
            compress="deflate") as dst:
        dst.write(data)
