"""``SpaceNetDatasetMapper``: N-band GeoTIFF -> the model's input dict.

Reads the selected bands (1-based, ``INPUT.BANDS``; all bands when empty) with rasterio as
float32 (uint16 DNs are kept as values: normalisation happens in the model with
``MODEL.PIXEL_MEAN/STD``, one entry per band). Pixels equal to the file's nodata value are set to
the band's ``PIXEL_MEAN`` so they normalise to 0. Training applies remote-sensing augmentation:
resize (``INPUT.MIN_SIZE_TRAIN``), scale jitter, a random window (``INPUT.CROP``, after the
resize: training at native resolution on windows of a tile), horizontal and vertical flips,
90-degree rotations, radiometric jitter per band, buildings of other training images pasted in
(copy-paste) and roof recolouring of some buildings (``INPUT.AUGMENT.*``; copy-paste and then
the roofs come first, on the image as read, where the footprints are). Masks are built as
bitmasks, so footprints with holes (stored as RLE) train exactly.

Output dict: ``image`` (C, H, W) float32 tensor, ``height``/``width`` of the original raster,
``image_id``, ``file_name``, and when training ``instances`` (gt_boxes, gt_classes, gt_masks).
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from rasterio.windows import Window

from .bands import input_bands, read_bands
from .copy_paste import RandomCopyPaste, copy_paste_from_config
from .radiometry import dn_transform_from_config
from .roof_gain import RandomRoofGain, roof_gain_from_config
from .transforms import RandomBandPhotometric, RandomRot90, band_dropout_from_config

logger = logging.getLogger(__name__)


def check_band_config(cfg) -> int:
    """Check INPUT.BANDS and INPUT.DN_TRANSFORM against MODEL.PIXEL_MEAN/STD; return the band
    count they imply."""
    mean, std, bands = cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD, cfg.INPUT.BANDS
    if len(mean) != len(std):
        raise ValueError(f"MODEL.PIXEL_MEAN has {len(mean)} entries but MODEL.PIXEL_STD has "
                         f"{len(std)}; give one of each per input band")
    if bands and len(bands) != len(mean):
        raise ValueError(f"INPUT.BANDS has {len(bands)} entries ({list(bands)}) but "
                         f"MODEL.PIXEL_MEAN has {len(mean)}; give one mean/std per band")
    if any(int(b) < 1 for b in bands):
        raise ValueError(f"INPUT.BANDS={list(bands)}: band indices are 1-based")
    dn_transform_from_config(cfg)  # a known INPUT.DN_TRANSFORM, PIXEL_MEAN in its range
    return len(mean)


class SpaceNetDatasetMapper:
    """Map a SpaceNet dataset dict to model input (see the module docstring)."""

    @configurable
    def __init__(self, is_train: bool, *, augmentations: list, bands: list[int],
                 fill_values: list[float] | None = None, mask_format: str = "bitmask",
                 recompute_boxes: bool = False, roof_gain: RandomRoofGain | None = None,
                 copy_paste: RandomCopyPaste | None = None):
        self.is_train = is_train
        # pastes other training images' buildings, before the roofs (training only)
        self.copy_paste = copy_paste if is_train else None
        # recolours some buildings' roofs before the augmentations (training only)
        self.roof_gain = roof_gain if is_train else None
        # after a crop a building cut by the window gets the box of its visible part
        self.recompute_boxes = recompute_boxes
        self.augmentations = T.AugmentationList(augmentations)
        self.bands = [int(b) for b in bands]
        self.fill_values = fill_values
        self.read = _Reader(self.bands, fill_values)
        self.mask_format = mask_format
        mode = "training" if is_train else "inference"
        extra = [x for x in (self.copy_paste, self.roof_gain) if x is not None]
        logger.info("[SpaceNetDatasetMapper] %s: bands %s, augmentations %s%s", mode,
                    self.bands or "all", augmentations, "".join(f", {x}" for x in extra))

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        check_band_config(cfg)
        bands = input_bands(cfg)
        dn = dn_transform_from_config(cfg)
        # nodata is filled before INPUT.DN_TRANSFORM, with the DNs it maps to PIXEL_MEAN
        fill = dn.inverse(cfg.MODEL.PIXEL_MEAN)
        to_values = [] if dn.identity else [dn.augmentation()]
        if is_train:
            aug = cfg.INPUT.AUGMENT
            augs = [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN,
                                         cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING)]
            lo, hi = aug.SCALE_RANGE
            if (lo, hi) != (1.0, 1.0):
                size = max(cfg.INPUT.MIN_SIZE_TRAIN)
                augs.append(T.ResizeScale(lo, hi, size, size))
            if cfg.INPUT.CROP.ENABLED:
                # Unlike Detectron2's DatasetMapper (crop, then resize), the window is cut from
                # the resized image: with MIN_SIZE_TRAIN at the tiles' size the model trains on
                # native-resolution windows at the cost of a smaller input.
                augs.append(T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
            if aug.HFLIP_PROB > 0:
                augs.append(T.RandomFlip(prob=aug.HFLIP_PROB, horizontal=True, vertical=False))
            if aug.VFLIP_PROB > 0:
                augs.append(T.RandomFlip(prob=aug.VFLIP_PROB, horizontal=False, vertical=True))
            if aug.ROT90:
                augs.append(RandomRot90())
            ranges = {k: tuple(getattr(aug, k.upper())) for k in
                      ("brightness", "contrast", "gamma", "band_gain")}
            # the DN transform before the resize, as tools/predict.py applies it on read
            augs[:0] = to_values
            if any(r != (1.0, 1.0) for r in ranges.values()):
                # first, on the DNs as read: filled nodata still equals its fill there
                augs.insert(0, RandomBandPhotometric(**ranges, keep=fill))
            drop = band_dropout_from_config(cfg, bands)
            if drop is not None:  # last: the dropped bands stay exactly at PIXEL_MEAN
                augs.append(drop)
        else:
            augs = to_values + [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST,
                                                     cfg.INPUT.MAX_SIZE_TEST)]
        return {"is_train": is_train, "augmentations": augs, "bands": bands,
                "fill_values": fill, "mask_format": cfg.INPUT.MASK_FORMAT,
                "recompute_boxes": bool(is_train and cfg.INPUT.CROP.ENABLED),
                "roof_gain": roof_gain_from_config(cfg, fill) if is_train else None,
                "copy_paste": copy_paste_from_config(cfg, _Reader(bands, fill), fill)
                if is_train else None}

    def __call__(self, dataset_dict: dict) -> dict:
        dataset_dict = copy.deepcopy(dataset_dict)
        image = self.read(dataset_dict)
        if self.copy_paste is not None:
            image, annos = self.copy_paste(image, dataset_dict.get("annotations", []))
            dataset_dict["annotations"] = annos
        if self.roof_gain is not None:
            image = self.roof_gain(image, dataset_dict.get("annotations", []))
        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if not self.is_train:
            dataset_dict.pop("annotations", None)
            return dataset_dict
        shape = image.shape[:2]
        annos = [utils.transform_instance_annotations(obj, transforms, shape)
                 for obj in dataset_dict.pop("annotations", []) if not obj.get("iscrowd", 0)]
        instances = utils.annotations_to_instances(annos, shape, mask_format=self.mask_format)
        if self.recompute_boxes and instances.has("gt_masks"):  # none without annotations
            instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
        dataset_dict["instances"] = utils.filter_empty_instances(instances)
        return dataset_dict


class _Reader:
    """``reader(dataset_dict) -> (H, W, C) float32``: the selected bands of a dataset dict's
    image (its ``window`` of a scene when it has one; :mod:`.geo_dataset`), nodata filled. A
    class, not a closure, so the mapper pickles into data-loader workers."""

    def __init__(self, bands: list[int], fill_values: list[float] | None):
        self.bands, self.fill_values = bands, fill_values

    def __call__(self, dataset_dict: dict) -> np.ndarray:
        window = dataset_dict.get("window")
        image = read_bands(dataset_dict["file_name"], self.bands, self.fill_values,
                           Window(*window) if window is not None else None)
        if self.fill_values is not None and image.shape[2] != len(self.fill_values):
            raise ValueError(
                f"{dataset_dict['file_name']} gives {image.shape[2]} band(s) but "
                f"MODEL.PIXEL_MEAN has {len(self.fill_values)} entries; set INPUT.BANDS or "
                "MODEL.PIXEL_MEAN/STD to match")
        return image
