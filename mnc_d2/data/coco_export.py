"""Export registered SpaceNet dataset dicts as COCO instance JSON (for interoperability)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import shapely
from tqdm import tqdm

from ..utils.atomic import atomic_write

logger = logging.getLogger(__name__)


def _segmentation(ann: dict, height: int, width: int, use_rle: bool):
    seg = ann["segmentation"]
    if isinstance(seg, dict) or not use_rle:
        return seg  # polygons stay polygons unless RLE is asked; holed footprints are RLE
    rles = mask_util.frPyObjects(seg, height, width)
    rle = mask_util.merge(rles)
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def image_file_name(file_name: str, image_root: str | Path | None = None) -> str:
    """An image's ``file_name`` for the JSON: absolute (readable from any working directory),
    or relative to ``image_root`` (COCO's usual layout: Detectron2's ``load_coco_json`` and
    most loaders join the two). A URL stays as it is."""
    if "://" in str(file_name):
        return str(file_name)
    path = os.path.abspath(file_name)
    return os.path.relpath(path, os.path.abspath(image_root)) if image_root else path


def to_coco(dataset_dicts: list[dict], use_rle: bool = False,
            image_root: str | Path | None = None) -> dict:
    """Detectron2 SpaceNet dicts -> a COCO instances dict (one category: building); image
    paths as :func:`image_file_name` writes them."""
    images, annotations = [], []
    for index, rec in enumerate(tqdm(dataset_dicts, desc="to COCO", unit="img")):
        images.append({"id": index + 1, "file_name": image_file_name(rec["file_name"], image_root),
                       "height": rec["height"],
                       "width": rec["width"], "spacenet_image_id": rec["image_id"]})
        for ann in rec.get("annotations", []):
            x0, y0, x1, y1 = ann["bbox"]
            geom = shapely.from_wkt(ann["wkt_pix"]) if ann.get("wkt_pix") else None
            area = float(geom.area) if geom is not None else float((x1 - x0) * (y1 - y0))
            annotations.append({
                "id": len(annotations) + 1, "image_id": index + 1, "category_id": 1,
                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": area, "iscrowd": 0,
                "segmentation": _segmentation(ann, rec["height"], rec["width"], use_rle),
            })
    return {"info": {"description": "SpaceNet buildings exported by mnc_d2"},
            "images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": "building", "supercategory": "building"}]}


def write_coco_json(dataset_dicts: list[dict], path: str | Path, use_rle: bool = False,
                    image_root: str | Path | None = None) -> dict:
    """Write :func:`to_coco` output atomically; returns the counts written."""
    coco = to_coco(dataset_dicts, use_rle, image_root)
    with atomic_write(path, "w") as f:
        json.dump(coco, f, default=lambda o: o.item() if isinstance(o, np.generic) else str(o))
    return {"images": len(coco["images"]), "annotations": len(coco["annotations"])}
