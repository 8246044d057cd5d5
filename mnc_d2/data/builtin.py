"""Built-in SpaceNet 2 dataset names, registered on ``import mnc_d2``.

Root: ``$DETECTRON2_DATASETS/spacenet`` (default ``./datasets/spacenet``), holding the released
city folders ``AOI_2_Vegas_Train``, ``AOI_3_Paris_Train``, ``AOI_4_Shanghai_Train``,
``AOI_5_Khartoum_Train``. Names:

* ``spacenet2_{vegas,paris,shanghai,khartoum,all}_{train,val}``: RGB-PanSharpen (3 bands);
* the same with ``_8band``: MUL-PanSharpen (8 bands, 650x650).

Split (deterministic, independent of file order or of which other images exist): an image is in
``val`` when ``zlib.crc32(ImageId) % 5 == 0`` (about 20%), else in ``train``. The SpaceNet
``*_Test_public`` folders have no labels, so validation is carved from ``*_Train``.

A name whose folder is missing stays registered; using it raises ``FileNotFoundError`` naming the
path and the variable. ``..._all_...`` uses the cities present and logs the missing ones (it
fails only when none is present).
"""

from __future__ import annotations

import functools
import logging
import os
import zlib
from pathlib import Path

from detectron2.data import DatasetCatalog, MetadataCatalog

from .layout import CITIES, PRODUCTS
from .spacenet import list_images, load_spacenet_dicts

logger = logging.getLogger(__name__)

SPLITS = ("train", "val")
VARIANTS = {"": "RGB-PanSharpen", "_8band": "MUL-PanSharpen"}


def spacenet_root() -> Path:
    return Path(os.environ.get("DETECTRON2_DATASETS", "datasets")) / "spacenet"


def split_of(image_id: str) -> str:
    """The deterministic split of an ImageId (see module docstring)."""
    return "val" if zlib.crc32(image_id.encode("utf-8")) % 5 == 0 else "train"


def _city_dicts(aoi: str, product: str, split: str, root: Path | None = None) -> list[dict]:
    root = root or spacenet_root()
    aoi_root = root / f"{aoi}_Train"
    if not aoi_root.is_dir():
        raise FileNotFoundError(
            f"SpaceNet folder {aoi_root} does not exist. Point DETECTRON2_DATASETS at the folder "
            f"that holds spacenet/{aoi}_Train (now {os.environ.get('DETECTRON2_DATASETS', 'unset')}"
            "), or generate synthetic data: python datasets/prepare_synthetic_spacenet.py")
    ids = [i for i in list_images(aoi_root, product) if split_of(i) == split]
    return load_spacenet_dicts(aoi_root, product, "csv", image_ids=ids)


def _all_cities_dicts(product: str, split: str) -> list[dict]:
    root = spacenet_root()
    present = [aoi for aoi in CITIES.values() if (root / f"{aoi}_Train").is_dir()]
    if not present:
        return _city_dicts(next(iter(CITIES.values())), product, split, root)  # raises, clearly
    missing = sorted(set(CITIES.values()) - set(present))
    if missing:
        logger.warning("spacenet2_all: %s missing under %s; using %s", missing, root, present)
    return [d for aoi in present for d in _city_dicts(aoi, product, split, root)]


def register_builtin_spacenet() -> None:
    for suffix, product in VARIANTS.items():
        for split in SPLITS:
            for city, aoi in CITIES.items():
                name = f"spacenet2_{city}_{split}{suffix}"
                if name in DatasetCatalog.list():
                    continue
                DatasetCatalog.register(name, functools.partial(_city_dicts, aoi, product, split))
                MetadataCatalog.get(name).set(
                    thing_classes=["building"], evaluator_type="spacenet", aoi=aoi,
                    product=product, num_bands=PRODUCTS[product], split=split)
            name = f"spacenet2_all_{split}{suffix}"
            if name not in DatasetCatalog.list():
                DatasetCatalog.register(name, functools.partial(_all_cities_dicts, product, split))
                MetadataCatalog.get(name).set(
                    thing_classes=["building"], evaluator_type="spacenet", aoi="all",
                    product=product, num_bands=PRODUCTS[product], split=split)
