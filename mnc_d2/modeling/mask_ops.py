"""Mask utilities of the MNC cascade: mask-level IoU labels and mask voting.

Shapes: R = RoIs, M = mask size.
"""

from __future__ import annotations

import torch
from detectron2.structures import Boxes, pairwise_iou


def mask_iou_in_box(mask_logits: torch.Tensor, targets: torch.Tensor, boxes: torch.Tensor,
                    gt_areas: torch.Tensor) -> torch.Tensor:
    """Mask IoU of predicted masks with their ground truth, for mask-level labels.

    mask_logits, targets: (R, M, M) on each RoI's own grid (targets = the matched ground-truth
    mask cropped to the RoI); boxes: (R, 4) the RoIs; gt_areas: (R,) full ground-truth mask
    areas in pixels. The prediction (sigmoid > 0.5) is measured on the RoI grid, so ground truth
    outside the RoI counts in the union but prediction outside it cannot exist. Returns (R,).
    """
    m = mask_logits.shape[-1]
    cell = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=0) / (m * m)
    pred = (mask_logits > 0).float()
    inter = (pred * (targets >= 0.5).float()).sum(dim=(1, 2)) * cell
    pred_area = pred.sum(dim=(1, 2)) * cell
    union = pred_area + gt_areas.to(pred_area.dtype) - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-6), torch.zeros_like(union))


def _tent_weights(coords: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                  size: int) -> torch.Tensor:
    """Bilinear weights of sample coordinates onto the ``size`` cells spanning [lo, hi].

    coords: (P, G) positions; lo, hi: (P,) the span of each row's cells. Returns (P, G, size):
    weight max(0, 1 - |u - i|) of cell i, u = the position in cell units measured from the
    first cell's centre: ``grid_sample``'s bilinear rule (align_corners=False) with zeros
    outside, one axis at a time.
    """
    extent = (hi - lo).clamp(min=1e-6)[:, None]
    u = (coords - lo[:, None]) / extent * size - 0.5  # (P, G)
    cells = torch.arange(size, device=coords.device, dtype=coords.dtype)
    return (1.0 - (u[:, :, None] - cells).abs()).clamp(min=0.0)


def resample_pairs(masks: torch.Tensor, boxes: torch.Tensor, target_boxes: torch.Tensor,
                   size: int) -> torch.Tensor:
    """Resample each soft mask defined on its box onto the size x size grid of its target box.

    masks: (P, M, M) probabilities; boxes, target_boxes: (P, 4). Returns (P, size, size), 0 where
    a target grid cell falls outside the mask's box (bilinear, cell centres).

    The sample grid of a box is separable (its x positions do not depend on the row), so the
    bilinear resampling is two small matrix products per pair, rows @ mask @ columns^T, with
    the weights of :func:`_tent_weights`: the values of ``F.grid_sample`` (bilinear, zeros
    padding, align_corners=False) up to float rounding, several times faster than it in the
    exported graph's runtimes (the pairs of mask voting are many and each is small).
    """
    steps = (torch.arange(size, device=masks.device, dtype=masks.dtype) + 0.5) / size
    xs = target_boxes[:, :1] + (target_boxes[:, 2:3] - target_boxes[:, :1]) * steps  # (P, size)
    ys = target_boxes[:, 1:2] + (target_boxes[:, 3:4] - target_boxes[:, 1:2]) * steps
    m = masks.shape[-1]
    rows = _tent_weights(ys, boxes[:, 1], boxes[:, 3], m)  # (P, size, M)
    cols = _tent_weights(xs, boxes[:, 0], boxes[:, 2], m)  # (P, size, M)
    return rows @ masks @ cols.transpose(1, 2)


def resample_to_box(masks: torch.Tensor, boxes: torch.Tensor, target_box: torch.Tensor,
                    size: int) -> torch.Tensor:
    """Resample soft masks defined on ``boxes`` onto the size x size grid of ``target_box``.

    masks: (J, M, M) probabilities; boxes: (J, 4); target_box: (4,). Returns (J, size, size),
    0 where the target grid falls outside a mask's box.
    """
    return resample_pairs(masks, boxes, target_box.expand(len(masks), 4), size)


def _voters(keep: torch.Tensor, boxes: torch.Tensor, iou_threshold: float,
            classes: torch.Tensor | None = None) -> torch.Tensor:
    """(K, N) bool: candidate j votes for kept candidate k when their box IoU >= threshold
    (and, with ``classes`` (N,), they have the same class); a kept candidate always votes for
    itself."""
    votes = pairwise_iou(Boxes(boxes[keep]), Boxes(boxes)) >= iou_threshold
    if classes is not None:
        votes = votes & (classes[keep][:, None] == classes[None, :])
    votes[torch.arange(keep.shape[0], device=keep.device), keep] = True
    return votes


def _weighted_vote(votes: torch.Tensor, boxes: torch.Tensor, masks: torch.Tensor,
                   scores: torch.Tensor, frames: torch.Tensor, grid: int) -> torch.Tensor:
    """Score-weighted mean of the voters' masks, each pasted on its kept candidate's frame.

    votes: (K, N) bool; boxes: (N, 4); masks: (N, M, M); scores: (N,); frames: (K, 4).
    Returns (K, grid, grid). All (kept, voter) pairs are resampled in one batch.
    """
    k_idx, j_idx = torch.nonzero(votes, as_tuple=True)  # one row per (kept, voter) pair
    pasted = resample_pairs(masks[j_idx], boxes[j_idx], frames[k_idx], grid)  # (P, G, G)
    total = _sum_rows(scores.new_zeros(votes.shape[0]), k_idx, scores[j_idx])
    weights = scores[j_idx] / total[k_idx].clamp(min=1e-12)
    return _sum_rows(pasted.new_zeros((votes.shape[0], grid, grid)), k_idx,
                     weights[:, None, None] * pasted)


def _sum_rows(out: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """out[index[p]] += values[p] (repeated indices add up). out: (K, ...), index: (P,),
    values: (P, ...). Eager: ``index_add_``. Traced (the exported graph): a one-hot (K, P)
    matrix product, because the ONNX exporter turns ``index_add_`` into a scatter that keeps one
    of the repeated rows instead of their sum, and an element-wise scatter is slow in the ONNX
    runtimes; K and P are at most a few hundred and a few thousand here. Under autocast the
    pasted masks come as float16 and the score weights as float32: the sum is kept in the wider
    of the two (``index_add_`` takes one dtype)."""
    if not torch.jit.is_tracing():
        wide = torch.promote_types(out.dtype, values.dtype)
        return out.to(wide).index_add_(0, index, values.to(wide))
    rows = torch.arange(out.shape[0], device=index.device)
    onehot = (rows[:, None] == index[None, :]).to(values.dtype)  # (K, P)
    width = 1
    for size in values.shape[1:]:  # constants (the grid), never -1: P may be 0
        width *= int(size)
    return out + (onehot @ values.reshape(values.shape[0], width)).reshape(out.shape)


def mask_voting(keep: torch.Tensor, boxes: torch.Tensor, masks: torch.Tensor,
                scores: torch.Tensor, iou_threshold: float,
                classes: torch.Tensor | None = None) -> torch.Tensor:
    """MNC's mask voting: each kept instance's mask becomes the score-weighted mean of the masks
    of all candidates (before NMS) whose box IoU with it is at least ``iou_threshold``.

    keep: (K,) indices of kept candidates; boxes: (N, 4); masks: (N, M, M) probabilities on each
    candidate's box; scores: (N,); classes: (N,) or None (one class): only candidates of the
    kept one's class vote. Returns (K, M, M) voted probabilities on the kept boxes.
    """
    if keep.numel() == 0 and not torch.jit.is_tracing():
        return masks[:0]
    return _weighted_vote(_voters(keep, boxes, iou_threshold, classes), boxes, masks, scores,
                          boxes[keep], masks.shape[-1])


def _first_last(flags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, G) bool -> index of the first and last True per row (rows without any: 0, G-1)."""
    grid = flags.shape[1]
    first = flags.float().argmax(dim=1)
    last = grid - 1 - flags.flip(1).float().argmax(dim=1)
    return first, last


def _tight_boxes(voted: torch.Tensor, frames: torch.Tensor, threshold: float):
    """Tight boxes (K, 4) in image coordinates of ``voted`` (K, G, G) >= threshold, each voted
    grid covering its frame (K, 4); and (K,) whether any cell reached the threshold."""
    fg = voted >= threshold
    grid = voted.shape[-1]
    r0, r1 = _first_last(fg.any(dim=2))
    c0, c1 = _first_last(fg.any(dim=1))
    cell_w = (frames[:, 2] - frames[:, 0]) / grid
    cell_h = (frames[:, 3] - frames[:, 1]) / grid
    tight = torch.stack([frames[:, 0] + c0 * cell_w, frames[:, 1] + r0 * cell_h,
                         frames[:, 0] + (c1 + 1) * cell_w, frames[:, 1] + (r1 + 1) * cell_h], 1)
    return tight, fg.flatten(1).any(dim=1)


def mask_voting_image(keep: torch.Tensor, boxes: torch.Tensor, masks: torch.Tensor,
                      scores: torch.Tensor, iou_threshold: float, mask_threshold: float = 0.5,
                      grid: int = 0, classes: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """MNC's mask voting in image space, as the original's ``mask_aggregation``.

    For each kept candidate, the voters (all candidates with box IoU >= ``iou_threshold`` with
    it, itself included) have their soft masks pasted on the union of their boxes (a G x G grid,
    G = ``grid`` or 2M), averaged with their scores as weights and thresholded at
    ``mask_threshold``; the kept box becomes the tight box of the voted mask and the voted soft
    mask is resampled onto it. The original's default (GPU) voting averages soft masks too; its
    CPU fallback binarises each voter at 0.4 first. A voted mask with no cell at
    the threshold keeps the candidate's box. All kept candidates are voted in one batch.

    keep: (K,) indices of kept candidates; boxes: (N, 4); masks: (N, M, M) probabilities on each
    candidate's box; scores: (N,); classes: (N,) or None (one class): only candidates of the
    kept one's class vote (all classes voted in one batch, as the exported graph does).
    Returns (voted masks (K, M, M) on the new boxes, boxes (K, 4)).
    """
    size = masks.shape[-1]
    if keep.numel() == 0 and not torch.jit.is_tracing():
        return masks[:0], boxes[:0]
    grid = grid or 2 * size
    votes = _voters(keep, boxes, iou_threshold, classes)  # (K, N)
    # The union of each kept candidate's voters' boxes; one extra +-inf column keeps the
    # reductions defined when a traced graph sees no candidate at all (N = 0).
    inf = boxes.new_full((votes.shape[0], 1), float("inf"))

    def extreme(coord: int, fill: torch.Tensor, smallest: bool) -> torch.Tensor:
        values = torch.cat([torch.where(votes, boxes[None, :, coord], fill), fill], dim=1)
        return values.min(dim=1).values if smallest else values.max(dim=1).values

    frames = torch.stack([extreme(0, inf, True), extreme(1, inf, True),
                          extreme(2, -inf, False), extreme(3, -inf, False)], 1)
    voted = _weighted_vote(votes, boxes, masks, scores, frames, grid)
    tight, found = _tight_boxes(voted, frames, mask_threshold)
    out_boxes = torch.where(found[:, None], tight, boxes[keep])
    return resample_pairs(voted, frames, out_boxes, size), out_boxes
