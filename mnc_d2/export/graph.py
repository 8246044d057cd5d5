"""The trained MNC model as one traceable graph (``tools/export_model.py``).

:class:`MNCExportGraph` wraps a built Detectron2 ``GeneralizedRCNN`` with ``MNCROIHeads`` and runs
the whole inference of one tile with tensor operations only (no Python branch that depends on
the data, no ``Instances``), so that ``torch.jit.trace`` and the ONNX exporter record it
faithfully:

    tile (1, C, H, W; band values after INPUT.DN_TRANSFORM) -> resize (INPUT.MIN/MAX_SIZE_TEST,
    by the factor of an INPUT.TRAIN_TILE_SIZE tile) -> (x - PIXEL_MEAN) / PIXEL_STD -> pad to
    the backbone's size divisibility -> backbone + FPN
    -> RPN (Detectron2's own proposal selection) -> MNC stages 2-5 -> score filter, per-class
    NMS, top-K -> mask voting (class-aware, all classes at once) -> NMS after voting -> boxes in
    tile pixels, scores, classes, soft masks on their boxes (R, M, M) with MASK_THRESHOLD mapped
    to 0.5.

:class:`MaskRCNNExportGraph` does the same for Detectron2's standard Mask R-CNN (the
benchmark's baseline), with the same inputs and outputs.

Pasting the masks into the tile (and thresholding them) is left to the named post-processing
step :func:`mnc_d2.export.runtime.paste_masks`, which needs no deep-learning runtime: a dense
in-graph paste would hold (R, H, W, 2) sampling grids.

Differences from the eager model, named: the RoI warps of a stage pair run as one grid sampling
of every box on the FPN levels stacked into one map (built once per tile; the eager head warps
each level's boxes alone): the same values up to float rounding of the sample positions
(``warp_layout="levels"`` keeps the level-by-level form, each level warping one extra dummy box
that is dropped, to measure the difference; ``warp_layout="roialign"`` takes the same samples
with RoIAlign on the stacked map with a zero border, heads in box order, a form some runtimes
run faster), and the classification heads (without
convolutions) mask and pool the warps in the grid sampling's own channel-major layout before
putting them in box order (the same values; fewer values transposed); the RPN takes a top-k of
each level's scores where Detectron2 sorts them all, and decodes only the anchors it keeps (the
same proposals; equal scores may be ordered differently); the graph has the fixed input size it
was exported at.

Each part of a graph runs as its own submodule (:class:`GraphPart`, names in :data:`PARTS`), so
the exported operators' names begin with the part they belong to (``/rpn/TopK``,
``/stages_2_3/mask_heads.0/fc/Gemm``): what lets a runtime's profile be summed by part
(``bench/bench_export.py --parts stage_time``). The computation is the same with or without
them.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
import torchvision
from detectron2.layers import batched_nms
from detectron2.modeling.poolers import assign_boxes_to_levels
from detectron2.modeling.roi_heads import StandardROIHeads
from detectron2.structures import Boxes
from torch import nn

from ..inference.input_size import resized_shape, scaled_shape
from ..modeling.mnc_roi_heads import MNCROIHeads
from ..modeling.roi_warp import (border_stacked, level_sizes, stack_levels, warp_image,
                                  warp_stacked, warp_stacked_roialign)


logger = logging.getLogger(__name__)

# The parts of the exported graphs, in the order they run (the backbone is the model's own
# ``backbone`` module): MNC's stages 2-3 and 4-5, or Mask R-CNN's box and mask heads.
PARTS = {"mnc": ("preprocess", "backbone", "rpn", "stages_2_3", "stages_4_5", "selection",
                 "output"),
         "mask_rcnn": ("preprocess", "backbone", "rpn", "box_head", "selection", "mask_head",
                       "output")}


class GraphPart(nn.Module):
    """One part of an export graph: calls ``fn`` (a method of the graph) under its own module
    scope, which the ONNX exporter writes into its operators' names. No parameters."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def class_nms(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor,
              threshold: float, span: float) -> torch.Tensor:
    """Per-class NMS with no branch on the number of boxes (torchvision's ``batched_nms`` returns
    early on empty input, which tracing would freeze): boxes of class c are shifted by c x
    ``span`` (> any coordinate) so classes never overlap. boxes (N, 4), scores (N,), classes (N,)
    -> kept indices, by decreasing score."""
    shift = classes.to(boxes.dtype)[:, None] * span
    return torchvision.ops.nms(boxes + shift, scores, threshold)


def _rois(boxes: torch.Tensor) -> torch.Tensor:
    """(B, 4) boxes of the one image -> (B, 5) rows (batch index 0, x0, y0, x1, y1)."""
    return torch.cat([torch.zeros_like(boxes[:, :1]), boxes], dim=1)


def pool_by_level(feats: list[torch.Tensor], boxes: torch.Tensor, levels: torch.Tensor,
                  pool) -> torch.Tensor:
    """RoI features from FPN levels for a traced graph: each level pools only its own boxes
    plus one dummy box (so no level is ever empty, which a trace cannot branch on), and one
    gather picks the real rows of all levels' outputs in box order (no per-level slicing, and
    no scatter, which is slow in ONNX runtimes).

    feats: per level (1, C, H_l, W_l); boxes: (B, 4); levels: (B,) level index of each box;
    pool(level, feature, boxes (b, 4)) -> (b, C, S, S). Returns (B, C, S, S).
    """
    dummy = boxes.new_tensor([[0.0, 0.0, 1.0, 1.0]])
    parts, order, real = [], [], []
    for level, feat in enumerate(feats):
        idx = torch.nonzero(levels == level, as_tuple=True)[0]
        parts.append(pool(level, feat, torch.cat([boxes[idx], dummy])))
        order.append(idx)
        real.append(torch.cat([torch.ones_like(idx), idx.new_zeros(1)]))
    # rows of the concatenated outputs that are real boxes, in level order; then box order
    rows = torch.nonzero(torch.cat(real), as_tuple=True)[0]
    return torch.cat(parts)[rows[torch.argsort(torch.cat(order))]]


class MNCExportGraph(nn.Module):
    """One tile through the whole model (module docstring).

    forward(image (1, C, H, W) float32 raw band values at the exported tile size) ->
    boxes (R, 4) tile pixels, scores (R,), classes (R,) int64, masks (R, M, M) float32.
    ``factor``: what the tile is resized by (:func:`mnc_d2.inference.input_size.tile_scale`);
    None: to ``short`` / ``longest`` as Detectron2 resizes an image.
    """

    HEADS = MNCROIHeads
    WARP_LAYOUTS = ("stacked", "levels", "roialign")

    def __init__(self, model: nn.Module, tile_height: int, tile_width: int, short: int,
                 longest: int, factor: float | None = None, warp_layout: str = "stacked"):
        super().__init__()
        if warp_layout not in self.WARP_LAYOUTS:
            raise ValueError(f"warp_layout={warp_layout!r}: choose from {self.WARP_LAYOUTS}")
        heads = model.roi_heads
        if not isinstance(heads, self.HEADS):
            raise ValueError(f"{type(self).__name__} needs MODEL.ROI_HEADS.NAME "
                             f"{self.HEADS.__name__}, got {type(heads).__name__}")
        warp = getattr(heads, "warp", None)
        if warp is not None and warp.mode != "warp" and warp_layout != "levels":
            # MODEL.MNC.ROI_WARP roialign: the model's own RoIAlign, level by level; the layout
            # recorded is the one the graph has
            logger.info("MODEL.MNC.ROI_WARP %s: the graph warps with the model's own %s level "
                        "by level (warp_layout %r does not apply)", warp.mode, warp.mode,
                        warp_layout)
            warp_layout = "levels"
        self.warp_layout = warp_layout
        if model.proposal_generator is None:
            raise ValueError("export needs the model's RPN (MODEL.PROPOSAL_GENERATOR)")
        self.model = model
        self.tile = (int(tile_height), int(tile_width))
        self.resized = (scaled_shape(tile_height, tile_width, factor) if factor
                        else resized_shape(tile_height, tile_width, short, longest))
        div = model.backbone.size_divisibility or 1
        self.padded = tuple(-(-s // div) * div for s in self.resized)
        self.register_buffer("mean", model.pixel_mean.detach().clone().reshape(1, -1, 1, 1))
        self.register_buffer("std", model.pixel_std.detach().clone().reshape(1, -1, 1, 1))
        self.preprocess = GraphPart(self._preprocess)
        self.rpn = GraphPart(self._proposals)
        self.output = GraphPart(self._to_tile)
        self._add_parts()

    def _add_parts(self) -> None:
        self.stages_2_3 = GraphPart(self._stages_2_3)
        self.stages_4_5 = GraphPart(self._stages_4_5)
        self.selection = GraphPart(self._select)

    # --- pieces ---------------------------------------------------------------------------

    def _preprocess(self, image: torch.Tensor) -> torch.Tensor:
        if self.resized != self.tile:
            image = F.interpolate(image, size=self.resized, mode="bilinear",
                                  align_corners=False)
        x = (image - self.mean) / self.std
        pad_h, pad_w = self.padded[0] - self.resized[0], self.padded[1] - self.resized[1]
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return x

    def _proposals(self, features: dict) -> torch.Tensor:
        """Detectron2's RPN inference for one image -> proposal boxes (P, 4), selected as its
        ``find_top_rpn_proposals`` does (per level the RPN.PRE_NMS_TOPK_TEST best scores, boxes
        clipped to the image, boxes under RPN.MIN_SIZE dropped, NMS within each level, the
        RPN.POST_NMS_TOPK_TEST best), with two changes of operator that keep its result: a
        top-k per level where Detectron2 sorts every anchor's score (a full sort of 85,000
        scores per 650 px tile at the finest level, the costliest operator of the exported RPN),
        and only the selected anchors decoded where Detectron2 decodes every anchor. Equal
        scores may come out in another order (neither operator promises one among ties)."""
        rpn = self.model.proposal_generator
        feats = [features[f] for f in rpn.in_features]
        anchors = rpn.anchor_generator(feats)
        logits, deltas = rpn.rpn_head(feats)
        box_dim = rpn.anchor_generator.box_dim
        boxes, scores, levels = [], [], []
        for level, (anchors_l, logits_l, deltas_l) in enumerate(zip(anchors, logits, deltas)):
            # one image: (A, H, W) -> (H * W * A,) and (A * box_dim, H, W) -> (H * W * A,
            # box_dim), Detectron2's anchor order
            scores_l = logits_l[0].permute(1, 2, 0).flatten()
            deltas_l = deltas_l[0].view(-1, box_dim, *deltas_l.shape[-2:]) \
                .permute(2, 3, 0, 1).reshape(-1, box_dim)
            top, idx = scores_l.topk(min(int(scores_l.shape[0]), rpn.pre_nms_topk[False]))
            boxes.append(rpn.box2box_transform.apply_deltas(deltas_l[idx],
                                                            anchors_l.tensor[idx]))
            scores.append(top)
            levels.append(torch.full_like(idx, level))
        found = Boxes(torch.cat(boxes))
        found.clip(self.resized)
        keep = found.nonempty(threshold=rpn.min_box_size)
        boxes, scores, levels = found.tensor[keep], torch.cat(scores)[keep], torch.cat(levels)[keep]
        keep = batched_nms(boxes, scores, levels, rpn.nms_thresh)[: rpn.post_nms_topk[False]]
        return boxes[keep]

    def _stacked(self, feats: list[torch.Tensor]) -> torch.Tensor | None:
        """The heads' FPN levels stacked into one map (:func:`stack_levels`; with
        ``warp_layout`` "roialign", with its zero border, :func:`border_stacked`), built once
        per tile for the RoI warps of both stage pairs; None when the warps read the levels
        one by one (``warp_layout`` "levels": the form before stacking, kept to measure it, and
        the only one of a model with MODEL.MNC.ROI_WARP roialign)."""
        if self.warp_layout == "levels":
            return None
        stacked = stack_levels(feats)[0]
        return border_stacked(stacked) if self.warp_layout == "roialign" else stacked

    def _warp(self, feats: list[torch.Tensor], boxes: torch.Tensor,
              stacked: torch.Tensor | None = None, channel_major: bool = False) -> torch.Tensor:
        """MultiLevelWarp for one image (R, C, S, S): with ``stacked`` (:meth:`_stacked`), one
        grid sampling of all boxes on the stacked levels (:func:`warp_stacked`; with
        ``channel_major`` left in its (C, R, S, S) layout) or, ``warp_layout`` "roialign", one
        RoIAlign on the bordered map (:func:`warp_stacked_roialign`, box order), otherwise
        level by level (:func:`pool_by_level`). The same values up to float rounding of the
        sample positions."""
        warp = self.model.roi_heads.warp
        if len(warp.scales) == 1:
            levels = torch.zeros_like(boxes[:, 0], dtype=torch.long)
        else:
            levels = assign_boxes_to_levels([Boxes(boxes)], warp.min_level, warp.max_level,
                                            warp.canonical_box_size, warp.canonical_level)
        if stacked is not None and self.warp_layout == "roialign":
            return warp_stacked_roialign(stacked, level_sizes(feats), boxes, levels,
                                         warp.output_size, warp.scales)
        if stacked is not None:
            return warp_stacked(stacked, level_sizes(feats), boxes, levels, warp.output_size,
                                warp.scales, channel_major)

        def pool(level: int, feat: torch.Tensor, picked: torch.Tensor) -> torch.Tensor:
            if warp.mode == "roialign":
                return warp.aligners[level](feat, _rois(picked))
            return warp_image(feat, picked, warp.output_size, warp.scales[level])

        return pool_by_level(feats, boxes, levels, pool)

    def _pair(self, feats, boxes, second: bool, stacked=None):
        """One stage pair (mask head, then the classification head on its masks). With the
        stacked warp and a classification head without convolutions, the head masks and pools
        the warps in grid sampling's channel-major layout
        (:class:`MaskedClassificationHead` with ``channel_major``), and only the mask head's
        input is transposed to box order: the same values as the eager head's order of
        operations, fewer values moved."""
        mask_head, cls_head = self.model.roi_heads._stage_heads(second)
        if self.warp_layout == "stacked" and stacked is not None and not len(cls_head.trunk):
            by_channel = self._warp(feats, boxes, stacked, channel_major=True)  # (C, R, S, S)
            mask_logits = mask_head(by_channel.transpose(0, 1))
            cls_logits, deltas, _ = cls_head(by_channel, mask_logits.sigmoid(),
                                             channel_major=True)
            return mask_logits, cls_logits, deltas
        warped = self._warp(feats, boxes, stacked)
        mask_logits = mask_head(warped)
        cls_logits, deltas, _ = cls_head(warped, mask_logits.sigmoid())
        return mask_logits, cls_logits, deltas

    def _refine(self, boxes, deltas, classes):
        heads = self.model.roi_heads
        rows = torch.arange(deltas.shape[0], device=deltas.device)
        picked = deltas.view(deltas.shape[0], -1, 4)[rows, classes]
        refined = heads.box2box_transform.apply_deltas(picked, boxes)
        h, w = self.resized
        x = refined[:, 0::2].clamp(0, w)
        y = refined[:, 1::2].clamp(0, h)
        return torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1)

    def _select(self, boxes, masks, probs):
        """MNCROIHeads.select with :func:`class_nms` (no branch on the number of boxes)."""
        span = float(max(self.padded)) + 1.0
        return self.model.roi_heads.select(
            boxes, masks, probs,
            nms=lambda b, s, c, threshold: class_nms(b, s, c, threshold, span))

    def _stages_2_3(self, feats: list[torch.Tensor], boxes: torch.Tensor):
        """Stages 2-3 on the proposals -> (stage-2 masks, stage-3 class probabilities, deltas,
        and the stacked levels of :meth:`_stacked` for stages 4-5, or None)."""
        stacked = self._stacked(feats)
        mask2, cls3, deltas3 = self._pair(feats, boxes, False, stacked)
        probs3 = F.softmax(cls3, dim=1)[:, : self.model.roi_heads.num_classes]
        return mask2.sigmoid(), probs3, deltas3, stacked

    def _stages_4_5(self, feats: list[torch.Tensor], boxes: torch.Tensor, probs3: torch.Tensor,
                    deltas3: torch.Tensor, stacked: torch.Tensor | None = None):
        """Stages 4-5 on the stage-3 refined boxes -> (boxes B', stage-4 masks, stage-5
        class probabilities)."""
        heads = self.model.roi_heads
        refined = self._refine(boxes, deltas3, probs3.argmax(1))
        probs5_gate = None
        if heads.cascade_gated:  # the eager head's gate (MODEL.MNC.TEST_CASCADE_*)
            best3, cls3 = probs3.max(1)  # (R,), (R,)
            span = float(max(self.padded)) + 1.0
            passed = heads.cascade_go(best3, refined, cls3,
                                      nms=lambda b, s, c, t: class_nms(b, s, c, t, span))
            # OpenVINO's pooling refuses zero RoIs, so the best proposal always goes on;
            # when it is below the threshold its stage-5 scores are zeroed (no candidate,
            # as the eager head, which sends none on)
            go = passed | (best3 == best3.max())
            refined, probs5_gate = refined[go], passed[go].to(probs3.dtype)[:, None]
        mask4, cls5, _ = self._pair(feats, refined, True, stacked)
        probs5 = F.softmax(cls5, dim=1)[:, : heads.num_classes]
        return refined, mask4.sigmoid(), probs5 if probs5_gate is None else probs5 * probs5_gate

    # --- the graph --------------------------------------------------------------------------

    def forward(self, image: torch.Tensor):
        heads = self.model.roi_heads
        features = self.model.backbone(self.preprocess(image))
        boxes = self.rpn(features)
        feats = [features[f] for f in heads.in_features]
        masks2, probs3, deltas3, stacked = self.stages_2_3(feats, boxes)
        cand_boxes, cand_masks, cand_probs = [boxes], [masks2], [probs3]
        if heads.test_num_stages == 5:
            refined, masks4, probs5 = self.stages_4_5(feats, boxes, probs3, deltas3, stacked)
            cand_boxes.append(refined)
            cand_masks.append(masks4)
            cand_probs.append(probs5)
        out_boxes, scores, classes, masks = self.selection(
            torch.cat(cand_boxes), torch.cat(cand_masks), torch.cat(cand_probs))
        return self.output(out_boxes), scores, classes, masks

    def _to_tile(self, out_boxes: torch.Tensor) -> torch.Tensor:
        """Detectron2's detector_postprocess: boxes back to the tile's pixels, clipped."""
        sy = self.tile[0] / self.resized[0]
        sx = self.tile[1] / self.resized[1]
        scale = out_boxes.new_tensor([sx, sy, sx, sy])
        out_boxes = out_boxes * scale
        x = out_boxes[:, 0::2].clamp(0, self.tile[1])
        y = out_boxes[:, 1::2].clamp(0, self.tile[0])
        return torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1)


class MaskRCNNExportGraph(MNCExportGraph):
    """Detectron2's Mask R-CNN (``StandardROIHeads``) as the same kind of graph, with the same
    outputs, so that both models can be timed through the same runtime (bench_export.py).

    As Detectron2's inference: box head on the proposals, per-class boxes decoded and clipped,
    score filter, per-class NMS, top-K (TEST.DETECTIONS_PER_IMAGE); the mask head on the kept
    boxes, the predicted class's mask. RoIAlign levels as :meth:`MNCExportGraph._warp`.
    """

    HEADS = StandardROIHeads

    def _pool(self, pooler, feats: list[torch.Tensor], boxes: torch.Tensor) -> torch.Tensor:
        if len(pooler.level_poolers) == 1:
            return pooler.level_poolers[0](feats[0], _rois(boxes))
        levels = assign_boxes_to_levels([Boxes(boxes)], pooler.min_level, pooler.max_level,
                                        pooler.canonical_box_size, pooler.canonical_level)
        return pool_by_level(feats, boxes, levels,
                             lambda level, feat, picked: pooler.level_poolers[level](
                                 feat, _rois(picked)))

    def _add_parts(self) -> None:
        self.box_head = GraphPart(self._box_head)
        self.selection = GraphPart(self._select_boxes)
        self.mask_head = GraphPart(self._mask_head)

    def _box_head(self, features: dict, proposals: torch.Tensor):
        """Box head on the proposals -> (per-class boxes (R, K or 1, 4), class probabilities
        (R, K))."""
        heads = self.model.roi_heads
        predictor = heads.box_predictor
        box_feats = heads.box_head(self._pool(heads.box_pooler,
                                              [features[f] for f in heads.box_in_features],
                                              proposals))
        logits, deltas = predictor(box_feats)
        probs = F.softmax(logits, dim=1)[:, :-1]  # (R, K)
        num_classes = probs.shape[1]
        boxes = predictor.box2box_transform.apply_deltas(deltas, proposals)  # (R, 4K)
        boxes = boxes.view(-1, num_classes if deltas.shape[1] > 4 else 1, 4)
        h, w = self.resized
        x = boxes[..., 0::2].clamp(0, w)
        y = boxes[..., 1::2].clamp(0, h)
        return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1), probs

    def _select_boxes(self, boxes: torch.Tensor, probs: torch.Tensor):
        """Score filter, per-class NMS, top-K -> (boxes (D, 4), scores (D,), classes (D,))."""
        predictor = self.model.roi_heads.box_predictor
        rows, cls = torch.nonzero(probs > predictor.test_score_thresh, as_tuple=True)
        scores = probs[rows, cls]
        cand = boxes[rows, cls if boxes.shape[1] > 1 else torch.zeros_like(cls)]
        span = float(max(self.padded)) + 1.0
        keep = class_nms(cand, scores, cls, predictor.test_nms_thresh, span)
        keep = keep[: predictor.test_topk_per_image]
        return cand[keep], scores[keep], cls[keep]

    def _mask_head(self, features: dict, boxes: torch.Tensor, classes: torch.Tensor):
        """Mask head on the kept boxes -> the predicted class's soft masks (D, M, M)."""
        heads = self.model.roi_heads
        mask_logits = heads.mask_head.layers(self._pool(
            heads.mask_pooler, [features[f] for f in heads.mask_in_features], boxes))
        if mask_logits.shape[1] > 1:
            mask_logits = mask_logits[torch.arange(mask_logits.shape[0],
                                                      device=classes.device), classes]
        else:
            mask_logits = mask_logits[:, 0]
        return mask_logits.sigmoid()

    def forward(self, image: torch.Tensor):
        features = self.model.backbone(self.preprocess(image))
        proposals = self.rpn(features)
        boxes, probs = self.box_head(features, proposals)
        out_boxes, scores, classes = self.selection(boxes, probs)
        masks = self.mask_head(features, out_boxes, classes)
        return self.output(out_boxes), scores, classes, masks
