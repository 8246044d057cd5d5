"""Test-time augmentation for the MNC head: the candidates of every augmented pass voted together.

Detectron2's ``GeneralizedRCNNWithTTA`` merges each pass's box-head detections by NMS, then
re-runs the mask head on the merged boxes and averages the masks. MNC has no mask head to re-run
on given boxes (its masks come before its classifier, which scores each instance through its
mask), so here every pass runs the cascade up to its selection
(:meth:`~mnc_d2.modeling.mnc_roi_heads.MNCROIHeads.candidates`); each pass's candidates are
mapped back to the input's frame (boxes exactly; each M x M soft mask turned and flipped with its
box, which is exact for flips and quarter turns) and the pooled candidates of all passes go
through the head's own selection once: NMS, mask voting (now across passes) and NMS after
voting, as MNC pools its stage-3 and stage-5 candidates.

Scores. Pooling alone would give each building the best score any pass gave it, so a false
positive of one pass in eight would keep its full score. A kept building's score is instead the
mean over passes of each pass's best candidate of its class overlapping it (box IoU >=
``MODEL.MNC.MASK_VOTING_IOU`` with the kept, voted box; 0 for a pass without one), the way a
test-time augmented classifier averages its passes' probabilities; buildings whose mean falls
below ``MODEL.ROI_HEADS.SCORE_THRESH_TEST`` are dropped. (An approximation of averaging: the
matching uses boxes, not masks.) ``TEST.AUG.SCORE max`` keeps the pooled score instead (the best
candidate of any pass, as Detectron2's box TTA keeps the NMS winner's): a union of the passes,
for pass sets where one pass finds what the others cannot (two scales for buildings smaller than
the training city's), at the price of every pass's false positives.

Passes: each scale of ``TEST.AUG.MIN_SIZES`` (shortest side, capped by ``TEST.AUG.MAX_SIZE``,
of a whole tile: the input as the test loader resized it, scaled by that size over the test
size, so a tile smaller than a whole one keeps the scale of the rest, as the test resize of
:class:`mnc_d2.inference.eager.EagerModel` does; ``[]`` = the input as it comes), times
identity and horizontal flip (``TEST.AUG.FLIP``), times 0, 90, 180 and 270 degree turns
(``TEST.AUG.ROT90``). Rescaled inputs are resized from the loader's tensor
(bilinear, as Detectron2 resizes float images).
"""

from __future__ import annotations

import itertools
import logging

import torch
import torch.nn.functional as F
from detectron2.config import configurable, get_cfg
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, pairwise_iou
from torch import nn

from ..inference.input_size import scaled_shape

logger = logging.getLogger(__name__)


def undo_flip_turn(boxes: torch.Tensor, masks: torch.Tensor, flip: bool, turns: int,
                   size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Map candidates of an image that was flipped horizontally (if ``flip``) and then turned by
    ``torch.rot90(image, turns, dims=(-2, -1))`` back to the image before both.

    boxes: (N, 4) XYXY in the turned image's pixels; masks: (N, M, M) over each box (rows along
    y); size: (H, W) of the image before the flip and turns. Returns boxes (N, 4) and masks
    (N, M, M) in that image's frame."""
    h, w = size
    out_h = w if turns % 2 else h  # the turned image's height
    for _ in range(turns % 4):
        # one quarter turn back: out = rot90(image) puts the image's point (out_h - y, x) at the
        # point (x, y) of out (out's height is the image's width)
        x1, y1, x2, y2 = boxes.unbind(1)
        boxes = torch.stack([out_h - y2, x1, out_h - y1, x2], dim=1)
        masks = torch.rot90(masks, -1, dims=(-2, -1))
        out_h = h + w - out_h  # the image one turn back is the next step's out
    if flip:
        x1, y1, x2, y2 = boxes.unbind(1)
        boxes = torch.stack([w - x2, y1, w - x1, y2], dim=1)
        masks = masks.flip(-1)
    return boxes, masks


class MNCWithTTA(nn.Module):
    """A trained GeneralizedRCNN with the MNC head, run with test-time augmentation (module
    docstring). Called like the model in inference: a list of dicts with ``image`` (C, h, w)
    as the test loader gives it and the original ``height`` / ``width``; returns a list of
    ``{"instances": Instances}`` at the original size."""

    @configurable
    def __init__(self, model: nn.Module, *, min_sizes: tuple[int, ...], max_size: int,
                 flip: bool, rot90: bool, test_size: int, score: str = "mean"):
        super().__init__()
        model = getattr(model, "module", model)  # DistributedDataParallel's wrapped model
        if not hasattr(model.roi_heads, "candidates"):
            raise ValueError(f"TEST.AUG.ENABLED: test-time augmentation here needs the MNC "
                             f"head (MODEL.ROI_HEADS.NAME MNCROIHeads), not "
                             f"{type(model.roi_heads).__name__}")
        if any(int(s) <= 0 for s in min_sizes) or int(max_size) <= 0:
            raise ValueError(f"TEST.AUG.MIN_SIZES {list(min_sizes)} / MAX_SIZE {max_size}: "
                             "use positive pixel sizes ([] = the test size)")
        if score not in ("mean", "max"):
            raise ValueError(f"TEST.AUG.SCORE {score!r}: use 'mean' (the mean over passes) or "
                             "'max' (the best pass's score)")
        self.score = score
        self.model = model
        self.train(model.training)  # the model's mode (inference_on_dataset restores it)
        self.min_sizes = tuple(int(s) for s in min_sizes) or (None,)
        self.max_size = int(max_size)
        self.test_size = int(test_size)  # a whole tile's shorter side as the loader gives it
        self.flips = (False, True) if flip else (False,)
        self.turns = (0, 1, 2, 3) if rot90 else (0,)

    @classmethod
    def from_config(cls, cfg, model):
        aug = cfg.TEST.AUG
        return {"model": model, "min_sizes": tuple(aug.MIN_SIZES), "max_size": aug.MAX_SIZE,
                "flip": aug.FLIP, "rot90": aug.ROT90, "score": aug.SCORE,
                "test_size": min(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)}

    @property
    def num_passes(self) -> int:
        return len(self.min_sizes) * len(self.flips) * len(self.turns)

    def forward(self, batched_inputs: list[dict]) -> list[dict]:
        assert not self.training, "MNCWithTTA is for inference"
        with torch.no_grad():
            return [{"instances": self._one(x)} for x in batched_inputs]

    def _candidates(self, image: torch.Tensor) -> tuple:
        """One pass of the cascade on image (C, H, W): its candidates (:meth:`candidates`)."""
        model = self.model
        images = model.preprocess_image([{"image": image}])
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features, None)
        heads = model.roi_heads
        return heads.candidates([features[f] for f in heads.in_features], proposals)[0]

    def _one(self, item: dict):
        image = item["image"]
        h, w = image.shape[-2:]
        height, width = item.get("height", h), item.get("width", w)
        heads = self.model.roi_heads
        passes = []  # per pass: boxes (N, 4) in the input's frame, masks (N, M, M), probs (N, K)
        for size in self.min_sizes:
            sh, sw = (h, w) if size is None else scaled_shape(
                h, w, min(size, self.max_size) / self.test_size)
            scaled = image if (sh, sw) == (h, w) else F.interpolate(
                image[None].float(), size=(sh, sw), mode="bilinear", align_corners=False)[0]
            for flip, turns in itertools.product(self.flips, self.turns):
                x = scaled.flip(-1) if flip else scaled
                boxes, masks, probs = self._candidates(torch.rot90(x, turns, dims=(-2, -1)))
                boxes, masks = undo_flip_turn(boxes, masks, flip, turns, (sh, sw))
                scale = boxes.new_tensor([w / sw, h / sh, w / sw, h / sh])
                passes.append((boxes * scale, masks, probs))
        pooled = [torch.cat(col) for col in zip(*passes)]
        result = heads._select(*pooled, (h, w))
        # one pass: the plain model's output; SCORE max: the selection's winner's score
        if len(passes) > 1 and self.score == "mean":
            result = self._rescore(result, passes)
        return detector_postprocess(result, height, width)

    def _rescore(self, result, passes: list[tuple]):
        """Each kept instance's score: the mean over passes of the pass's best candidate of its
        class with box IoU >= MASK_VOTING_IOU (0 without one); below SCORE_THRESH_TEST dropped,
        the rest by decreasing score."""
        heads = self.model.roi_heads
        kept = result.pred_boxes
        total = torch.zeros(len(result), device=kept.tensor.device)
        for boxes, _, probs in passes:
            cand, cls = torch.nonzero(probs > heads.test_score_thresh, as_tuple=True)
            if not len(cand) or not len(result):
                continue
            iou = pairwise_iou(kept, Boxes(boxes[cand]))  # (D, C)
            hit = (iou >= heads.mask_voting_iou) & (result.pred_classes[:, None] == cls[None])
            total += torch.where(hit, probs[cand, cls][None], 0.0).max(dim=1).values
        result.scores = total / len(passes)
        keep = result.scores > heads.test_score_thresh
        result = result[keep]
        return result[result.scores.argsort(descending=True)]


def with_test_time_augmentation(cfg, model: nn.Module) -> nn.Module:
    """``model`` wrapped in :class:`MNCWithTTA` when ``TEST.AUG.ENABLED``, else ``model``.
    The passes are logged, with a warning when ``TEST.AUG.MIN_SIZES`` is Detectron2's own default
    (nine COCO sizes, 400-1200 px): the value a run's config.yaml keeps when it was written by
    an mnc_d2 without test-time augmentation (no ``TEST.AUG.ROT90`` in it), which multiplies the
    passes by nine and runs a 416 px model at up to 1,200 px."""
    if not cfg.TEST.AUG.ENABLED:
        return model
    tta = MNCWithTTA(cfg, model)
    sizes = [s or "the test size" for s in tta.min_sizes]
    logger.info("test-time augmentation: %d passes per image (shortest side %s, flips %s, "
                "quarter turns %s; score: %s over passes)", tta.num_passes, sizes,
                len(tta.flips), len(tta.turns), tta.score)
    if tuple(cfg.TEST.AUG.MIN_SIZES) == tuple(get_cfg().TEST.AUG.MIN_SIZES):
        logger.warning("TEST.AUG.MIN_SIZES %s is Detectron2's default for COCO, kept by a "
                       "config.yaml written before mnc_d2 had test-time augmentation; pass "
                       "TEST.AUG.MIN_SIZES \"()\" for the test size", list(tta.min_sizes))
    return tta
