"""The hard-mining RPN: which anchors it trains on, and that inference is Detectron2's RPN."""

from __future__ import annotations

import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from mnc_d2.modeling.hard_mining_rpn import HardMiningRPN, hardest_labels

from test_mnc_head import no_buildings, quick_cfg, toy_batch


def test_hardest_labels_keeps_the_highest_loss_anchors_in_random_sampling_counts():
    labels = torch.tensor([1, 1, 1, 0, 0, 0, 0, -1, 1, 0])
    losses = torch.tensor([0.1, 0.9, 0.5, 0.2, 0.8, 0.05, 0.3, 9.0, 0.7, 0.6])
    # batch 4, at most half positive: the two hardest positives (1, 8), two hardest negatives
    out = hardest_labels(labels, losses, batch_size=4, positive_fraction=0.5)
    assert out.tolist() == [-1, 1, -1, -1, 0, -1, -1, -1, 1, 0]
    # few positives: negatives fill the batch; an ignored anchor is never chosen
    out = hardest_labels(torch.tensor([1, 0, 0, 0, -1]), torch.tensor([0.0, 1, 3, 2, 9]),
                         batch_size=3, positive_fraction=0.5)
    assert out.tolist() == [1, -1, 0, 0, -1]
    # equal losses: the lower anchor index first
    out = hardest_labels(torch.zeros(4, dtype=torch.long), torch.ones(4), 2, 0.5)
    assert out.tolist() == [0, 0, -1, -1]


def _rpn_losses(name: str, state=None):
    torch.manual_seed(0)
    model = build_model(quick_cfg(**{"MODEL.PROPOSAL_GENERATOR.NAME": name,
                                     "MODEL.RPN.BATCH_SIZE_PER_IMAGE": 64}))
    if state is not None:
        model.load_state_dict(state)
    model.train()
    batch = toy_batch()
    images = model.preprocess_image(batch)
    targets = [x["instances"] for x in batch]
    with EventStorage(0):
        _, losses = model.proposal_generator(images, model.backbone(images.tensor), targets)
    return model, losses


def test_mined_anchors_carry_more_loss_than_random_ones_and_the_ranking_is_the_loss():
    hard, mined = _rpn_losses("HardMiningRPN")
    assert isinstance(hard.proposal_generator, HardMiningRPN)
    _, random = _rpn_losses("RPN", hard.state_dict())
    total = {k: float(sum(v.values()).detach()) for k, v in (("hard", mined), ("random", random))}
    # same counts, same normaliser: the hardest anchors' loss is at least a random draw's
    assert total["hard"] > total["random"] * 1.05, total
    assert all(torch.isfinite(v) for v in mined.values())
    sum(mined.values()).backward()
    grads = [p.grad for p in hard.proposal_generator.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_anchor_losses_sum_to_detectron2s_rpn_loss_on_the_mined_anchors(monkeypatch):
    """The per-anchor loss that ranks anchors is the loss the RPN then trains on."""
    seen = {}
    original = HardMiningRPN.anchor_losses

    def spy(self, anchors, logits, labels, deltas, boxes):
        per_anchor = original(self, anchors, logits, labels, deltas, boxes)
        mined = torch.stack([hardest_labels(lab, loss, self.batch_size_per_image,
                                            self.positive_fraction)
                             for lab, loss in zip(labels, per_anchor)])
        seen["sum"] = float(per_anchor[mined >= 0].sum()) / (self.batch_size_per_image *
                                                             len(labels))
        return per_anchor

    monkeypatch.setattr(HardMiningRPN, "anchor_losses", spy)
    _, losses = _rpn_losses("HardMiningRPN")
    assert abs(seen["sum"] - float(sum(losses.values()))) < 1e-4 * seen["sum"]


def test_inference_is_detectron2s_rpn():
    torch.manual_seed(0)
    hard = build_model(quick_cfg(**{"MODEL.PROPOSAL_GENERATOR.NAME": "HardMiningRPN"}))
    plain = build_model(quick_cfg())
    plain.load_state_dict(hard.state_dict())
    out = []
    for model in (hard, plain):
        model.eval()
        with torch.no_grad():
            images = model.preprocess_image(toy_batch())
            proposals, _ = model.proposal_generator(images, model.backbone(images.tensor))
        out.append(proposals[0].proposal_boxes.tensor)
    assert len(out[0]) > 0 and torch.equal(out[0], out[1])


def test_an_image_without_buildings_trains_on_its_hardest_negatives():
    torch.manual_seed(0)
    model = build_model(quick_cfg(**{"MODEL.PROPOSAL_GENERATOR.NAME": "HardMiningRPN"}))
    model.train()
    batch = toy_batch()
    batch[1]["instances"] = no_buildings(batch[1]["instances"].image_size)
    with EventStorage(0) as storage:
        losses = model(batch)
        negatives = storage.latest()["rpn/num_neg_anchors"][0]  # per image, mean
        positives = storage.latest()["rpn/num_pos_anchors"][0]
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    # both images fill their 256 anchors: image 1 with negatives only
    assert 0 < positives < 128 and (negatives + positives) * 2 == 512
