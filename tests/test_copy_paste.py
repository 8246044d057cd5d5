"""Copy-paste augmentation: pixels and labels agree, nothing overlaps, holes and nodata kept,
the mapper wires it for training only, bad settings named."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from pycocotools import mask as mask_util

import mnc_d2
from mnc_d2.data import SpaceNetDatasetMapper, load_spacenet_dicts
from mnc_d2.data.copy_paste import RandomCopyPaste
from mnc_d2.data.roof_gain import footprint_mask
from mnc_d2.synthetic.spacenet2 import generate_city

H = W = 120


def _square(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _donor(value=100.0, segmentation=None, bands=3):
    """A donor tile: zeros with one building of ``value`` in every band."""
    seg = segmentation if segmentation is not None else _square(10, 10, 30, 20)
    image = np.zeros((H, W, bands), dtype=np.float32)
    image[footprint_mask(seg, H, W)] = value
    record = {"file_name": "donor.tif", "annotations": [
        {"segmentation": seg, "category_id": 0, "iscrowd": 0}]}
    return record, image


def _paster(record, image, **kw):
    kw = {"prob": 1.0, "object_prob": 1.0, "scale_range": (1.0, 1.0), "gap": 2, **kw}
    return RandomCopyPaste([record], lambda d: image, **kw)


def _pasted_masks(annos):
    return [mask_util.decode(a["segmentation"]).astype(bool) for a in annos
            if a.get("copy_pasted")]


def test_pasted_pixels_are_the_pasted_label_and_nothing_else_changes():
    record, donor = _donor()
    target = np.full((H, W, 3), 7.0, dtype=np.float32)
    own = {"segmentation": _square(40, 40, 90, 90), "category_id": 0, "iscrowd": 0}
    paste = _paster(record, donor)
    for seed in range(20):
        out, annos = paste(target, [own], rng=np.random.RandomState(seed))
        (mask,) = _pasted_masks(annos)
        assert mask.sum() == 200  # the 20 x 10 footprint, unscaled
        assert np.all(out[mask] == 100.0) and np.all(out[~mask] == 7.0)
        assert np.all(target == 7.0)  # the input is not written
        # no overlap with the tile's own building, nor within twice the 2 px margin
        grown = footprint_mask(_square(36, 36, 94, 94), H, W)
        assert not (mask & grown).any()
        x, y, w, h = annos[-1]["bbox"]
        ys, xs = np.nonzero(mask)
        assert (x, y, w, h) == (xs.min(), ys.min(), 20, 10)
        assert annos[0] is own and len(annos) == 2


def test_scale_holes_and_nodata():
    # a courtyard (RLE with a hole) halved: a quarter of the area, the hole kept
    outer = footprint_mask(_square(10, 10, 50, 50), H, W)
    ring = outer & ~footprint_mask(_square(20, 20, 40, 40), H, W)
    rle = mask_util.encode(np.asfortranarray(ring.astype(np.uint8)))
    record, donor = _donor(segmentation=rle)
    target = np.zeros((H, W, 3), dtype=np.float32)
    out, annos = _paster(record, donor, scale_range=(0.5, 0.5))(
        target, [], rng=np.random.RandomState(0))
    (mask,) = _pasted_masks(annos)
    assert mask.sum() == pytest.approx(ring.sum() / 4, rel=0.1)
    ys, xs = np.nonzero(mask)
    box = np.zeros_like(mask)
    box[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = True
    hole = box & ~mask
    assert hole.sum() == pytest.approx(400 / 4, rel=0.2)  # 20 x 20 halved
    assert np.all(out[hole] == 0.0) and np.all(out[mask] == 100.0)
    # donor pixels equal to the nodata fill are not pasted
    record, donor = _donor()
    donor[10:20, 10:15] = 5.0
    out, annos = _paster(record, donor, keep=[5.0, 5.0, 5.0])(
        np.zeros((H, W, 3), np.float32), [], rng=np.random.RandomState(0))
    (mask,) = _pasted_masks(annos)
    assert mask.sum() == 150 and not np.any(out == 5.0)


def test_nothing_pasted_where_there_is_no_room_or_no_draw():
    record, donor = _donor()
    target = np.ones((H, W, 3), dtype=np.float32)
    full = {"segmentation": _square(0, 0, W, H), "category_id": 0, "iscrowd": 0}
    out, annos = _paster(record, donor)(target, [full], rng=np.random.RandomState(0))
    assert out is target and annos == [full]
    out, annos = _paster(record, donor, prob=0.01)(target, [], rng=np.random.RandomState(0))
    assert out is target and annos == []
    # several buildings of one donor never overlap one another either
    segs = [_square(5 + 25 * i, 5, 25 + 25 * i, 25) for i in range(4)]
    many = {"file_name": "d", "annotations": [
        {"segmentation": s, "category_id": 0, "iscrowd": 0} for s in segs]}
    image = np.zeros((H, W, 3), np.float32)
    for s in segs:
        image[footprint_mask(s, H, W)] = 50.0
    for seed in range(10):
        _, annos = _paster(many, image)(np.zeros((H, W, 3), np.float32), [],
                                        rng=np.random.RandomState(seed))
        masks = _pasted_masks(annos)
        assert len(masks) >= 2
        assert np.sum(masks, axis=0).max() == 1


@pytest.mark.parametrize("kw, key", [({"prob": 0.0}, "COPY_PASTE.PROB"),
                                     ({"object_prob": 1.5}, "OBJECT_PROB"),
                                     ({"max_objects": 0}, "MAX_OBJECTS"),
                                     ({"scale_range": (2.0, 1.0)}, "SCALE_RANGE"),
                                     ({"gap": -1}, "GAP")])
def test_bad_settings_are_named(kw, key):
    record, donor = _donor()
    with pytest.raises(ValueError, match=key):
        _paster(record, donor, **kw)


def test_the_mapper_pastes_training_images_only(tmp_path):
    root = tmp_path / "spacenet"
    generate_city(root, "vegas", 3, seed=5, progress=False)
    dicts = load_spacenet_dicts(root / "AOI_2_Vegas_Train")
    DatasetCatalog.register("_t_copy_paste", lambda: dicts)
    try:
        cfg = get_cfg()
        mnc_d2.add_mnc_config(cfg)
        cfg.INPUT.MASK_FORMAT = "bitmask"
        cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD = [0.0] * 3, [1.0] * 3
        cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (650,), 650
        cfg.DATASETS.TRAIN = ("_t_copy_paste",)
        cfg.INPUT.AUGMENT.COPY_PASTE.PROB = 1.0
        cfg.INPUT.AUGMENT.COPY_PASTE.OBJECT_PROB = 1.0
        rec = next(d for d in dicts if d["annotations"])
        np.random.seed(0)
        # pickled as data-loader workers started by spawn receive it
        out = pickle.loads(pickle.dumps(SpaceNetDatasetMapper(cfg, is_train=True)))(rec)
        assert len(out["instances"]) > len(rec["annotations"])
        assert SpaceNetDatasetMapper(cfg, is_train=False).copy_paste is None
        cfg.INPUT.MASK_FORMAT = "polygon"
        with pytest.raises(ValueError, match="MASK_FORMAT bitmask"):
            SpaceNetDatasetMapper(cfg, is_train=True)
    finally:
        DatasetCatalog.remove("_t_copy_paste")
