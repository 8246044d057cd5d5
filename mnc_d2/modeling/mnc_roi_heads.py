"""``MNCROIHeads``: the Multi-task Network Cascade (Dai, He, Sun, CVPR 2016) as a Detectron2
ROI head, on Detectron2's backbone, FPN and RPN (stage 1).

Stages (5 by default, ``MODEL.MNC.NUM_STAGES: 3`` stops after stage 3):

2. class-agnostic mask regression on each RPN box B, from features warped by B (the paper's
   fully connected head, or with ``MODEL.MNC.MASK_HEAD: conv`` a fully convolutional one);
3. classification from the masked features (warped features x stage-2 soft mask, the paper's
   masking layer) together with the plain box features, plus class-specific box regression
   giving refined boxes B';
4. mask regression on B' (weights shared with stage 2 unless SHARE_STAGE_WEIGHTS is False);
5. masked classification on B' (shared with stage 3).

Training (choices of the paper and of its released code, and where we deviate):

* RoIs are sampled from RPN proposals with Detectron2's sampler (ROI_HEADS.BATCH_SIZE_PER_IMAGE,
  POSITIVE_FRACTION, IOU_THRESHOLDS; the paper samples 64 RoIs/image at 1:3, box IoU >= 0.5
  foreground). The same RoIs go through every stage. With MODEL.MNC.OHEM_CANDIDATES N > 0
  (online hard example mining; not in the original) the sampler draws N RoIs per image and the
  BATCH_SIZE_PER_IMAGE of them with the highest stage 2-3 loss (:meth:`MNCROIHeads.roi_losses`)
  are trained on, in the sampler's foreground/background counts.
* Mask targets: the matched ground-truth mask cropped to the RoI and resized to M x M (binary
  cross-entropy per pixel, foreground RoIs only), as in the paper.
* Classifier labels are mask-level, as in the paper: a box-foreground RoI stays foreground for
  the stage-3 (stage-5) classifier only if the stage-2 (stage-4) predicted mask has mask IoU >=
  MODEL.MNC.MASK_FG_IOU with its ground truth (``mask_iou_in_box``); MASK_FG_IOU 0 falls back to
  box labels. Deviation: the IoU is measured on the RoI's M x M grid with the ground truth's full
  area in the union, not on full-image masks.
* Masking layer (MASK_GRAD_FG_ONLY, default as the original's MaskLayer): the classifier's
  gradient reaches the soft mask it multiplied only for RoIs whose mask-level label is
  foreground; background and failed RoIs see a detached mask.
* Auxiliary losses of the original (weights MODEL.MNC.LOSS_WEIGHTS.*): a box-level classifier
  trained with box labels beside the mask-level one at stages 3 and 5 (CLS3_BOX, CLS5_BOX), and a
  stage-5 box regression on the shared box predictor (BOX5). At test time the original, and this
  head, score with the mask-level classifier only and refine boxes with stage 3's deltas only.
* Box regression (stage 3): Detectron2's Box2BoxTransform deltas, smooth L1, box-foreground RoIs.
* The RPN learns from its own losses only: Detectron2's proposals are detached (deviation: the
  original's proposal layer also passes the stage-2 RoIs' gradient to the RPN's box deltas).
* Stage 4/5 RoIs are the stage-3 refined boxes of the same sampled RoIs, re-matched to the ground
  truth by box IoU for their mask targets and labels (the original also appends the ground-truth
  boxes as extra stage-4 RoIs; we do not). With ``ROI_WARP: warp`` the stage-4/5 losses reach
  the stage-3 box deltas through the box coordinates (MODEL.MNC.BOX_GRAD, :mod:`.box_gradient`).
* Losses: loss_mask2, loss_cls3, loss_cls3_box, loss_box3, loss_mask4, loss_cls5, loss_cls5_box,
  loss_box5 (a weight of 0 removes the loss) plus Detectron2's RPN losses.

Inference (as MNC): up to RPN.POST_NMS_TOPK_TEST proposals; stage-3 instances (box B, stage-2
mask, stage-3 score) and stage-5 instances (box B', stage-4 mask, stage-5 score) above
ROI_HEADS.SCORE_THRESH_TEST are pooled, box-NMSed per class (ROI_HEADS.NMS_THRESH_TEST), capped
at TEST.DETECTIONS_PER_IMAGE, and each kept mask is replaced by mask
voting (``MASK_VOTING_SPACE``: in image space as the original, the box becoming the voted mask's
tight box, or inside the kept box). Image-space voting can move two kept boxes onto one
building, so NMS runs again on the voted boxes (``NMS_AFTER_VOTING``; the original does not).
TEST_NUM_STAGES 5 runs the 5-stage inference on a 3-stage
model. TEST_CASCADE_MIN_SCORE > 0 sends only the proposals whose stage-3 score reaches it on to
stages 4-5, TEST_CASCADE_TOPK > 0 only an image's K best by stage-3 score, TEST_CASCADE_NMS > 0
only those whose stage-3 refined box survives NMS at that IoU (inference shortcuts,
:func:`cascade_gate`; the original sends all). Output: Instances with pred_boxes,
scores, pred_classes and pred_masks (R, 1, M, M) soft masks that GeneralizedRCNN pastes at
image size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import batched_nms, cat
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, ROIHeads
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.utils.events import get_event_storage
from fvcore.nn import smooth_l1_loss
from torch import nn

from .box_gradient import GradientRatioProbe, clip_gradient
from .hard_mining_rpn import hardest_labels
from .mask_ops import mask_iou_in_box, mask_voting, mask_voting_image
from .mnc_heads import MaskedClassificationHead, build_mask_head
from .roi_warp import MultiLevelWarp, zero_link


def _mask_areas(masks) -> torch.Tensor:
    """Pixel areas of BitMasks (which have no area() in detectron2 0.6) or PolygonMasks."""
    if hasattr(masks, "area"):
        return masks.area().float()
    return masks.tensor.flatten(1).sum(dim=1).float()


def _gt_boxes(proposals: list[Instances]) -> torch.Tensor:
    """The matched ground-truth boxes of sampled proposals, (R, 4) over the images in order
    (zeros for an image without ground truth, whose proposals are all background)."""
    return cat([p.gt_boxes.tensor if p.has("gt_boxes")
                else p.proposal_boxes.tensor.new_zeros((len(p), 4)) for p in proposals])


def remap_threshold(probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """Monotone map of [0, 1] sending ``threshold`` to 0.5 (Detectron2 pastes masks at 0.5)."""
    if abs(threshold - 0.5) < 1e-9:
        return probs
    low = probs * (0.5 / threshold)
    high = 0.5 + (probs - threshold) * (0.5 / (1.0 - threshold))
    return torch.where(probs <= threshold, low, high)


_LOSS_KEYS = {"loss_mask2": "MASK2", "loss_cls3": "CLS3", "loss_cls3_box": "CLS3_BOX",
              "loss_box3": "BOX3", "loss_mask4": "MASK4", "loss_cls5": "CLS5",
              "loss_cls5_box": "CLS5_BOX", "loss_box5": "BOX5"}
_BOX_GRAD_MODES = ("delta", "coord", "none")
_VOTING_SPACES = ("image", "box")


def cascade_gate(best3: torch.Tensor, min_score: float, topk: int, boxes=None, classes=None,
                 nms_thresh: float = 0.0, nms=batched_nms) -> torch.Tensor:
    """Which proposals of one image go on to stages 4-5 (MODEL.MNC.TEST_CASCADE_MIN_SCORE,
    TEST_CASCADE_TOPK and TEST_CASCADE_NMS): best3 (R,) each proposal's best stage-3 foreground
    score -> (R,) bool.

    A proposal passes when its score reaches ``min_score`` (0 = no bound); with ``topk`` > 0,
    when it also reaches the image's ``topk``-th best score (every proposal when there are
    fewer; ties at that score all pass, so a few more than ``topk`` can); with ``nms_thresh`` >
    0, when its stage-3 refined box (``boxes`` (R, 4), of stage-3 class ``classes`` (R,))
    also survives per-class NMS at that box IoU among all the image's refined boxes, by stage-3
    score. ``nms(boxes, scores, classes, threshold)`` -> kept indices. Written without a branch
    on R, so that the exported graph (:mod:`mnc_d2.export.graph`) gates with this same function
    and its own NMS.
    """
    go = torch.ones_like(best3, dtype=torch.bool)
    if min_score > 0:
        go = go & (best3 >= min_score)
    if topk > 0:
        # the K-th best score, (1,) (the lowest when R < K: the slice clamps to R; (0,) when
        # R = 0, which compares with nothing)
        kth = best3.sort(descending=True).values[:topk][-1:]
        go = go & (best3 >= kth)
    if nms_thresh > 0:
        kept = nms(boxes, best3, classes, nms_thresh)  # (D,)
        rows = torch.arange(best3.shape[0], device=best3.device)
        go = go & (rows[:, None] == kept[None, :]).any(1)
    return go


@ROI_HEADS_REGISTRY.register()
class MNCROIHeads(ROIHeads):
    """The MNC cascade (see the module docstring)."""

    @configurable
    def __init__(self, *, in_features: list[str], warp: MultiLevelWarp,
                 mask_heads: list[nn.Module], cls_heads: list[nn.Module], num_stages: int,
                 box2box_transform: Box2BoxTransform, loss_weights: dict[str, float],
                 test_num_stages: int = 0, mask_fg_iou: float = 0.5,
                 mask_grad_fg_only: bool = True, box_grad: str = "delta",
                 box_grad_clip_base: float = 512.0, smooth_l1_beta: float = 0.0,
                 test_score_thresh: float = 0.05, test_nms_thresh: float = 0.3,
                 test_detections_per_img: int = 300, mask_voting: bool = True,
                 mask_voting_iou: float = 0.5, mask_voting_space: str = "image",
                 mask_threshold: float = 0.5, nms_after_voting: bool = True,
                 test_cascade_min_score: float = 0.0, test_cascade_topk: int = 0,
                 test_cascade_nms: float = 0.0,
                 ohem_candidates: int = 0, **kwargs):
        super().__init__(**kwargs)
        if num_stages not in (3, 5):
            raise ValueError(f"MODEL.MNC.NUM_STAGES={num_stages}: MNC has 3 or 5 stages")
        test_num_stages = test_num_stages or num_stages
        if test_num_stages not in (3, 5):
            raise ValueError(f"MODEL.MNC.TEST_NUM_STAGES={test_num_stages}: use 0, 3 or 5")
        if box_grad not in _BOX_GRAD_MODES:
            raise ValueError(f"MODEL.MNC.BOX_GRAD={box_grad!r}: use one of {_BOX_GRAD_MODES}")
        if mask_voting_space not in _VOTING_SPACES:
            raise ValueError(f"MODEL.MNC.MASK_VOTING_SPACE={mask_voting_space!r}: use one of "
                             f"{_VOTING_SPACES}")
        unknown = set(loss_weights) - set(_LOSS_KEYS)
        if unknown:
            raise ValueError(f"unknown MNC loss names {sorted(unknown)}; known: {list(_LOSS_KEYS)}")
        self.in_features = in_features
        self.warp = warp
        self.mask_heads = nn.ModuleList(mask_heads)
        self.cls_heads = nn.ModuleList(cls_heads)
        self.num_stages = num_stages
        self.test_num_stages = test_num_stages
        self.box2box_transform = box2box_transform
        self.loss_weights = loss_weights
        self.mask_fg_iou = mask_fg_iou
        self.mask_grad_fg_only = mask_grad_fg_only
        self.box_grad = box_grad
        self.box_grad_clip_base = box_grad_clip_base
        self.grad_probe = GradientRatioProbe()
        self.smooth_l1_beta = smooth_l1_beta
        self.test_score_thresh = test_score_thresh
        self.test_nms_thresh = test_nms_thresh
        self.test_detections_per_img = test_detections_per_img
        self.use_mask_voting = mask_voting
        self.mask_voting_iou = mask_voting_iou
        self.mask_voting_space = mask_voting_space
        self.mask_threshold = mask_threshold
        self.nms_after_voting = nms_after_voting
        if not 0.0 <= test_cascade_min_score <= 1.0:
            raise ValueError(f"MODEL.MNC.TEST_CASCADE_MIN_SCORE={test_cascade_min_score}: use a "
                             "score in [0, 1] (0 = every proposal goes on to stages 4-5)")
        self.test_cascade_min_score = test_cascade_min_score
        if test_cascade_topk < 0:
            raise ValueError(f"MODEL.MNC.TEST_CASCADE_TOPK={test_cascade_topk}: use a count >= 1 "
                             "(0 = every proposal goes on to stages 4-5)")
        self.test_cascade_topk = int(test_cascade_topk)
        if not 0.0 <= test_cascade_nms <= 1.0:
            raise ValueError(f"MODEL.MNC.TEST_CASCADE_NMS={test_cascade_nms}: use a box IoU in "
                             "[0, 1] (0 = no NMS before stages 4-5)")
        self.test_cascade_nms = test_cascade_nms
        if ohem_candidates and ohem_candidates <= self.batch_size_per_image:
            raise ValueError(f"MODEL.MNC.OHEM_CANDIDATES={ohem_candidates} must exceed "
                             f"MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE={self.batch_size_per_image} "
                             "(the RoIs it chooses among), or be 0 (no mining)")
        self.ohem_candidates = ohem_candidates

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg)
        mnc = cfg.MODEL.MNC
        in_features = list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
        channels = {input_shape[f].channels for f in in_features}
        if len(channels) != 1:
            raise ValueError(f"ROI_HEADS.IN_FEATURES {in_features} have different channel "
                             f"counts {channels}; MNC needs one (use FPN levels)")
        channels = channels.pop()
        scales = [1.0 / input_shape[f].stride for f in in_features]
        num_heads = 1 if mnc.SHARE_STAGE_WEIGHTS or mnc.NUM_STAGES == 3 else 2
        conv = {"num_conv": mnc.NUM_CONV, "conv_dim": mnc.CONV_DIM, "norm": mnc.NORM}
        w = mnc.LOSS_WEIGHTS
        weights = {name: float(w[key]) for name, key in _LOSS_KEYS.items()}
        # Which heads need a box-level classifier (no parameter may go unused under DDP).
        stage5_box = mnc.NUM_STAGES == 5 and weights["loss_cls5_box"] > 0
        box_classifier = [weights["loss_cls3_box"] > 0 or (stage5_box and num_heads == 1),
                          stage5_box][:num_heads]
        if mnc.TEST_NUM_STAGES == 5 and mnc.NUM_STAGES == 3 and not mnc.SHARE_STAGE_WEIGHTS:
            raise ValueError("MODEL.MNC.TEST_NUM_STAGES=5 on a 3-stage model reuses stages 2-3 "
                             "for 4-5: it needs MODEL.MNC.SHARE_STAGE_WEIGHTS True")
        ret.update(
            in_features=in_features,
            warp=MultiLevelWarp(mnc.WARP_SIZE, scales, mnc.ROI_WARP, mnc.SAMPLING_RATIO,
                                box_grad_clip=mnc.BOX_GRAD_CLIP if mnc.BOX_GRAD == "coord"
                                else 0.0),
            mask_heads=[build_mask_head(mnc.MASK_HEAD, channels, mnc.WARP_SIZE, mnc.MASK_SIZE,
                                        mnc.MASK_FC_DIM, mnc.MASK_NUM_CONV, mnc.MASK_CONV_DIM,
                                        **conv) for _ in range(num_heads)],
            cls_heads=[MaskedClassificationHead(channels, mnc.WARP_SIZE,
                                                cfg.MODEL.ROI_HEADS.NUM_CLASSES, mnc.FC_DIM,
                                                pool=mnc.CLS_POOL, box_classifier=box_cls,
                                                joint=mnc.CLS_JOINT, **conv)
                       for box_cls in box_classifier],
            num_stages=mnc.NUM_STAGES,
            test_num_stages=mnc.TEST_NUM_STAGES,
            box2box_transform=Box2BoxTransform(weights=cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS),
            loss_weights=weights,
            mask_fg_iou=mnc.MASK_FG_IOU,
            mask_grad_fg_only=mnc.MASK_GRAD_FG_ONLY,
            box_grad=mnc.BOX_GRAD,
            box_grad_clip_base=mnc.BOX_GRAD_CLIP_BASE,
            smooth_l1_beta=cfg.MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA,
            test_score_thresh=cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST,
            test_nms_thresh=cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST,
            test_detections_per_img=cfg.TEST.DETECTIONS_PER_IMAGE,
            mask_voting=mnc.MASK_VOTING,
            mask_voting_iou=mnc.MASK_VOTING_IOU,
            mask_voting_space=mnc.MASK_VOTING_SPACE,
            mask_threshold=mnc.MASK_THRESHOLD,
            nms_after_voting=mnc.NMS_AFTER_VOTING,
            test_cascade_min_score=mnc.TEST_CASCADE_MIN_SCORE,
            test_cascade_topk=mnc.TEST_CASCADE_TOPK,
            test_cascade_nms=mnc.TEST_CASCADE_NMS,
            ohem_candidates=mnc.OHEM_CANDIDATES,
        )
        return ret

    # --- shared pieces ------------------------------------------------------------------------

    def _stage_heads(self, second: bool) -> tuple[nn.Module, nn.Module]:
        index = 1 if second and len(self.mask_heads) > 1 else 0
        return self.mask_heads[index], self.cls_heads[index]

    def _run_pair(self, feats, boxes: list[torch.Tensor], second: bool):
        """Inference: one mask stage + one classification stage on ``boxes`` (per image (R_i, 4)).

        Returns mask logits (R, M, M), class logits (R, K+1), box deltas (R, 4K).
        """
        mask_head, cls_head = self._stage_heads(second)
        warped = self.warp(feats, boxes)
        mask_logits = mask_head(warped)
        cls_logits, deltas, _ = cls_head(warped, mask_logits.sigmoid())
        return mask_logits, cls_logits, deltas

    def _refine(self, boxes: list[torch.Tensor], deltas: torch.Tensor, classes: torch.Tensor,
                image_sizes) -> list[torch.Tensor]:
        """Stage-3 regression: boxes (per image (R_i, 4)) + deltas (R, 4K) of ``classes`` -> B'.

        In training, MODEL.MNC.BOX_GRAD decides what gradient flows back into the deltas.
        """
        rows = torch.arange(deltas.shape[0], device=deltas.device)
        picked = deltas.view(deltas.shape[0], -1, 4)[rows, classes]
        if self.training and self.box_grad == "none":
            picked = picked.detach()
        elif self.training and self.box_grad == "delta":
            picked = clip_gradient(self.grad_probe.tap(picked, "cascade"),
                                   1.0 / self.box_grad_clip_base, self.grad_probe)
        refined = self.box2box_transform.apply_deltas(picked, cat(boxes))
        out, start = [], 0
        for b, (h, w) in zip(boxes, image_sizes):
            r = refined[start: start + len(b)]
            start += len(b)
            x = r[:, 0::2].clamp(0, w)
            y = r[:, 1::2].clamp(0, h)
            out.append(torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1))
        return out

    def forward(self, images, features, proposals, targets=None):
        feats = [features[f] for f in self.in_features]
        if self.training:
            assert targets is not None, "MNCROIHeads needs targets in training"
            if self.ohem_candidates:
                proposals = self._mine(feats, self._sample_candidates(proposals, targets))
            else:
                proposals = self.label_and_sample_proposals(proposals, targets)
            return proposals, self._forward_train(feats, proposals, targets)
        return self._forward_test(feats, proposals), {}

    # --- training -----------------------------------------------------------------------------

    def _mask_targets_and_labels(self, mask_logits, rois, gt_masks, gt_classes, fg,
                                 name: str | None):
        """Mask targets of the foreground RoIs (R_fg, M, M) (None without any) and mask-level
        classifier labels (R,). mask_logits: (R, M, M); rois: (R, 4); ``name``: the event
        storage key of the mask-level foreground fraction (None: not recorded)."""
        m = mask_logits.shape[-1]
        labels = gt_classes.clone()
        if not fg.any():
            return None, labels
        targets = cat([g.crop_and_resize(r, m) for g, r in gt_masks]).to(mask_logits.dtype)
        if self.mask_fg_iou > 0:
            areas = cat([_mask_areas(g) for g, _ in gt_masks]).to(mask_logits.device)
            miou = mask_iou_in_box(mask_logits[fg].detach(), targets, rois[fg], areas)
            fg_idx = torch.nonzero(fg, as_tuple=True)[0]
            labels[fg_idx[miou < self.mask_fg_iou]] = self.num_classes
            if name is not None:
                get_event_storage().put_scalar(f"mnc/{name}_mask_fg_fraction",
                                               float((miou >= self.mask_fg_iou).float().mean()))
        return targets, labels

    def _mask_loss_and_labels(self, mask_logits, rois, gt_masks, gt_classes, fg, name):
        """BCE mask loss on foreground RoIs and mask-level classifier labels. rois: (R, 4)."""
        targets, labels = self._mask_targets_and_labels(mask_logits, rois, gt_masks, gt_classes,
                                                        fg, name)
        if targets is None:
            return zero_link(mask_logits), labels
        return F.binary_cross_entropy_with_logits(mask_logits[fg], targets,
                                                  reduction="mean"), labels

    def _train_pair(self, feats, boxes, gt_masks, gt_classes, second: bool, name: str):
        """Training: mask stage, mask-level labels, masking layer and classification stage.

        boxes: per image (R_i, 4); gt_masks: [(masks, boxes)] of the foreground RoIs per image;
        gt_classes: (R,) box-level labels (K = background, -1 = ignored). Returns mask logits
        (R, M, M), the mask loss, mask-level labels (R,), class logits (R, K+1), deltas (R, 4K)
        and box-level class logits (R, K+1) or None.
        """
        mask_head, cls_head = self._stage_heads(second)
        warped = self.warp(feats, boxes)
        mask_logits = mask_head(warped)
        fg = self._is_fg(gt_classes)
        rois = cat(boxes).detach()
        mask_loss, labels = self._mask_loss_and_labels(mask_logits, rois, gt_masks, gt_classes,
                                                       fg, name)
        probs = mask_logits.sigmoid()
        if self.mask_grad_fg_only:
            mask_fg = self._is_fg(labels)[:, None, None]
            probs = torch.where(mask_fg, probs, probs.detach())
        cls_logits, deltas, box_logits = cls_head(warped, probs)
        return mask_logits, mask_loss, labels, cls_logits, deltas, box_logits

    def _cls_losses(self, losses, stage: int, cls_logits, labels, box_logits, box_labels):
        losses[f"loss_cls{stage}"] = F.cross_entropy(cls_logits, labels, ignore_index=-1)
        if box_logits is not None and self.loss_weights[f"loss_cls{stage}_box"] > 0:
            losses[f"loss_cls{stage}_box"] = F.cross_entropy(box_logits, box_labels,
                                                             ignore_index=-1)

    def _forward_train(self, feats, proposals: list[Instances], targets: list[Instances]):
        boxes = [p.proposal_boxes.tensor for p in proposals]
        gt_classes = cat([p.gt_classes for p in proposals])
        fg = self._is_fg(gt_classes)
        masks = self._proposal_fg_masks(proposals)
        losses = {}
        _, losses["loss_mask2"], labels3, cls3, deltas3, box3 = self._train_pair(
            feats, boxes, masks, gt_classes, second=False, name="stage3")
        self._cls_losses(losses, 3, cls3, labels3, box3, gt_classes)
        losses["loss_box3"] = self._box_loss(deltas3, cat(boxes), _gt_boxes(proposals), gt_classes,
                                             probe=self.box_grad == "delta")
        if self.num_stages == 5:
            classes = torch.where(fg, gt_classes, cls3[:, : self.num_classes].argmax(1))
            refined = self._refine(boxes, deltas3, classes, [p.image_size for p in proposals])
            stage4 = self._match(refined, targets)
            classes4 = cat([c for c, _, _ in stage4])
            masks4 = self._fg_masks([m for _, m, _ in stage4], [c for c, _, _ in stage4],
                                    [r.detach() for r in refined])
            _, losses["loss_mask4"], labels5, cls5, deltas5, box5 = self._train_pair(
                feats, refined, masks4, classes4, second=True, name="stage5")
            self._cls_losses(losses, 5, cls5, labels5, box5, classes4)
            if self.loss_weights["loss_box5"] > 0:
                losses["loss_box5"] = self._box_loss(deltas5, cat(refined).detach(),
                                                     cat([b for _, _, b in stage4]), classes4)
        return {k: v * self.loss_weights[k] for k, v in losses.items()}

    # --- online hard example mining (MODEL.MNC.OHEM_CANDIDATES) -----------------------------

    def _sample_candidates(self, proposals: list[Instances], targets: list[Instances]):
        """Detectron2's labelling and sampling, OHEM_CANDIDATES RoIs per image instead of
        BATCH_SIZE_PER_IMAGE (same positive fraction). Its roi_head/num_*_samples events count
        the candidates; ``mnc/ohem_*`` record what :meth:`_mine` keeps."""
        batch = self.batch_size_per_image
        self.batch_size_per_image = self.ohem_candidates
        try:
            return self.label_and_sample_proposals(proposals, targets)
        finally:
            self.batch_size_per_image = batch

    @torch.no_grad()
    def roi_losses(self, feats, proposals: list[Instances]) -> torch.Tensor:
        """Each sampled RoI's stage 2-3 training loss under the current weights, (R,) over the
        images' RoIs in order, ranking the RoIs for hard example mining: LOSS_WEIGHTS.MASK2 x the
        mean per-pixel cross-entropy of its stage-2 mask (foreground RoIs) + CLS3 x the
        cross-entropy of its stage-3 mask-level label + BOX3 x the smooth L1 of its stage-3
        deltas (foreground RoIs). Named approximations: stages 4-5 do not enter the ranking, and
        the heads run in eval mode (with MODEL.MNC.NORM BN, on running statistics), so that the
        ranking pass leaves no trace in the model.

        feats: per level (N, C, H_l, W_l); proposals: per image Instances with proposal_boxes,
        gt_classes (K = background) and, where foreground, gt_boxes and gt_masks.
        """
        boxes = [p.proposal_boxes.tensor for p in proposals]
        gt_classes = cat([p.gt_classes for p in proposals])
        fg = self._is_fg(gt_classes)
        rois = cat(boxes)
        mask_head, cls_head = self._stage_heads(second=False)
        modes = [(m, m.training) for m in (mask_head, cls_head)]
        try:
            for m, _ in modes:
                m.train(False)
            warped = self.warp(feats, boxes)
            mask_logits = mask_head(warped)
            targets, labels = self._mask_targets_and_labels(
                mask_logits, rois, self._proposal_fg_masks(proposals), gt_classes, fg, None)
            cls_logits, deltas, _ = cls_head(warped, mask_logits.sigmoid())
        finally:
            for m, mode in modes:
                m.train(mode)
        w = self.loss_weights
        loss = w["loss_cls3"] * F.cross_entropy(cls_logits, labels, reduction="none")
        if targets is not None:
            mask = F.binary_cross_entropy_with_logits(mask_logits[fg], targets,
                                                      reduction="none").mean(dim=(1, 2))
            rows, picked, box_targets = self._fg_deltas(deltas, rois, _gt_boxes(proposals),
                                                        gt_classes)
            box = smooth_l1_loss(picked, box_targets, self.smooth_l1_beta,
                                 reduction="none").sum(dim=1)
            loss = loss.index_add(0, rows, w["loss_mask2"] * mask + w["loss_box3"] * box)
        return loss

    def _mine(self, feats, proposals: list[Instances]) -> list[Instances]:
        """Of each image's candidate RoIs, the BATCH_SIZE_PER_IMAGE with the highest
        :meth:`roi_losses`: at most POSITIVE_FRACTION of them foreground (the hardest), the rest
        background (the hardest), as Detectron2's sampler counts them. Records the kept RoIs'
        foreground fraction and mean ranking loss against all candidates' (``mnc/ohem_*``)."""
        losses = self.roi_losses(feats, proposals)
        out, kept_loss, num_fg = [], [], 0
        for p, loss in zip(proposals, losses.split([len(p) for p in proposals])):
            c = p.gt_classes
            fg = self._is_fg(c)
            labels = torch.where(fg, torch.ones_like(c), torch.where(
                c == self.num_classes, torch.zeros_like(c), torch.full_like(c, -1)))
            keep = torch.nonzero(hardest_labels(labels, loss, self.batch_size_per_image,
                                                self.positive_fraction) >= 0, as_tuple=True)[0]
            out.append(p[keep])
            kept_loss.append(loss[keep])
            num_fg += int(fg[keep].sum())
        kept_loss = cat(kept_loss)
        storage = get_event_storage()
        storage.put_scalar("mnc/ohem_fg_fraction", num_fg / max(kept_loss.numel(), 1))
        if losses.numel():
            storage.put_scalar("mnc/ohem_loss_kept", float(kept_loss.mean()))
            storage.put_scalar("mnc/ohem_loss_candidates", float(losses.mean()))
        return out

    def _is_fg(self, classes: torch.Tensor) -> torch.Tensor:
        """(R,) bool: which of the (R,) class labels are foreground (-1 = ignored, K =
        background)."""
        return (classes >= 0) & (classes < self.num_classes)

    def _fg_deltas(self, deltas, rois, gt_boxes, gt_classes):
        """The foreground RoIs' rows (R_fg,), the deltas predicted for their class (R_fg, 4) and
        their regression targets (R_fg, 4). deltas: (R, 4K); rois, gt_boxes: (R, 4); gt_classes:
        (R,)."""
        fg = self._is_fg(gt_classes)
        rows = torch.nonzero(fg, as_tuple=True)[0]
        picked = deltas.view(deltas.shape[0], -1, 4)[rows, gt_classes[fg]]
        return rows, picked, self.box2box_transform.get_deltas(rois[fg], gt_boxes[fg])

    def _proposal_fg_masks(self, proposals: list[Instances]):
        """:meth:`_fg_masks` of sampled proposals (their gt_masks, gt_classes and boxes)."""
        return self._fg_masks([p.get("gt_masks") if p.has("gt_masks") else None
                               for p in proposals], [p.gt_classes for p in proposals],
                              [p.proposal_boxes.tensor for p in proposals])

    def _fg_masks(self, gt_masks, gt_classes, boxes):
        """[(ground-truth masks of the foreground RoIs, their boxes)] per image with any."""
        out = []
        for masks, classes, b in zip(gt_masks, gt_classes, boxes):
            fg = self._is_fg(classes)
            if masks is not None and fg.any():
                out.append((masks[fg], b[fg]))
        return out

    def _box_loss(self, deltas, rois, gt_boxes, gt_classes, probe: bool = False):
        """Smooth-L1 box loss on foreground RoIs, normalised by all RoIs (Detectron2's rule).

        deltas: (R, 4K); rois, gt_boxes: (R, 4) (rows of background RoIs are unused);
        gt_classes: (R,). ``probe``: record this loss's gradient on the deltas for
        ``mnc/box_grad_ratio``.
        """
        if not self._is_fg(gt_classes).any():
            return zero_link(deltas)
        _, picked, targets = self._fg_deltas(deltas, rois, gt_boxes, gt_classes)
        if probe:
            picked = self.grad_probe.tap(picked, "box_loss")
        loss = smooth_l1_loss(picked, targets, self.smooth_l1_beta, reduction="sum")
        return loss / max(gt_classes.numel(), 1)

    @torch.no_grad()
    def _match(self, boxes: list[torch.Tensor], targets: list[Instances]):
        """Match refined boxes (no re-sampling) to the ground truth by box IoU.

        Returns per image (gt_classes (R_i,), gt masks of the matches or None without GT,
        matched gt boxes (R_i, 4), zeros without GT).
        """
        out = []
        for b, t in zip(boxes, targets):
            if len(t) == 0:
                out.append((torch.full((len(b),), self.num_classes, dtype=torch.long,
                                       device=b.device), None, torch.zeros_like(b)))
                continue
            idx, labels = self.proposal_matcher(pairwise_iou(t.gt_boxes, Boxes(b.detach())))
            classes = t.gt_classes[idx].clone()
            classes[labels == 0] = self.num_classes
            classes[labels == -1] = -1
            out.append((classes, t.gt_masks[idx], t.gt_boxes.tensor[idx]))
        return out

    # --- inference ----------------------------------------------------------------------------

    @torch.no_grad()
    def _forward_test(self, feats, proposals: list[Instances]) -> list[Instances]:
        return [self._select(*cands, p.image_size)
                for cands, p in zip(self.candidates(feats, proposals), proposals)]

    def candidates(self, feats, proposals: list[Instances]) -> list[tuple]:
        """Inference up to the selection: per image the pooled stage-3 (and stage-5) candidates,
        boxes (N, 4) in the image's input frame, soft masks (N, M, M) and foreground class
        probabilities (N, K), for :meth:`select` (test-time augmentation pools several passes'
        candidates before selecting). ``feats``: the ROI_HEADS.IN_FEATURES maps."""
        boxes = [p.proposal_boxes.tensor for p in proposals]
        sizes = [p.image_size for p in proposals]
        mask2, cls3, deltas3 = self._run_pair(feats, boxes, second=False)
        probs3 = F.softmax(cls3, dim=1)
        stages = [(boxes, mask2, probs3)]
        if self.test_num_stages == 5:
            fg3 = probs3[:, : self.num_classes]
            refined = self._refine(boxes, deltas3, fg3.argmax(1), sizes)
            if self.cascade_gated:
                # only some proposals go on to stages 4-5 (inference shortcuts; the original
                # runs them all)
                counts = [len(b) for b in boxes]
                best, cls = (t.split(counts) for t in fg3.max(1))
                refined = [r[self.cascade_go(s, r, c)] for r, s, c in zip(refined, best, cls)]
            mask4, cls5, _ = self._run_pair(feats, refined, second=True)
            stages.append((refined, mask4, F.softmax(cls5, dim=1)))
        results = []
        starts = [0] * len(stages)
        for i in range(len(sizes)):
            parts = []
            for k, (stage_boxes, masks, probs) in enumerate(stages):
                n = len(stage_boxes[i])
                parts.append((stage_boxes[i], masks[starts[k]: starts[k] + n].sigmoid(),
                              probs[starts[k]: starts[k] + n, : self.num_classes]))
                starts[k] += n
            results.append(tuple(cat(list(col)) for col in zip(*parts)))
        return results

    @property
    def cascade_gated(self) -> bool:
        """Whether an inference shortcut (TEST_CASCADE_MIN_SCORE, _TOPK or _NMS) gates which
        proposals go on to stages 4-5."""
        return (self.test_cascade_min_score > 0 or self.test_cascade_topk > 0
                or self.test_cascade_nms > 0)

    def cascade_go(self, best3, boxes, classes, nms=batched_nms) -> torch.Tensor:
        """:func:`cascade_gate` of one image with this head's shortcut settings (the eager head
        and the exported graph, which passes an NMS without a branch on the number of boxes):
        best3 (R,), boxes (R, 4) stage-3 refined boxes, classes (R,) -> (R,) bool."""
        return cascade_gate(best3, self.test_cascade_min_score, self.test_cascade_topk, boxes,
                            classes, self.test_cascade_nms, nms)

    def select(self, boxes, masks, probs, nms=batched_nms):
        """Score filter, per-class NMS, top-K, mask voting (all classes in one batch, each
        kept instance voted by its own class's candidates) and NMS after voting, for one image.
        The eager head and the exported graph (:mod:`mnc_d2.export.graph`, which passes an NMS
        without a branch on the number of boxes) both select with it.

        boxes: (N, 4), masks: (N, M, M) probabilities, probs: (N, K) class probabilities;
        nms(boxes, scores, classes, threshold) -> kept indices by decreasing score. Returns boxes
        (D, 4), scores (D,), classes (D,) and soft masks (D, M, M) with MASK_THRESHOLD at 0.5.
        """
        cand, cls = torch.nonzero(probs > self.test_score_thresh, as_tuple=True)
        scores = probs[cand, cls]
        cand_boxes, cand_masks = boxes[cand], masks[cand]
        keep = nms(cand_boxes, scores, cls, self.test_nms_thresh)[: self.test_detections_per_img]
        out_boxes, voted = cand_boxes[keep], cand_masks[keep]
        if self.use_mask_voting and self.mask_voting_space == "image":
            voted, out_boxes = mask_voting_image(keep, cand_boxes, cand_masks, scores,
                                                 self.mask_voting_iou, self.mask_threshold,
                                                 classes=cls)
            if self.nms_after_voting:
                # Voting moved the boxes: keep one instance per building
                # (MODEL.MNC.NMS_AFTER_VOTING); back to score order after NMS.
                rows = nms(out_boxes, scores[keep], cls[keep], self.test_nms_thresh).sort().values
                keep, voted, out_boxes = keep[rows], voted[rows], out_boxes[rows]
        elif self.use_mask_voting:
            voted = mask_voting(keep, cand_boxes, cand_masks, scores, self.mask_voting_iou,
                                classes=cls)
        return out_boxes, scores[keep], cls[keep], remap_threshold(voted, self.mask_threshold)

    def _select(self, boxes, masks, probs, image_size) -> Instances:
        """:meth:`select` as Detectron2 ``Instances`` of one image of ``image_size``."""
        out_boxes, scores, classes, masks = self.select(boxes, masks, probs)
        result = Instances(image_size)
        result.pred_boxes = Boxes(out_boxes)
        result.scores = scores
        result.pred_classes = classes
        result.pred_masks = masks[:, None]
        return result
