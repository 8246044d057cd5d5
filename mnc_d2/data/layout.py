"""The SpaceNet 2 folder layout: products, cities, file names.

Per city (``AOI_2_Vegas_Train/``)::

    RGB-PanSharpen/RGB-PanSharpen_AOI_2_Vegas_img{N}.tif   3 bands, 650x650, uint16 (11-bit)
    MUL-PanSharpen/MUL-PanSharpen_AOI_2_Vegas_img{N}.tif   8 bands, 650x650
    PAN/PAN_AOI_2_Vegas_img{N}.tif                         1 band, 650x650
    MUL/MUL_AOI_2_Vegas_img{N}.tif                         8 bands, 163x163
    geojson/buildings/buildings_AOI_2_Vegas_img{N}.geojson footprints in lon/lat
    summaryData/AOI_2_Vegas_Train_Building_Solutions.csv   ImageId,BuildingId,PolygonWKT_Pix,...
"""

from __future__ import annotations

import re
from pathlib import Path

# product folder -> band count
PRODUCTS = {"RGB-PanSharpen": 3, "MUL-PanSharpen": 8, "PAN": 1, "MUL": 8}
# Side of the grid the summary CSV's pixel coordinates refer to (the pan-sharpened products).
LABEL_GRID = 650
CITIES = {
    "vegas": "AOI_2_Vegas",
    "paris": "AOI_3_Paris",
    "shanghai": "AOI_4_Shanghai",
    "khartoum": "AOI_5_Khartoum",
}
_IMAGE_ID = re.compile(r"(AOI_\d+_[A-Za-z]+_img\d+)$")


def image_id_from_path(path: str | Path) -> str:
    """``.../RGB-PanSharpen_AOI_2_Vegas_img12.tif`` -> ``AOI_2_Vegas_img12``."""
    stem = Path(path).stem
    match = _IMAGE_ID.search(stem)
    if not match:
        raise ValueError(f"{path}: file name does not end in a SpaceNet ImageId like "
                         "'AOI_2_Vegas_img12' (expected <product>_<ImageId>.tif)")
    return match.group(1)


def aoi_name(aoi_root: str | Path) -> str:
    """``.../AOI_2_Vegas_Train`` -> ``AOI_2_Vegas``."""
    name = Path(aoi_root).name
    match = re.match(r"(AOI_\d+_[A-Za-z]+)", name)
    if not match:
        raise ValueError(f"{aoi_root}: folder name does not start with an AOI like "
                         "'AOI_2_Vegas' (expected e.g. AOI_2_Vegas_Train)")
    return match.group(1)


def product_dir(aoi_root: str | Path, product: str) -> Path:
    if product not in PRODUCTS:
        raise ValueError(f"product={product!r} is not one of {sorted(PRODUCTS)}")
    return Path(aoi_root) / product


def summary_csv_path(aoi_root: str | Path) -> Path:
    aoi_root = Path(aoi_root)
    return aoi_root / "summaryData" / f"{aoi_root.name}_Building_Solutions.csv"


def geojson_path(aoi_root: str | Path, image_id: str) -> Path:
    return Path(aoi_root) / "geojson" / "buildings" / f"buildings_{image_id}.geojson"
