"""SpaceNet folders -> Detectron2 dataset dicts, and their registration, for every release
described in :mod:`.versions` (SpaceNet 1, 2 and 4).

Each dict (one per GeoTIFF of the chosen product)::

    file_name  str    path of the GeoTIFF
    image_id   str    SpaceNet ImageId, e.g. "AOI_2_Vegas_img1234",
                      "Atlanta_nadir27_catid_1030010003472200_733601_3725139"
    height, width int raster size in pixels
    crs        str    the raster's CRS as WKT
    transform  tuple  the raster's affine transform (a, b, c, d, e, f), pixel -> map
    annotations list of:
        bbox [x0, y0, x1, y1], bbox_mode BoxMode.XYXY_ABS, category_id 0, iscrowd 0,
        segmentation  polygon list [[x0, y0, x1, y1, ...], ...] for footprints without holes;
                      COCO RLE (dict) for footprints with holes, which polygon lists cannot hold
                      (train with INPUT.MASK_FORMAT "bitmask": Detectron2 then decodes both)
        wkt_pix       the exact pixel footprint (holes kept), used for SpaceNet scoring

Labels: ``labels="csv"`` reads the release's summary CSV(s), whose pixel coordinates refer to
one product's grid (``SpaceNetVersion.csv_grid``: SpaceNet 2's 650x650 pan-sharpened grid,
SpaceNet 4's 900x900 one, SpaceNet 1's CSV per product); rasters of another size are reached by
scaling (e.g. 163/650 for SpaceNet 2's ``MUL``; the image is not resampled).
``labels="geojson"`` reprojects each image's GeoJSON to the raster CRS and maps it through the
raster's own inverse affine, which is exact for every product. ``None`` uses the release's
default (CSV for SpaceNet 2, GeoJSON for 1 and 4, whose archives ship GeoJSON).
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

from .georef import georeferencing_problem
from .labels import LabelError, RepairLog, clean_footprints, clip_to_tile, read_geojson_footprints, read_summary_csv
from .versions import SpaceNetVersion, get_version, infer_version

logger = logging.getLogger(__name__)

LABEL_SOURCES = ("csv", "geojson")


class RasterError(ValueError):
    """A GeoTIFF that cannot be used; the message names the file and the fix."""


def raster_header(path: Path) -> dict:
    """Open a GeoTIFF (a path, or a URL: named without its query string's token in errors),
    check it is georeferenced and complete; return its header fields."""
    from ..inference.sources import REMOTE_READ_HINT, is_remote, redact

    shown = redact(str(path))
    try:
        with rasterio.open(path) as src:
            problem = georeferencing_problem(src, shown)
            if problem:
                raise RasterError(problem)
            # Reading the last pixel touches the last block: a truncated file fails here.
            src.read(1, window=Window(src.width - 1, src.height - 1, 1, 1))
            return {"height": src.height, "width": src.width, "count": src.count,
                    "crs": src.crs, "transform": src.transform, "nodata": src.nodata,
                    "descriptions": src.descriptions}
    except RasterioIOError as exc:
        fix = REMOTE_READ_HINT if is_remote(str(path)) else \
            "it is truncated or corrupt: re-download or regenerate it"
        raise RasterError(f"{shown} cannot be read as a GeoTIFF ({redact(str(exc))}); "
                          f"{fix}") from None


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


def resolve_version(root: str | Path, version: str | SpaceNetVersion | None,
                    product: str | None = None) -> SpaceNetVersion:
    """``version`` as an entry; ``None``: inferred from what ``root`` holds."""
    if isinstance(version, SpaceNetVersion):
        return version
    if version is None:
        return infer_version(root, product)
    return get_version(version)


def label_source(version: SpaceNetVersion, labels: str | None) -> str:
    """``labels`` checked against LABEL_SOURCES; ``None``: the release's default."""
    labels = labels or version.labels
    if labels not in LABEL_SOURCES:
        raise ValueError(f"labels={labels!r} is not one of {LABEL_SOURCES}")
    return labels


def list_images(root: Path, product: str | None = None,
                version: str | SpaceNetVersion | None = None) -> dict[str, Path]:
    """{ImageId: GeoTIFF path} of one product; duplicates are an error."""
    root = Path(root)
    version = resolve_version(root, version, product)
    product = version.product(product).name
    paths = version.find_images(root, product)
    if not paths:
        raise FileNotFoundError(f"no {version.title} {product} images under {root} (looked for "
                                f"{root}/{version.image_glob(root, product)}; see "
                                "datasets/README.md)")
    images: dict[str, Path] = {}
    for path in paths:
        image_id = version.image_id_from_path(path)
        if image_id in images:
            raise ValueError(f"ImageId {image_id} appears twice under {root}: {images[image_id]} "
                             f"and {path}; keep one file per ImageId per product")
        images[image_id] = path
    return images


def _csv_labels(root: Path, version: SpaceNetVersion, product: str, image_ids) -> dict[str, list]:
    files = version.csv_label_files(root, product)
    if not files:
        raise FileNotFoundError(f"no summary CSV for {version.title} {product} under {root} "
                                f"(looked for {' or '.join(version.csv_patterns(root, product))}); "
                                "pass labels='geojson' to read the GeoJSON labels instead")
    labels: dict[str, list] = {}
    for path in files:
        for image_id, geoms in read_summary_csv(path).items():
            labels.setdefault(image_id, []).extend(geoms)
    missing = sorted(set(image_ids) - set(labels))
    if missing:
        where = files[0] if len(files) == 1 else f"{len(files)} CSVs under {files[0].parent}"
        raise LabelError(f"{len(missing)} image(s) have no row in {where} (e.g. {missing[0]}); "
                         "an image without buildings needs an 'ImageId,-1,POLYGON EMPTY,POLYGON "
                         "EMPTY' row. Fix the CSV or pass labels='geojson'")
    return labels


def load_spacenet_dicts(root: str | Path, product: str | None = None, labels: str | None = None,
                        image_ids: list[str] | None = None,
                        version: str | SpaceNetVersion | None = None) -> list[dict]:
    """Build the dataset dicts of one SpaceNet area folder (see the module docstring)."""
    root = Path(root)
    version = resolve_version(root, version, product)
    images = list_images(root, product, version)
    if image_ids is not None:
        images = {k: images[k] for k in image_ids if k in images}
    return dicts_of_images(root, images, version, product, labels)


def dicts_of_images(root: Path, images: dict[str, Path], version: SpaceNetVersion,
                    product: str | None = None, labels: str | None = None) -> list[dict]:
    """The dataset dicts of ``images`` ({ImageId: GeoTIFF}, as :func:`list_images` gives them,
    possibly filtered) of one area folder."""
    product = version.product(product)
    labels = label_source(version, labels)
    csv_labels = _csv_labels(root, version, product.name, images) if labels == "csv" else None
    repairs = RepairLog()
    band_mismatch = []
    projected: dict[tuple, list] = {}
    dicts = []
    for image_id, path in tqdm(images.items(), desc=f"loading {root.name}/{product.name}",
                               unit="img", disable=len(images) < 200):
        head = raster_header(path)
        h, w = head["height"], head["width"]
        crs, transform = head["crs"].to_wkt(), tuple(head["transform"])[:6]
        if head["count"] != product.bands:
            band_mismatch.append(path)
        if csv_labels is not None:
            footprints = clean_footprints(csv_labels[image_id], repairs)
            sx, sy = version.csv_scale(product.name, w, h)
            if (sx, sy) != (1.0, 1.0):
                footprints = [affinity.scale(f, sx, sy, origin=(0, 0)) for f in footprints]
            footprints = clip_to_tile(footprints, w, h, repairs)
        else:
            # SpaceNet 4's 27 views of a tile share one label file and, per product, one grid:
            # read and project it once per (file, grid). Repairs are counted once per file.
            label_file = version.geojson_label_file(root, image_id)
            key = (label_file, crs, transform, w, h)
            if key not in projected:
                projected[key] = read_geojson_footprints(label_file, head["crs"],
                                                         head["transform"], w, h, repairs)
            footprints = projected[key]
        dicts.append({
            "file_name": str(path), "image_id": image_id, "height": h, "width": w,
            "crs": crs, "transform": transform,
            "annotations": [make_annotation(f, h, w) for f in footprints],
        })
    if band_mismatch:
        logger.warning("%d %s file(s) do not have the %d bands %s describes (e.g. %s); "
                       "INPUT.BANDS decides which bands are read", len(band_mismatch),
                       product.name, product.bands, version.title, band_mismatch[0])
    repairs.report(f"{root}/{product.name} ({labels} labels)")
    return dicts


def register_spacenet_instances(name: str, root: str | Path, product: str | None = None,
                                labels: str | None = None, image_ids: list[str] | None = None,
                                version: str | None = None) -> None:
    """Register a SpaceNet area folder as Detectron2 dataset ``name`` (lazy: read on first use).

    ``version``: ``"spacenet1"``, ``"spacenet2"`` or ``"spacenet4"`` (:mod:`.versions`);
    ``None`` infers it from the folder (an error says so when the folder holds none or several
    layouts). ``product`` / ``labels``: ``None`` = the release's defaults.

    Metadata: thing_classes=["building"], evaluator_type="spacenet", version, group_by (how the
    evaluator groups images), headline (what its score is), aoi, product, num_bands, aoi_root,
    labels.
    """
    root = Path(root)
    entry = resolve_version(root, version, product)
    prod = entry.product(product)
    labels = label_source(entry, labels)
    DatasetCatalog.register(name, functools.partial(load_spacenet_dicts, root, prod.name,
                                                    labels, image_ids, entry.name))
    MetadataCatalog.get(name).set(**entry.metadata(prod.name), aoi=area_aoi(entry, root),
                                  aoi_root=str(root), labels=labels)


def area_aoi(version: SpaceNetVersion, root: Path) -> str:
    """The AOI of an area folder: a built-in area's, else the folder name up to ``_Train``."""
    for area in version.areas:
        if area.folder == root.name:
            return area.aoi
    return root.name.removesuffix("_Train")
