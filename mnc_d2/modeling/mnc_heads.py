"""The per-stage networks of the MNC cascade: mask regression and masked classification.

Shapes: R = RoIs in the batch, C = feature channels, S = warp size, M = mask size,
K = foreground classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import fvcore.nn.weight_init as weight_init
from detectron2.layers import Conv2d, ConvTranspose2d, get_norm
from torch import nn


def _trunk(in_channels: int, num_conv: int, conv_dim: int, norm: str) -> tuple[nn.Module, int]:
    """Optional 3x3 convolutions on the warped features (returns the module and out channels)."""
    layers = []
    for _ in range(num_conv):
        layers.append(Conv2d(in_channels, conv_dim, 3, padding=1, bias=not norm,
                             norm=get_norm(norm, conv_dim), activation=F.relu))
        in_channels = conv_dim
    return nn.Sequential(*layers), in_channels


class MaskRegressionHead(nn.Module):
    """Stages 2 and 4: class-agnostic mask logits from box-warped features.

    As in the paper: a hidden fully connected layer (256-d there) followed by a fully connected
    layer regressing the M x M mask. Input (R, C, S, S) -> logits (R, M, M).
    """

    def __init__(self, in_channels: int, warp_size: int, mask_size: int, fc_dim: int,
                 num_conv: int = 0, conv_dim: int = 256, norm: str = ""):
        super().__init__()
        self.trunk, channels = _trunk(in_channels, num_conv, conv_dim, norm)
        self.fc = nn.Linear(channels * warp_size * warp_size, fc_dim)
        self.predictor = nn.Linear(fc_dim, mask_size * mask_size)
        self.mask_size = mask_size
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.constant_(self.predictor.bias, 0.0)

    def forward(self, warped: torch.Tensor) -> torch.Tensor:
        x = self.trunk(warped).flatten(1)
        x = F.relu(self.fc(x))
        return self.predictor(x).view(-1, self.mask_size, self.mask_size)


class ConvMaskHead(nn.Module):
    """Stages 2 and 4 with ``MODEL.MNC.MASK_HEAD: conv``: a small fully convolutional mask head.

    Not the paper's head (which regresses the mask with fully connected layers): ``num_conv``
    3 x 3 convolutions keep the warp's spatial layout, a 2 x 2 stride-2 transposed convolution
    doubles it when ``mask_size`` is twice ``warp_size``, and a 1 x 1 convolution gives the
    class-agnostic mask logits, the layout of Mask R-CNN's mask head (He et al., ICCV 2017).
    The rest of the cascade is unchanged: the masking layer multiplies the stage-3 (stage-5)
    features by this mask. Input (R, C, S, S) -> logits (R, M, M), M = S or 2S.
    """

    def __init__(self, in_channels: int, warp_size: int, mask_size: int, num_conv: int,
                 conv_dim: int, norm: str = "", trunk_conv: int = 0, trunk_dim: int = 256):
        super().__init__()
        if mask_size not in (warp_size, 2 * warp_size):
            raise ValueError(f"MODEL.MNC.MASK_HEAD='conv' predicts a mask of the warp's side or "
                             f"twice it: MODEL.MNC.MASK_SIZE={mask_size} with "
                             f"MODEL.MNC.WARP_SIZE={warp_size}; set MASK_SIZE to {warp_size} or "
                             f"{2 * warp_size}")
        trunk, channels = _trunk(in_channels, trunk_conv, trunk_dim, norm)
        convs, channels = _trunk(channels, num_conv, conv_dim, norm)
        self.trunk = nn.Sequential(*trunk, *convs)
        self.upsample = (ConvTranspose2d(channels, channels, 2, stride=2)
                         if mask_size == 2 * warp_size else None)
        self.predictor = Conv2d(channels, 1, 1)
        for layer in [*convs, self.upsample]:
            if layer is not None:
                weight_init.c2_msra_fill(layer)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.constant_(self.predictor.bias, 0.0)

    def forward(self, warped: torch.Tensor) -> torch.Tensor:
        x = self.trunk(warped)
        if self.upsample is not None:
            x = F.relu(self.upsample(x))
        return self.predictor(x)[:, 0]


def build_mask_head(kind: str, in_channels: int, warp_size: int, mask_size: int, fc_dim: int,
                    mask_num_conv: int, mask_conv_dim: int, num_conv: int = 0,
                    conv_dim: int = 256, norm: str = "") -> nn.Module:
    """The mask head of ``MODEL.MNC.MASK_HEAD``: "fc" (the paper's) or "conv"."""
    if kind == "fc":
        return MaskRegressionHead(in_channels, warp_size, mask_size, fc_dim, num_conv=num_conv,
                                  conv_dim=conv_dim, norm=norm)
    if kind == "conv":
        return ConvMaskHead(in_channels, warp_size, mask_size, mask_num_conv, mask_conv_dim,
                            norm=norm, trunk_conv=num_conv, trunk_dim=conv_dim)
    raise ValueError(f"MODEL.MNC.MASK_HEAD={kind!r}: use 'fc' (the paper's) or 'conv'")


def max_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """2 x 2 max pooling, stride 2, of (R, C, S, S) with S even -> (R, C, S/2, S/2).

    The values are ``F.max_pool2d(x, 2, 2)``'s in every case; only the operators differ, by
    what is fastest where (measured on 200 x 64 x 14 x 14, 2 CPU threads, torch 2.14):
    the ONNX export keeps ``max_pool2d``, one MaxPool for the runtimes (the strided form below
    is 3.5x slower in onnxruntime); training keeps it too, its backward being the fastest (and,
    like the original's Caffe pooling, it sends a tied maximum's gradient to one input); eager
    inference and the TorchScript export (which runs PyTorch's own kernels) take the maximum of
    the four strided 2 x 2 phases, 8x faster than PyTorch's CPU ``max_pool2d`` on these
    many-channel, few-pixel inputs.
    """
    if torch.onnx.is_in_onnx_export() or (torch.is_grad_enabled() and x.requires_grad):
        return F.max_pool2d(x, 2, 2)
    rows = torch.maximum(x[..., 0::2, :], x[..., 1::2, :])  # (R, C, S/2, S)
    return torch.maximum(rows[..., 0::2], rows[..., 1::2])


class MaskedClassificationHead(nn.Module):
    """Stages 3 and 5: classification from mask-multiplied features plus plain box features.

    The paper's masking layer multiplies the box-warped features by the previous stage's soft
    mask (resized to the warp grid); with ``pool="max"`` both pathways are then 2 x 2 max-pooled
    (stride 2) as in the original (its 14 x 14 warp becomes 7 x 7 before fc6). Each pathway gets
    one fully connected layer; with ``joint`` (the default) they are concatenated into a joint
    layer that feeds the outputs (deviation: the original has two 4096-wide fcs per pathway,
    concatenated straight into the outputs); without it the outputs read the concatenation
    itself, the original's layout with one fc per pathway. Either way the ReLU layer the outputs
    read can die early in a short schedule, leaving the classifier at the class prior: measured
    for the joint layer, and without it for the pathway layers (BENCHMARKS.md section 1; the
    remedy found there is a lower learning rate, not the layout).

    * ``cls_score``: the mask-level classifier (trained with mask-level labels; the original and
      mnc_d2 score detections with it at test time);
    * ``box_cls_score`` (only when ``box_classifier``): the box-level classifier, an auxiliary
      loss trained with box labels beside it, as in the original; unused at test time;
    * ``bbox_pred``: class-specific box deltas.

    Input: warped (R, C, S, S), mask_probs (R, M, M) -> (class logits (R, K+1), deltas (R, 4K),
    box-level class logits (R, K+1) or None).
    """

    def __init__(self, in_channels: int, warp_size: int, num_classes: int, fc_dim: int,
                 num_conv: int = 0, conv_dim: int = 256, norm: str = "", pool: str = "",
                 box_classifier: bool = False, joint: bool = True):
        super().__init__()
        if pool not in ("", "max"):
            raise ValueError(f"MODEL.MNC.CLS_POOL={pool!r} must be 'max' or ''")
        if pool and warp_size % 2:
            raise ValueError(f"MODEL.MNC.CLS_POOL='max' halves the warp: MODEL.MNC.WARP_SIZE="
                             f"{warp_size} must be even (the original: 14)")
        self.trunk, channels = _trunk(in_channels, num_conv, conv_dim, norm)
        side = warp_size // 2 if pool else warp_size
        flat = channels * side * side
        self.pool = pool
        self.fc_masked = nn.Linear(flat, fc_dim)
        self.fc_box = nn.Linear(flat, fc_dim)
        self.fc_joint = nn.Linear(2 * fc_dim, fc_dim) if joint else None
        width = fc_dim if joint else 2 * fc_dim  # what the outputs read
        self.cls_score = nn.Linear(width, num_classes + 1)
        self.bbox_pred = nn.Linear(width, 4 * num_classes)
        self.box_cls_score = nn.Linear(width, num_classes + 1) if box_classifier else None
        self.warp_size = warp_size
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        layers = [self.cls_score, self.bbox_pred]
        if self.box_cls_score is not None:
            nn.init.normal_(self.box_cls_score.weight, std=0.01)
            layers.append(self.box_cls_score)
        for layer in layers:
            nn.init.constant_(layer.bias, 0.0)

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        """(R, C, S, S) -> (R, C * S'^2), S' = S / 2 after 2 x 2 max pooling (stride 2)."""
        if self.pool:
            x = max_pool_2x2(x)
        return x.flatten(1)

    def _mask_on_grid(self, mask_probs: torch.Tensor) -> torch.Tensor:
        """(R, M, M) -> (R, 1, S, S), the soft masks resized to the warp grid."""
        mask = mask_probs[:, None]
        if tuple(mask.shape[-2:]) != (self.warp_size, self.warp_size):
            # a mask already on the warp grid is used as it is (resizing it to its own size is
            # the identity, and an exported graph would still run it as a Resize operator)
            mask = F.interpolate(mask, size=(self.warp_size, self.warp_size), mode="bilinear",
                                 align_corners=False)
        return mask

    def forward(self, warped: torch.Tensor, mask_probs: torch.Tensor,
                channel_major: bool = False):
        """warped (R, C, S, S), mask_probs (R, M, M) -> the outputs (class docstring).

        ``channel_major``: warped is laid out (C, R, S, S) instead (one grid sampling's own
        layout, :func:`mnc_d2.modeling.roi_warp.warp_stacked` with ``channel_major``): the same
        outputs. The masking and the 2 x 2 pooling then run on that layout, each channel's R
        boxes one (R S, S) map (pooling needs S even, so no window spans two boxes), and only
        the pooled (C, R, S/2, S/2) features are put in box order, 4x fewer values than
        transposing the warps first. The exported graph's form; a head with convolutions
        (MODEL.MNC.NUM_CONV > 0) reads the warps in box order and refuses it."""
        mask = self._mask_on_grid(mask_probs)
        if not channel_major:
            feats = self.trunk(warped)
            return self._outputs(self._flat(feats * mask), self._flat(feats))
        if len(self.trunk):
            raise ValueError("channel_major warps: this head has convolutions "
                             "(MODEL.MNC.NUM_CONV > 0), which read the warps in box order; "
                             "pass warped.transpose(0, 1) without channel_major")
        # static sizes (Python integers): a traced graph reshapes by constants
        size, side = self.warp_size, self.warp_size // 2 if self.pool else self.warp_size
        channels = self.fc_box.in_features // (side * side)
        rows = warped.reshape(1, channels, -1, size)  # (1, C, R S, S)

        def flat(x: torch.Tensor) -> torch.Tensor:  # (1, C, R S, S) -> (R, C S'^2)
            if self.pool:
                x = max_pool_2x2(x)
            return x.reshape(channels, -1, side * side).transpose(0, 1).flatten(1)

        return self._outputs(flat(rows * mask.reshape(1, 1, -1, size)), flat(rows))

    def _outputs(self, masked: torch.Tensor, plain: torch.Tensor):
        """The flattened masked and plain features (R, C S'^2) each -> the head's outputs."""
        masked = F.relu(self.fc_masked(masked))
        plain = F.relu(self.fc_box(plain))
        joint = torch.cat([masked, plain], dim=1)  # (R, 2 x fc_dim)
        if self.fc_joint is not None:
            joint = F.relu(self.fc_joint(joint))
        box_logits = self.box_cls_score(joint) if self.box_cls_score is not None else None
        return self.cls_score(joint), self.bbox_pred(joint), box_logits
