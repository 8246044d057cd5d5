"""SpaceNet city folders -> Detectron2 dataset dicts, and their registration.

Each dict (one per GeoTIFF of the chosen product)::

    file_name  str    path of the GeoTIFF
    image_id   str    SpaceNet ImageId, e.g. "AOI_2_Vegas_img1234"
    height, width int raster size in pixels
    crs        str    the raster's CRS as WKT
    transform  tuple  the raster's affine transform (a, b, c, d, e, f), pixel -> map
    annotations list of:
        bbox [x0, y0, x1, y1], bbox_mode BoxMode.XYXY_ABS, category_id 0, iscrowd 0,
        segmentation  polygon list [[x0, y0, x1, y1, ...], ...] for footprints without holes;
                      COCO RLE (dict) for footprints with holes, which polygon lists cannot hold
                      (train with INPUT.MASK_FORMAT "bitmask": Detectron2 then decodes both)
        wkt_pix       the exact pixel footprint (holes kept), used for SpaceNet scoring

Labels: ``labels="csv"`` reads the city's summary CSV, whose pixel coordinates refer to the
pan-sharpened grid (650x650 in SpaceNet 2; for the other products that is the raster's own grid);
for the 163x163 ``MUL`` product they are scaled by 163/650 to its grid (the image is not
resampled). ``labels="geojson"`` reprojects each image's GeoJSON to the raster CRS
and maps it through the raster's own inverse affine, which is exact for every product.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import rasterio
import rasterio.features
import shapely
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from rasterio.errors import RasterioIOError
from rasterio.windows import Window
from shapely import affinity
from tqdm import tqdm

from .labels import LabelError, RepairLog, clean_footprints, clip_to_tile, read_geojson_footprints, read_summary_csv
from .layout import LABEL_GRID, PRODUCTS, aoi_name, geojson_path, image_id_from_path, product_dir, summary_csv_path

logger = logging.getLogger(__name__)

LABEL_SOURCES = ("csv", "geojson")


class RasterError(ValueError):
    """A GeoTIFF that cannot be used; the message names the file and the fix."""


def raster_header(path: Path) -> dict:
    """Open a GeoTIFF, check it is georeferenced and complete; return its header fields."""
    try:
        with rasterio.open(path) as src:
            if src.crs is None:
                raise RasterError(f"{path} has no CRS; SpaceNet tiles are georeferenced "
                                  "(EPSG:4326): use the original file or assign its CRS")
            if src.transform.is_identity:
                raise RasterError(f"{path} has no geotransform (pixel -> map affine); use the "
                                  "original file or assign its transform")
            # Reading the last pixel touches the last block: a truncated file fails here.
            src.read(1, window=Window(src.width - 1, src.height - 1, 1, 1))
            return {"height": src.height, "width": src.width, "count": src.count,
                    "crs": src.crs, "transform": src.transform, "nodata": src.nodata}
    except RasterioIOError as exc:
        raise RasterError(f"{path} cannot be read as a GeoTIFF ({exc}); it is truncated or "
                          "corrupt: re-download or regenerate it") from None


def make_annotation(geom, height: int, width: int) -> dict:
    """One building (pixel Polygon/MultiPolygon) -> a Detectron2 annotation dict."""
    x0, y0, x1, y1 = geom.bounds
    parts = list(shapely.get_parts(geom))
    if any(len(p.interiors) for p in parts):
        mask = rasterio.features.rasterize([geom], out_shape=(height, width), dtype=np.uint8)
        rle = mask_util.encode(np.asfortranarray(mask))
        rle["counts"] = rle["counts"].decode("ascii")
        segmentation = rle
    else:
        segmentation = [np.asarray(p.exterior.coords)[:-1].ravel().tolist() for p in parts]
    return {"bbox": [x0, y0, x1, y1], "bbox_mode": BoxMode.XYXY_ABS,
            "segmentation": segmentation, "category_id": 0, "iscrowd": 0,
            "wkt_pix": shapely.to_wkt(geom, rounding_precision=3)}


def list_images(aoi_root: Path, product: str) -> dict[str, Path]:
    """{ImageId: GeoTIFF path} of one product folder; duplicates are an error."""
    folder = product_dir(aoi_root, product)
    if not folder.is_dir():
        raise FileNotFoundError(f"product folder {folder} does not exist; expected "
                                f"{aoi_root}/{product}/{product}_<ImageId>.tif (see "
                                "datasets/README.md)")
    images: dict[str, Path] = {}
    for path in sorted(folder.glob("*.tif")):
        image_id = image_id_from_path(path)
        if image_id in images:
            raise ValueError(f"ImageId {image_id} appears twice in {folder}: {images[image_id].name} "
                             f"and {path.name}; keep one file per ImageId per product folder")
        images[image_id] = path
    if not images:
        raise FileNotFoundError(f"no .tif files in {folder}")
    return images


def _csv_labels(aoi_root: Path, image_ids) -> dict[str, list]:
    path = summary_csv_path(aoi_root)
    if not path.is_file():
        raise FileNotFoundError(f"summary CSV {path} does not exist; pass labels='geojson' to "
                                "read geojson/buildings/ instead")
    labels = read_summary_csv(path)
    missing = sorted(set(image_ids) - set(labels))
    if missing:
        raise LabelError(f"{len(missing)} image(s) have no row in {path} (e.g. {missing[0]}); "
                         "an image without buildings needs an 'ImageId,-1,POLYGON EMPTY,POLYGON "
                         "EMPTY' row. Fix the CSV or pass labels='geojson'")
    return labels


def load_spacenet_dicts(aoi_root: str | Path, product: str = "RGB-PanSharpen",
                        labels: str = "csv", image_ids: list[str] | None = None) -> list[dict]:
    """Build the dataset dicts of one SpaceNet city folder (see the module docstring)."""
    aoi_root = Path(aoi_root)
    if labels not in LABEL_SOURCES:
        raise ValueError(f"labels={labels!r} is not one of {LABEL_SOURCES}")
    images = list_images(aoi_root, product)
    if image_ids is not None:
        images = {k: images[k] for k in image_ids if k in images}
    csv_labels = _csv_labels(aoi_root, images) if labels == "csv" else None
    repairs = RepairLog()
    dicts = []
    for image_id, path in tqdm(images.items(), desc=f"loading {aoi_root.name}/{product}",
                               unit="img", disable=len(images) < 200):
        head = raster_header(path)
        h, w = head["height"], head["width"]
        if csv_labels is not None:
            footprints = clean_footprints(csv_labels[image_id], repairs)
            if product == "MUL":  # 163x163 grid; the CSV's pixels are on the 650x650 one
                footprints = [affinity.scale(f, w / LABEL_GRID, h / LABEL_GRID, origin=(0, 0))
                              for f in footprints]
            footprints = clip_to_tile(footprints, w, h, repairs)
        else:
            footprints = read_geojson_footprints(geojson_path(aoi_root, image_id), head["crs"],
                                                 head["transform"], w, h, repairs)
        dicts.append({
            "file_name": str(path), "image_id": image_id, "height": h, "width": w,
            "crs": head["crs"].to_wkt(), "transform": tuple(head["transform"])[:6],
            "annotations": [make_annotation(f, h, w) for f in footprints],
        })
    repairs.report(f"{aoi_root}/{product} ({labels} labels)")
    return dicts


def register_spacenet_instances(name: str, aoi_root: str | Path, product: str = "RGB-PanSharpen",
                                labels: str = "csv", image_ids: list[str] | None = None) -> None:
    """Register a SpaceNet city folder as Detectron2 dataset ``name`` (lazy: read on first use).

    Metadata: thing_classes=["building"], evaluator_type="spacenet", aoi, product, num_bands,
    aoi_root, labels.
    """
    if product not in PRODUCTS:
        raise ValueError(f"product={product!r} is not one of {sorted(PRODUCTS)}")
    if labels not in LABEL_SOURCES:
        raise ValueError(f"labels={labels!r} is not one of {LABEL_SOURCES}")
    DatasetCatalog.register(name, functools.partial(load_spacenet_dicts, aoi_root, product,
                                                    labels, image_ids))
    MetadataCatalog.get(name).set(
        thing_classes=["building"], evaluator_type="spacenet", aoi=aoi_name(aoi_root),
        product=product, num_bands=PRODUCTS[product], aoi_root=str(aoi_root), labels=labels)
