"""Differentiable RoI warping (MNC's key layer) and its multi-level (FPN) wrapper.

``roi_warp`` crops each box out of a feature map and resamples it to an S x S grid by bilinear
interpolation at the centres of the S x S cells of the box. Because the sample positions are a
linear function of the box coordinates, the output is differentiable with respect to both the
features and the boxes: a loss on a later cascade stage reaches the boxes regressed by an earlier
one, which is what makes the cascade trainable end to end. As in the original, the warp is
followed by 2 x 2 max pooling before the classifier (``MODEL.MNC.CLS_POOL``, in the
classification head). Each warped cell is one bilinear sample at its centre on continuous box
coordinates (like ROIAlign with one sample per cell); the original's ROIWarping layer samples
once per cell too, but at the cell's corner and on box coordinates rounded to the feature grid.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from detectron2.layers import ROIAlign
from detectron2.modeling.poolers import assign_boxes_to_levels
from detectron2.structures import Boxes
from torch import nn

from .box_gradient import clip_gradient


def roi_warp(features: torch.Tensor, rois: torch.Tensor, output_size: int,
             spatial_scale: float) -> torch.Tensor:
    """Warp boxes of a feature map to a fixed grid, differentiably in features and boxes.

    features: (N, C, H, W). rois: (R, 5) rows (batch index, x0, y0, x1, y1) in image pixels
    (continuous coordinates: pixel i covers [i, i+1]). Returns (R, C, S, S) with S =
    ``output_size``; points outside the feature map read 0.
    """
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"rois must be (R, 5), got {tuple(rois.shape)}")
    if rois.shape[0] == 0:
        out = features.new_zeros((0, features.shape[1], output_size, output_size))
        return out + zero_link(features)  # keep the graph connected
    batch_index = rois[:, 0].detach().long()
    images = torch.unique(batch_index).tolist()
    if len(images) == 1:  # one image: its warps are already in row order
        b = images[0]
        return warp_image(features[b: b + 1], rois[:, 1:], output_size, spatial_scale)
    results, order = [], []
    for b in images:
        idx = torch.nonzero(batch_index == b, as_tuple=True)[0]
        results.append(warp_image(features[b: b + 1], rois[idx, 1:], output_size,
                                  spatial_scale))
        order.append(idx)
    return in_row_order(results, order)


def zero_link(tensor: torch.Tensor) -> torch.Tensor:
    """A float32 zero that depends on ``tensor`` (so the parameters behind it stay in the
    autograd graph, as DDP needs), from one element: ``0 * tensor.sum()`` overflows to
    0 * inf = NaN when a float16 feature map's sum passes 65504 (CPU autocast sums in float16)."""
    return tensor.reshape(-1)[:1].float().sum() * 0.0


def in_row_order(parts: list[torch.Tensor], order: list[torch.Tensor]) -> torch.Tensor:
    """Rows computed in groups back in their original order: parts[k] (n_k, ...) holds rows
    order[k] (n_k,) of the result; the orders together are a permutation of 0..N-1. One gather
    (differentiable), no zero-filled output and no scatter."""
    return torch.cat(parts)[torch.argsort(torch.cat(order))]


def warp_image(feature: torch.Tensor, boxes: torch.Tensor, output_size: int,
               spatial_scale: float) -> torch.Tensor:
    """:func:`roi_warp` for one image: feature (1, C, H, W), boxes (R, 4) x0 y0 x1 y1 in image
    pixels -> (R, C, S, S). No branch on R (the exported graph calls it directly)."""
    height, width = feature.shape[-2:]
    xs, ys = _cell_centres(*(boxes[:, k] * spatial_scale for k in range(4)), output_size)
    return _grid_sample_cells(feature, xs, ys, width, height, output_size)


def _cell_centres(x0, y0, x1, y1, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes (R,) per coordinate on a feature map -> the x and y centres (R, S) of their S x S
    cells, in the map's coordinates (pixel i covers [i, i+1])."""
    steps = (torch.arange(size, device=x0.device, dtype=x0.dtype) + 0.5) / size
    return (x0[:, None] + (x1 - x0)[:, None] * steps[None],
            y0[:, None] + (y1 - y0)[:, None] * steps[None])


def _grid_sample_cells(feature: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor, width,
                       height, size: int, channel_major: bool = False) -> torch.Tensor:
    """Bilinear samples of feature (1, C, H, W) at the cells (R, S) x (R, S) -> (R, C, S, S),
    or (C, R, S, S) with ``channel_major`` (grid sampling's own layout, not transposed); zeros
    outside the map."""
    # grid_sample (align_corners=False): normalised -1 is the left edge of pixel 0.
    gx = (2.0 * xs / width - 1.0)[:, None, :].expand(-1, size, -1)
    gy = (2.0 * ys / height - 1.0)[:, :, None].expand(-1, -1, size)
    grid = torch.stack([gx, gy], dim=-1).reshape(1, -1, size, 2)
    sampled = F.grid_sample(feature, grid.to(feature.dtype), mode="bilinear",
                            padding_mode="zeros", align_corners=False)
    sampled = sampled.reshape(feature.shape[1], -1, size, size)
    return sampled if channel_major else sampled.permute(1, 0, 2, 3)


# zero rows between two levels of stack_levels' map: a bilinear sample less than 1.5 pixels
# outside its level (warp_stacked clamps every sample to within 1) reads only zeros outside it
STACK_GAP = 2


def stack_levels(features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
    """The FPN levels of one image stacked into one feature map, so that the RoI warps of all
    levels run as one ``grid_sample`` (:func:`warp_stacked`; the exported graph builds it once
    per tile for both stage pairs).

    features: per level (1, C, H_l, W_l). Each level is padded with zeros on the right to the
    widest level's width and followed by :data:`STACK_GAP` zero rows (the last by none: the
    map's own border reads zeros), so that a bilinear sample less than 1.5 pixels outside its
    level reads zeros there, as ``grid_sample``'s zero padding on the level alone would. Returns
    the map (1, C, sum H_l + STACK_GAP (L - 1), max W_l) and each level's first row. The sizes
    are read as Python integers: a traced graph keeps them as constants (it has a fixed input
    size)."""
    sizes = level_sizes(features)
    widest = max(w for _, w in sizes)
    last = len(features) - 1
    parts = []
    for level, (feat, (_, w)) in enumerate(zip(features, sizes)):
        pad = (0, widest - w, 0, 0 if level == last else STACK_GAP)
        parts.append(F.pad(feat, pad) if any(pad) else feat)
    return (torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]), stacked_rows(sizes)


def level_sizes(features: Sequence[torch.Tensor]) -> list[tuple[int, int]]:
    """(H_l, W_l) of each level (1, C, H_l, W_l), as Python integers."""
    return [(int(f.shape[-2]), int(f.shape[-1])) for f in features]


def stacked_rows(sizes: Sequence[tuple[int, int]]) -> list[int]:
    """The first row of each level in :func:`stack_levels`'s map."""
    rows = [0]
    for height, _ in sizes[:-1]:
        rows.append(rows[-1] + height + STACK_GAP)
    return rows


def _box_levels(boxes: torch.Tensor, levels: torch.Tensor, sizes: Sequence[tuple[int, int]],
                scales: Sequence[float]) -> tuple[torch.Tensor, ...]:
    """Per box (R,) each: its level's scale, first row in :func:`stack_levels`'s map, height
    and width (one gather of a constant table)."""
    return boxes.new_tensor([[float(s), float(r), float(h), float(w)]
                             for s, r, (h, w) in zip(scales, stacked_rows(sizes), sizes)]
                            )[levels].unbind(1)


def warp_stacked(stacked: torch.Tensor, sizes: Sequence[tuple[int, int]], boxes: torch.Tensor,
                 levels: torch.Tensor, output_size: int, scales: Sequence[float],
                 channel_major: bool = False) -> torch.Tensor:
    """:func:`warp_image` of boxes of several FPN levels at once, each read from its own level
    of :func:`stack_levels`'s map by one ``grid_sample``; the warps come out in box order,
    or channel-major (below), with no per-level split, concatenation or reordering.

    stacked: (1, C, H, W) from :func:`stack_levels`; sizes: (H_l, W_l) per level
    (:func:`level_sizes`); boxes: (R, 4) x0 y0 x1 y1 in image pixels; levels: (R,) each box's
    level index; scales: the levels' spatial scales. Returns (R, C, S, S), or with
    ``channel_major`` the same warps as (C, R, S, S), grid sampling's own layout (no
    transposition: :class:`~mnc_d2.modeling.mnc_heads.MaskedClassificationHead` with
    ``channel_major`` masks and pools them so, the exported graph's form).

    Values: :func:`warp_image`'s on each box's own level, up to float rounding of the sample
    positions (they are normalised by the stacked map's size, not the level's). A sample more
    than one pixel outside its level is clamped to one pixel outside it, where both forms read
    zeros, so a box partly or wholly outside the image gets the same values too; for boxes
    inside the image (every box of the exported graph: proposals clipped, refined boxes clamped)
    nothing is clamped.
    """
    scale, top, level_h, level_w = _box_levels(boxes, levels, sizes, scales)
    xs, ys = _cell_centres(*(boxes[:, k] * scale for k in range(4)), output_size)
    # clamped to one pixel beyond the level's edge: bilinear sampling then reads at most two
    # pixels beyond it, the map's border or its STACK_GAP zero rows (zero columns: the padding
    # or the border)
    xs = torch.minimum(xs.clamp(min=-1.0), level_w[:, None] + 1.0)
    ys = torch.minimum(ys.clamp(min=-1.0), level_h[:, None] + 1.0) + top[:, None]
    return _grid_sample_cells(stacked, xs, ys, int(stacked.shape[-1]), int(stacked.shape[-2]),
                              output_size, channel_major)


ROIALIGN_BORDER = 1


def border_stacked(stacked: torch.Tensor) -> torch.Tensor:
    """:func:`stack_levels`'s map (1, C, H, W) with :data:`ROIALIGN_BORDER` zero pixels on
    every side, (1, C, H + 2B, W + 2B): the map :func:`warp_stacked_roialign` reads."""
    b = ROIALIGN_BORDER
    return F.pad(stacked, (b, b, b, b))


def warp_stacked_roialign(bordered: torch.Tensor, sizes: Sequence[tuple[int, int]],
                          boxes: torch.Tensor, levels: torch.Tensor, output_size: int,
                          scales: Sequence[float]) -> torch.Tensor:
    """:func:`warp_stacked`'s warps in box order, (R, C, S, S), as RoIAlign (aligned, one
    sample per cell) on the stacked map with a zero border (:func:`border_stacked`): one sample
    at each cell's centre is the same bilinear sample grid sampling takes. The border and the
    STACK_GAP rows between levels put zeros where grid sampling's padding reads them, and keep
    RoIAlign's clamping at the map's edges out of reach, so for boxes inside the image (every
    box of the exported graph) the values are :func:`warp_stacked`'s, up to float rounding of
    the sample positions; a box partly outside it is not clamped as there (not for training).

    bordered: (1, C, H + 2B, W + 2B); sizes: (H_l, W_l) per level; boxes: (R, 4) x0 y0 x1 y1
    in image pixels; levels: (R,) each box's level index; scales: the levels' spatial scales.
    An alternative form for runtimes whose RoIAlign is faster than their grid sampling
    (an exported graph's ``warp_layout`` "roialign")."""
    from torchvision.ops import roi_align

    b = float(ROIALIGN_BORDER)
    scale, top, _, _ = _box_levels(boxes, levels, sizes, scales)
    x0, y0, x1, y1 = (boxes * scale[:, None]).unbind(1)
    rois = torch.stack([torch.zeros_like(x0), x0 + b, y0 + top + b, x1 + b, y1 + top + b], 1)
    return roi_align(bordered, rois, output_size, spatial_scale=1.0, sampling_ratio=1,
                     aligned=True)


def clip_box_gradient(boxes: torch.Tensor, limit: float) -> torch.Tensor:
    """``MODEL.MNC.BOX_GRAD: coord``: clamp the gradient that RoI warping sends to box coordinates
    (pixels) element-wise to [-limit, limit] (0 = no bound). This was mnc_d2's rule before the
    original's delta-space clamp (:mod:`.box_gradient`); its effective strength scales with box
    size. boxes: (R, 4).
    """
    return clip_gradient(boxes, limit)


class MultiLevelWarp(nn.Module):
    """Warp boxes from FPN levels: each box is read from the level its size assigns it to.

    mode "warp": differentiable :func:`roi_warp`; mode "roialign": Detectron2's ROIAlign
    (aligned) on detached boxes, faster, no gradient to the boxes.
    """

    def __init__(self, output_size: int, scales: Sequence[float], mode: str = "warp",
                 sampling_ratio: int = 2, canonical_box_size: int = 224, canonical_level: int = 4,
                 box_grad_clip: float = 0.0):
        super().__init__()
        if mode not in ("warp", "roialign"):
            raise ValueError(f"MODEL.MNC.ROI_WARP={mode!r} must be 'warp' or 'roialign'")
        self.output_size = output_size
        self.scales = list(scales)
        self.mode = mode
        self.box_grad_clip = box_grad_clip
        self.min_level = int(round(-math.log2(self.scales[0])))
        self.max_level = int(round(-math.log2(self.scales[-1])))
        self.canonical_box_size = canonical_box_size
        self.canonical_level = canonical_level
        if mode == "roialign":
            self.aligners = nn.ModuleList(
                ROIAlign((output_size, output_size), s, sampling_ratio, aligned=True)
                for s in self.scales)

    def forward(self, features: list[torch.Tensor], boxes: list[torch.Tensor]) -> torch.Tensor:
        """features: per level (N, C, H_l, W_l); boxes: per image (R_i, 4) -> (sum R_i, C, S, S).
        """
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1)
                          for i, b in enumerate(boxes)])
        if self.mode == "roialign":
            rois = rois.detach()
        else:
            rois = torch.cat([rois[:, :1], clip_box_gradient(rois[:, 1:], self.box_grad_clip)], 1)
        if len(self.scales) == 1:
            levels = torch.zeros(rois.shape[0], dtype=torch.long, device=rois.device)
        else:
            levels = assign_boxes_to_levels([Boxes(b.detach()) for b in boxes], self.min_level,
                                            self.max_level, self.canonical_box_size,
                                            self.canonical_level)
        parts, order = [], []
        unused = None  # levels without boxes stay in the autograd graph (DDP)
        for level, (feat, scale) in enumerate(zip(features, self.scales)):
            idx = torch.nonzero(levels == level, as_tuple=True)[0]
            if idx.numel() == 0:
                unused = zero_link(feat) if unused is None else unused + zero_link(feat)
                continue
            if self.mode == "roialign":
                parts.append(self.aligners[level](feat, rois[idx]))
            else:
                parts.append(roi_warp(feat, rois[idx], self.output_size, scale))
            order.append(idx)
        if not parts:  # no boxes at all
            out = features[0].new_zeros((0, features[0].shape[1], self.output_size,
                                         self.output_size))
        elif len(parts) == 1:  # one level: nonzero() gave its rows in order
            out = parts[0]
        else:
            out = in_row_order(parts, order)
        if unused is not None and torch.is_grad_enabled():
            out = out + unused
        return out
