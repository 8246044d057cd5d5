"""Built-in SpaceNet dataset names, registered by :func:`mnc_d2.setup`, one set per release
entry of :mod:`.versions` (nothing here is release-specific).

Root: ``$DETECTRON2_DATASETS/spacenet`` (default ``./datasets/spacenet``), holding each release's
area folders (``Area.folder``). Names: ``<version>_<area>[_<subset>]_<split>[<variant>]``:

* ``spacenet1_rio_{train,val}`` (3band), ``..._8band``;
* ``spacenet2_{vegas,paris,shanghai,khartoum,all}_{train,val}`` (RGB-PanSharpen), ``..._8band``
  (MUL-PanSharpen); ``all`` joins the cities present (missing ones are logged);
* ``spacenet4_atlanta_{nadir,offnadir,veryoffnadir,all}_{train,val}`` (Pan-Sharpen): the
  collects of one nadir segment (<= 25, 26-40, > 40 degrees off nadir) or all 27.

Split (deterministic, independent of file order or of which other images exist): an image is in
``val`` when ``zlib.crc32(key) % 5 == 0`` (about 20%), else in ``train``; the key is the ImageId,
except for SpaceNet 4, where it is the tile (``{x}_{y}``), so the 27 views of a place never sit on
both sides of the split. The public test folders have no labels, so validation is carved from
the training folders.

A name whose folder is missing stays registered; using it raises ``FileNotFoundError`` naming the
path and the variable.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

from detectron2.data import DatasetCatalog, MetadataCatalog

from .versions import VERSIONS, SPACENET2, SpaceNetVersion, get_version

logger = logging.getLogger(__name__)
_MISSING_SAID: set[tuple] = set()  # the union datasets' missing-area warnings already logged

SPLITS = ("train", "val")


def spacenet_root() -> Path:
    return Path(os.environ.get("DETECTRON2_DATASETS", "datasets")) / "spacenet"


def split_of(image_id: str, version: str | SpaceNetVersion = SPACENET2) -> str:
    """The deterministic split of an ImageId (see module docstring)."""
    return (get_version(version) if isinstance(version, str) else version).split_of(image_id)


def builtin_name(version: SpaceNetVersion, area: str, subset: str, split: str,
                 variant: str) -> str:
    return "_".join(p for p in (version.name, area, subset, split) if p) + variant


def _area_dicts(version: str, area: str, subset: str, product: str, split: str,
                root: Path | None = None) -> list[dict]:
    from .spacenet import dicts_of_images, list_images

    entry = get_version(version)
    folder = (root or spacenet_root()) / entry.area(area).folder
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{entry.title} folder {folder} does not exist. Point DETECTRON2_DATASETS at the "
            f"folder that holds spacenet/{folder.name} (now "
            f"{os.environ.get('DETECTRON2_DATASETS', 'unset')}), or generate synthetic data: "
            f"python datasets/prepare_synthetic_spacenet.py --version {entry.name}")
    images = {i: path for i, path in list_images(folder, product, entry).items()
              if entry.split_of(i) == split and entry.in_subset(subset, i)}
    return dicts_of_images(folder, images, entry, product)


def _union_dicts(version: str, subset: str, product: str, split: str) -> list[dict]:
    entry = get_version(version)
    root = spacenet_root()
    present = [a.short for a in entry.areas if (root / a.folder).is_dir()]
    if not present:
        return _area_dicts(version, entry.areas[0].short, subset, product, split, root)  # raises
    missing = sorted(a.folder for a in entry.areas if a.short not in present)
    said = (version, entry.union_name, str(root), tuple(missing))
    if missing and said not in _MISSING_SAID:  # once per process, not at every dataset read
        _MISSING_SAID.add(said)
        logger.warning("%s_%s: %s missing under %s; using %s", version, entry.union_name,
                       missing, root, present)
    return [d for a in present for d in _area_dicts(version, a, subset, product, split, root)]


def _register(name: str, loader, entry: SpaceNetVersion, aoi: str, product: str,
              split: str) -> None:
    if name in DatasetCatalog.list():
        return
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(**entry.metadata(product), aoi=aoi, split=split)


def register_builtin_spacenet() -> None:
    for entry in VERSIONS.values():
        for variant, product in entry.variants.items():
            for split in SPLITS:
                for subset in entry.subsets:
                    for area in entry.areas:
                        _register(builtin_name(entry, area.short, subset, split, variant),
                                  functools.partial(_area_dicts, entry.name, area.short, subset,
                                                    product, split),
                                  entry, area.aoi, product, split)
                    if entry.union_name:
                        _register(builtin_name(entry, entry.union_name, subset, split, variant),
                                  functools.partial(_union_dicts, entry.name, subset, product,
                                                    split),
                                  entry, entry.union_name, product, split)
