"""Online hard example mining in the MNC heads (MODEL.MNC.OHEM_CANDIDATES)."""

from __future__ import annotations

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from test_mnc_head import no_buildings, quick_cfg, toy_batch


def _model(**overrides):
    torch.manual_seed(0)
    model = build_model(quick_cfg(**overrides))
    model.train()
    return model


def _features_and_proposals(model, batch):
    images = model.preprocess_image(batch)
    features = model.backbone(images.tensor)
    targets = [x["instances"] for x in batch]
    proposals, _ = model.proposal_generator(images, features, targets)
    heads = model.roi_heads
    return [features[f] for f in heads.in_features], proposals, targets


def test_the_ranking_loss_is_the_training_loss_of_stages_2_3():
    """Summed over the RoIs, the per-RoI ranking loss is what the heads train on (3 stages, so
    that only the ranked losses exist; the quick config's heads have no normalisation layers,
    so eval and train mode compute alike)."""
    model = _model(**{"MODEL.MNC.NUM_STAGES": 3})
    batch = toy_batch()
    with EventStorage(0):
        feats, proposals, targets = _features_and_proposals(model, batch)
        heads = model.roi_heads
        sampled = heads.label_and_sample_proposals(proposals, targets)
        per_roi = heads.roi_losses(feats, sampled)
        losses = heads._forward_train(feats, sampled, targets)
    classes = torch.cat([p.gt_classes for p in sampled])
    num_rois = classes.numel()
    num_fg = int((classes < heads.num_classes).sum())
    assert 0 < num_fg < num_rois and per_roi.shape == (num_rois,)
    expected = (num_rois * (losses["loss_cls3"] + losses["loss_box3"])
                + num_fg * losses["loss_mask2"])
    assert float(per_roi.sum()) == pytest.approx(float(expected.detach()), rel=1e-4)


def test_mining_keeps_the_hardest_rois_in_the_samplers_counts(monkeypatch):
    model = _model(**{"MODEL.MNC.OHEM_CANDIDATES": 96})
    heads = model.roi_heads
    seen = {}
    original = type(heads)._mine

    def spy(self, feats, candidates):
        seen["candidates"] = candidates
        seen["losses"] = self.roi_losses(feats, candidates)
        seen["kept"] = original(self, feats, candidates)
        return seen["kept"]

    monkeypatch.setattr(type(heads), "_mine", spy)
    with EventStorage(0) as storage:
        losses = model(toy_batch())
        events = {k: v[0] for k, v in storage.latest().items()}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    k = heads.num_classes
    start = 0
    for cand, kept in zip(seen["candidates"], seen["kept"]):
        loss = seen["losses"][start: start + len(cand)]
        start += len(cand)
        assert len(cand) > heads.batch_size_per_image  # there was something to choose from
        assert len(kept) == heads.batch_size_per_image
        assert int((kept.gt_classes < k).sum()) <= heads.batch_size_per_image * \
            heads.positive_fraction
        # every kept RoI is at least as hard as every dropped one of its kind
        boxes = {tuple(b.tolist()) for b in kept.proposal_boxes.tensor}
        chosen = torch.tensor([tuple(b.tolist()) in boxes for b in cand.proposal_boxes.tensor])
        for fg in (True, False):
            kind = (cand.gt_classes < k) == fg
            if (kind & chosen).any() and (kind & ~chosen).any():
                assert loss[kind & chosen].min() >= loss[kind & ~chosen].max()
    assert events["mnc/ohem_loss_kept"] > events["mnc/ohem_loss_candidates"]


def test_an_image_without_buildings_trains_on_its_hardest_background():
    model = _model(**{"MODEL.MNC.OHEM_CANDIDATES": 96})
    batch = toy_batch()
    batch[1]["instances"] = no_buildings(batch[1]["instances"].image_size)
    with EventStorage(0):
        losses = model(batch)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


def test_too_few_candidates_are_refused_naming_both_keys():
    with pytest.raises(ValueError, match="OHEM_CANDIDATES=16.*BATCH_SIZE_PER_IMAGE=32"):
        build_model(quick_cfg(**{"MODEL.MNC.OHEM_CANDIDATES": 16}))


def test_inference_does_not_change():
    mined = _model(**{"MODEL.MNC.OHEM_CANDIDATES": 96})
    plain = _model()
    plain.load_state_dict(mined.state_dict())
    out = []
    for model in (mined, plain):
        model.eval()
        with torch.no_grad():
            out.append(model(toy_batch())[0]["instances"])
    assert torch.equal(out[0].pred_boxes.tensor, out[1].pred_boxes.tensor)
    assert torch.equal(out[0].scores, out[1].scores)
