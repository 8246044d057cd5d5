"""Mask utilities of the MNC cascade: mask-level IoU labels and mask voting.

Shapes: R = RoIs, M = mask size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
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


def resample_to_box(masks: torch.Tensor, boxes: torch.Tensor, target_box: torch.Tensor,
                    size: int) -> torch.Tensor:
    """Resample soft masks defined on ``boxes`` onto the size x size grid of ``target_box``.

    masks: (J, M, M) probabilities; boxes: (J, 4); target_box: (4,). Returns (J, size, size),
    0 where the target grid falls outside a mask's box.
    """
    steps = (torch.arange(size, device=masks.device, dtype=masks.dtype) + 0.5) / size
    xs = target_box[0] + (target_box[2] - target_box[0]) * steps  # (size,) image coordinates
    ys = target_box[1] + (target_box[3] - target_box[1]) * steps
    w = (boxes[:, 2] - boxes[:, 0]).clamp(min=1e-6)[:, None]
    h = (boxes[:, 3] - boxes[:, 1]).clamp(min=1e-6)[:, None]
    gx = 2.0 * (xs[None] - boxes[:, :1]) / w - 1.0  # (J, size), in each mask's own frame
    gy = 2.0 * (ys[None] - boxes[:, 1:2]) / h - 1.0
    grid = torch.stack([gx[:, None, :].expand(-1, size, -1),
                        gy[:, :, None].expand(-1, -1, size)], dim=-1)
    return F.grid_sample(masks[:, None], grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False)[:, 0]


def mask_voting(keep: torch.Tensor, boxes: torch.Tensor, masks: torch.Tensor,
                scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """MNC's mask voting: each kept instance's mask becomes the score-weighted mean of the masks
    of all candidates (before NMS) whose box IoU with it is at least ``iou_threshold``.

    keep: (K,) indices of kept candidates; boxes: (N, 4); masks: (N, M, M) probabilities on each
    candidate's box; scores: (N,). Returns (K, M, M) voted probabilities on the kept boxes.
    """
    if keep.numel() == 0:
        return masks[:0]
    iou = pairwise_iou(Boxes(boxes[keep]), Boxes(boxes))  # (K, N)
    out = []
    for k, row in zip(keep.tolist(), iou):
        voters = torch.nonzero(row >= iou_threshold, as_tuple=True)[0]
        if voters.numel() == 0:
            voters = torch.tensor([k], device=boxes.device)
        sampled = resample_to_box(masks[voters], boxes[voters], boxes[k], masks.shape[-1])
        weights = scores[voters] / scores[voters].sum().clamp(min=1e-12)
        out.append((weights[:, None, None] * sampled).sum(dim=0))
    return torch.stack(out)


def _union_box(boxes: torch.Tensor) -> torch.Tensor:
    """(J, 4) -> (4,) the smallest box holding all of them."""
    return torch.cat([boxes[:, :2].min(dim=0).values, boxes[:, 2:].max(dim=0).values])


def _tight_box(voted: torch.Tensor, frame: torch.Tensor, threshold: float) -> torch.Tensor | None:
    """Tight box (4,) in image coordinates of ``voted`` >= threshold, where voted (G, G) covers
    ``frame`` (4,); None when no cell reaches the threshold."""
    fg = voted >= threshold
    if not bool(fg.any()):
        return None
    grid = voted.shape[-1]
    rows = torch.nonzero(fg.any(dim=1), as_tuple=True)[0]
    cols = torch.nonzero(fg.any(dim=0), as_tuple=True)[0]
    cell_w = (frame[2] - frame[0]) / grid
    cell_h = (frame[3] - frame[1]) / grid
    return torch.stack([frame[0] + cols[0] * cell_w, frame[1] + rows[0] * cell_h,
                        frame[0] + (cols[-1] + 1) * cell_w, frame[1] + (rows[-1] + 1) * cell_h])


def mask_voting_image(keep: torch.Tensor, boxes: torch.Tensor, masks: torch.Tensor,
                      scores: torch.Tensor, iou_threshold: float, mask_threshold: float = 0.5,
                      grid: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """MNC's mask voting in image space, as the original's ``mask_aggregation``.

    For each kept candidate, the voters (all candidates with box IoU >= ``iou_threshold`` with
    it, itself included) have their soft masks pasted on the union of their boxes (a G x G grid,
    G = ``grid`` or 2M), averaged with their scores as weights and thresholded at
    ``mask_threshold``; the kept box becomes the tight box of the voted mask and the voted soft
    mask is resampled onto it. (The original binarises each voter before averaging; the soft
    average here keeps the sub-threshold evidence of every voter.) A voted mask with no cell at
    the threshold keeps the candidate's box.

    keep: (K,) indices of kept candidates; boxes: (N, 4); masks: (N, M, M) probabilities on each
    candidate's box; scores: (N,). Returns (voted masks (K, M, M) on the new boxes, boxes (K, 4)).
    """
    size = masks.shape[-1]
    if keep.numel() == 0:
        return masks[:0], boxes[:0]
    grid = grid or 2 * size
    iou = pairwise_iou(Boxes(boxes[keep]), Boxes(boxes))  # (K, N)
    out_masks, out_boxes = [], []
    for k, row in zip(keep.tolist(), iou):
        voters = torch.nonzero(row >= iou_threshold, as_tuple=True)[0]
        if voters.numel() == 0:
            voters = torch.tensor([k], device=boxes.device)
        frame = _union_box(boxes[voters])
        pasted = resample_to_box(masks[voters], boxes[voters], frame, grid)  # (J, G, G)
        weights = scores[voters] / scores[voters].sum().clamp(min=1e-12)
        voted = (weights[:, None, None] * pasted).sum(dim=0)
        tight = _tight_box(voted, frame, mask_threshold)
        box = boxes[k] if tight is None else tight
        out_masks.append(resample_to_box(voted[None], frame[None], box, size)[0])
        out_boxes.append(box)
    return torch.stack(out_masks), torch.stack(out_boxes)
