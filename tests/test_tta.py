"""Test-time augmentation (mnc_d2.modeling.tta): candidates mapped back exactly, one pass is the
plain model, the flips and turns of the square make the output turn with the image, bad
settings are clear errors."""

from __future__ import annotations

import itertools
import logging

import pytest
import torch
from detectron2.modeling import build_model

from mnc_d2.modeling.tta import MNCWithTTA, undo_flip_turn, with_test_time_augmentation

from test_mnc_head import quick_cfg, toy_batch


def _bbox_and_crop(image: torch.Tensor):
    ys, xs = torch.nonzero(image, as_tuple=True)
    y1, y2, x1, x2 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    return torch.tensor([[x1, y1, x2, y2]], dtype=torch.float32), image[None, y1:y2, x1:x2]


@pytest.mark.parametrize("flip,turns", list(itertools.product((False, True), range(4))))
def test_candidates_of_a_flipped_and_turned_image_map_back_exactly(flip, turns):
    """A non-square image with an asymmetric shape: the shape's box and its crop (the 'mask'
    over the box) found in the flipped and turned image come back as the original's."""
    image = torch.zeros(5, 8)
    image[1:4, 2:6] = torch.tensor([[1, 0, 0, 0.25], [1, 0, 0, 0], [1, 1, 1, 0.5]])
    box, crop = _bbox_and_crop(image)
    seen = torch.rot90(image.flip(-1) if flip else image, turns, dims=(-2, -1))
    back_box, back_crop = undo_flip_turn(*_bbox_and_crop(seen), flip, turns, (5, 8))
    assert torch.equal(back_box, box) and torch.equal(back_crop, crop)


def _model(**overrides):
    torch.manual_seed(0)
    cfg = quick_cfg(**{"MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.0, **overrides})
    return cfg, build_model(cfg).eval()


def _tta(cfg, model, **aug):
    cfg = cfg.clone()
    cfg.TEST.AUG.ENABLED = True
    cfg.TEST.AUG.MIN_SIZES = ()
    for key, value in aug.items():
        cfg.TEST.AUG[key] = value
    return with_test_time_augmentation(cfg, model)


def test_one_pass_is_the_plain_model():
    cfg, model = _model()
    image = toy_batch(size=96)[0]["image"]
    inputs = [{"image": image, "height": 96, "width": 96}]
    with torch.no_grad():
        plain = model(inputs)[0]["instances"]
    tta = _tta(cfg, model, FLIP=False, ROT90=False)
    assert isinstance(tta, MNCWithTTA) and tta.num_passes == 1
    once = tta(inputs)[0]["instances"]
    assert len(plain) > 0 and len(once) == len(plain)
    assert torch.equal(once.pred_boxes.tensor, plain.pred_boxes.tensor)
    assert torch.equal(once.scores, plain.scores)
    assert torch.equal(once.pred_masks, plain.pred_masks)
    assert with_test_time_augmentation(cfg, model) is model  # TEST.AUG.ENABLED False


def test_eight_flips_and_turns_turn_with_the_image():
    """With every flip and quarter turn of the square, a turned image's passes are the
    original's passes in another order: the buildings found turn with the image (equal up to
    float rounding in the voting sums)."""
    cfg, model = _model()
    tta = _tta(cfg, model, FLIP=True, ROT90=True)
    assert tta.num_passes == 8
    image = toy_batch(size=96)[0]["image"]
    a = tta([{"image": image, "height": 96, "width": 96}])[0]["instances"]
    b = tta([{"image": torch.rot90(image, 1, dims=(-2, -1)), "height": 96,
              "width": 96}])[0]["instances"]
    assert len(a) > 0 and len(a) == len(b)
    turned = torch.rot90(a.pred_masks, 1, dims=(-2, -1))
    assert torch.allclose(a.scores, b.scores, atol=1e-5)
    inter = (turned & b.pred_masks).flatten(1).sum(1).float()
    union = (turned | b.pred_masks).flatten(1).sum(1).float()
    assert bool((inter / union.clamp(min=1) > 0.95).all()), inter / union


def test_scales_and_scores_of_several_passes():
    """Two scales: boxes come back in the input's frame, scores are means over passes (so at
    most the best pass's), sorted, none below SCORE_THRESH_TEST."""
    cfg, model = _model(**{"MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.05})
    image = toy_batch(size=96)[0]["image"]
    tta = _tta(cfg, model, FLIP=False, MIN_SIZES=(96, 128), MAX_SIZE=1000)
    out = tta([{"image": image, "height": 96, "width": 96}])[0]["instances"]
    assert tta.num_passes == 2 and out.image_size == (96, 96)
    assert bool((out.scores > 0.05).all()) and bool((out.scores[:-1] >= out.scores[1:]).all())
    boxes = out.pred_boxes.tensor
    assert bool((boxes >= -1e-3).all() and (boxes <= 96 + 1e-3).all())


def test_max_score_keeps_each_building_at_its_best_pass():
    """TEST.AUG.SCORE max: the same selection as the mean, each kept building scored by its
    best candidate of any pass, so the mean's buildings are all there with scores as high or
    higher (higher where a pass missed it or scored it lower), and more may pass the threshold."""
    cfg, model = _model(**{"MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.05})
    image = toy_batch(size=96)[0]["image"]
    inputs = [{"image": image, "height": 96, "width": 96}]
    aug = {"FLIP": False, "MIN_SIZES": (96, 160), "MAX_SIZE": 1000}
    mean = _tta(cfg, model, **aug)(inputs)[0]["instances"]
    best = _tta(cfg, model, SCORE="max", **aug)(inputs)[0]["instances"]
    assert len(mean) > 0 and len(best) >= len(mean)
    boxes = best.pred_boxes.tensor
    higher = []
    for box, score in zip(mean.pred_boxes.tensor, mean.scores):
        same = (boxes - box).abs().amax(dim=1) < 1e-4
        assert int(same.sum()) == 1 and float(best.scores[same][0]) >= float(score) - 1e-6
        higher.append(float(best.scores[same][0]) > float(score) + 1e-4)
    assert any(higher)
    with pytest.raises(ValueError, match="TEST.AUG.SCORE 'median': use 'mean'"):
        _tta(cfg, model, SCORE="median", **aug)


def test_detectron2s_coco_sizes_are_warned_about(caplog):
    """A config.yaml from before test-time augmentation keeps Detectron2's nine COCO sizes:
    the wrapper runs them as asked but warns, naming the key and the fix; ours do not warn."""
    from detectron2.config import get_cfg

    cfg, model = _model()
    coco = tuple(get_cfg().TEST.AUG.MIN_SIZES)
    with caplog.at_level(logging.WARNING, logger="mnc_d2.modeling.tta"):
        assert _tta(cfg, model, FLIP=False).num_passes == 1
        assert not caplog.records
        assert _tta(cfg, model, FLIP=False, MIN_SIZES=coco).num_passes == len(coco) == 9
    assert len(caplog.records) == 1
    assert 'TEST.AUG.MIN_SIZES "()"' in caplog.records[0].getMessage()


def test_bad_settings_are_errors_naming_the_key():
    cfg, model = _model()
    with pytest.raises(ValueError, match=r"TEST.AUG.MIN_SIZES \[0\] / MAX_SIZE 1000"):
        _tta(cfg, model, MIN_SIZES=(0,), MAX_SIZE=1000)
    rcnn_cfg = quick_cfg("mask_rcnn_R_18_FPN_quick_synthetic.yaml")
    with pytest.raises(ValueError, match="needs the MNC head .* not StandardROIHeads"):
        _tta(rcnn_cfg, build_model(rcnn_cfg).eval())


def test_the_tools_run_it_and_the_export_refuses_it(tmp_path, monkeypatch):
    """predict.py's eager model and Trainer.test (train_net.py --eval-only, the evaluation
    during training) run the wrapper when TEST.AUG.ENABLED; an export (one pass per tile) is
    refused before anything is traced."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.engine import DefaultTrainer

    from mnc_d2.engine.trainer import Trainer
    from mnc_d2.export.bundle import ExportError
    from mnc_d2.export.exporter import export_model
    from mnc_d2.inference.eager import EagerModel

    cfg, model = _model()
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("random")
    cfg.MODEL.WEIGHTS = str(tmp_path / "random.pth")
    cfg.TEST.AUG.ENABLED, cfg.TEST.AUG.MIN_SIZES, cfg.TEST.AUG.ROT90 = True, (), True
    eager = EagerModel(cfg)
    assert isinstance(eager.model, MNCWithTTA) and eager.model.num_passes == 8
    image = toy_batch(size=96)[0]["image"].permute(1, 2, 0).numpy()
    (out,) = eager([image])
    assert out.image_size == (96, 96) and len(out) > 0
    seen = []
    monkeypatch.setattr(DefaultTrainer, "test",
                        classmethod(lambda cls, cfg, model, evaluators=None: seen.append(model)))
    Trainer.test(cfg, model)
    assert isinstance(seen[0], MNCWithTTA) and seen[0].model is model
    with pytest.raises(ExportError, match="TEST.AUG.ENABLED True: an exported graph runs one "
                                          "pass per tile"):
        export_model(cfg, tmp_path / "export")
    assert not (tmp_path / "export").exists()
