"""An RPN whose training anchors are chosen by their loss: online hard example mining.

Detectron2's :class:`~detectron2.modeling.proposal_generator.RPN` trains on
``MODEL.RPN.BATCH_SIZE_PER_IMAGE`` anchors per image drawn at random, at most
``POSITIVE_FRACTION`` of them positive. Random draws spend the batch on what the RPN already
gets right: most positives are anchors on large, bright buildings, most negatives plain ground.
:class:`HardMiningRPN` (``MODEL.PROPOSAL_GENERATOR.NAME: "HardMiningRPN"``) keeps the same
counts but takes, per image, the positives and the negatives with the highest loss under the
current predictions (online hard example mining, Shrivastava, Gupta and Girshick, CVPR 2016,
applied here to the RPN's anchors instead of the detector's RoIs). The loss that ranks them is
the training loss itself: objectness binary cross-entropy, plus for positives the box regression
loss (``MODEL.RPN.BBOX_REG_LOSS_TYPE``; smooth L1 or L1 as ``SMOOTH_L1_BETA`` says).

Named approximations: ranking is by each anchor's own loss, with no non-maximum suppression among
the chosen anchors (the OHEM paper suppresses overlapping RoIs before ranking; neighbouring
anchors of one hard region can fill the batch together); with ``MODEL.RPN.BBOX_REG_LOSS_TYPE``
other than smooth L1 the box part of the ranking is dropped (objectness only). Not in the
original MNC, whose RPN samples anchors at random like Detectron2's.

Inference is Detectron2's RPN unchanged: a model trained with it is exported and run as any other.
"""

from __future__ import annotations

from typing import Dict, List

import torch
import torch.nn.functional as F
from detectron2.layers import cat
from detectron2.modeling.proposal_generator import PROPOSAL_GENERATOR_REGISTRY, RPN
from detectron2.structures import Boxes
from fvcore.nn import smooth_l1_loss


def hardest_labels(labels: torch.Tensor, losses: torch.Tensor, batch_size: int,
                   positive_fraction: float) -> torch.Tensor:
    """Keep the hardest anchors of one image, in the counts random sampling would keep.

    labels: (A,) 1 positive, 0 negative, -1 ignored; losses: (A,) each anchor's loss.
    Returns (A,) labels with at most ``int(batch_size * positive_fraction)`` positives (the
    highest-loss ones) and negatives (the highest-loss ones) filling up to ``batch_size``;
    every other anchor -1. Ties keep the lower anchor index first (stable order).
    """
    if labels.shape != losses.shape:
        raise ValueError(f"labels {tuple(labels.shape)} and losses {tuple(losses.shape)} must "
                         "have one entry per anchor")
    out = torch.full_like(labels, -1)
    positive = torch.nonzero(labels == 1, as_tuple=True)[0]
    negative = torch.nonzero(labels == 0, as_tuple=True)[0]
    num_pos = min(positive.numel(), int(batch_size * positive_fraction))
    num_neg = min(negative.numel(), batch_size - num_pos)
    for idx, count, value in ((positive, num_pos, 1), (negative, num_neg, 0)):
        if count > 0:
            order = torch.argsort(losses[idx], descending=True, stable=True)[:count]
            out[idx[order]] = value
    return out


@PROPOSAL_GENERATOR_REGISTRY.register()
class HardMiningRPN(RPN):
    """Detectron2's RPN trained on the hardest anchors of each image (module docstring).

    Same constructor, config keys and outputs as :class:`RPN`; only which labelled anchors enter
    the loss differs.
    """

    def _subsample_labels(self, label: torch.Tensor) -> torch.Tensor:
        """Keep every labelled anchor here: :meth:`losses` chooses among them by loss, once the
        predictions are known. label: (A,)."""
        return label

    @torch.no_grad()
    def anchor_losses(self, anchors: List[Boxes], pred_objectness_logits: List[torch.Tensor],
                      gt_labels: torch.Tensor, pred_anchor_deltas: List[torch.Tensor],
                      gt_boxes: List[torch.Tensor]) -> torch.Tensor:
        """Each anchor's training loss under the current predictions, (N, A): objectness binary
        cross-entropy against its label (ignored anchors: 0), plus for positives the smooth L1
        box loss on the deltas (L1 when ``smooth_l1_beta`` is 0).

        pred_objectness_logits: per level (N, A_l); gt_labels: (N, A); pred_anchor_deltas: per
        level (N, A_l, 4); gt_boxes: per image (A, 4).
        """
        logits = cat(pred_objectness_logits, dim=1)
        target = gt_labels.clamp(min=0).to(logits.dtype)
        loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        loss = torch.where(gt_labels >= 0, loss, torch.zeros_like(loss))
        if self.box_reg_loss_type == "smooth_l1":
            anchors_all = Boxes.cat(anchors).tensor
            deltas = cat(pred_anchor_deltas, dim=1)  # (N, A, 4)
            targets = torch.stack([self.box2box_transform.get_deltas(anchors_all, boxes)
                                   for boxes in gt_boxes])
            box = smooth_l1_loss(deltas, targets, self.smooth_l1_beta, reduction="none")
            loss = loss + torch.where(gt_labels == 1, box.sum(-1), torch.zeros_like(loss))
        return loss

    def losses(self, anchors: List[Boxes], pred_objectness_logits: List[torch.Tensor],
               gt_labels: List[torch.Tensor], pred_anchor_deltas: List[torch.Tensor],
               gt_boxes: List[torch.Tensor]) -> Dict[str, torch.Tensor]:
        """:meth:`RPN.losses` on the hardest ``BATCH_SIZE_PER_IMAGE`` anchors of each image
        (same normaliser, same loss terms). gt_labels: per image (A,) with every labelled anchor
        kept (:meth:`_subsample_labels`)."""
        stacked = torch.stack(gt_labels)
        per_anchor = self.anchor_losses(anchors, pred_objectness_logits, stacked,
                                        pred_anchor_deltas, gt_boxes)
        mined = [hardest_labels(labels, loss, self.batch_size_per_image, self.positive_fraction)
                 for labels, loss in zip(stacked, per_anchor)]
        return super().losses(anchors, pred_objectness_logits, mined, pred_anchor_deltas,
                              gt_boxes)
