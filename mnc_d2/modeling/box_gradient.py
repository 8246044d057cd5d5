"""How the later cascade stages' losses reach the stage-3 box regression (``MODEL.MNC.BOX_GRAD``).

Stage 4 warps features with the boxes refined by stage 3, so the stage-4/5 losses have a gradient
with respect to the stage-3 box deltas: chain rule through the RoI warping (to box coordinates)
and through ``Box2BoxTransform.apply_deltas`` (to the deltas). The released MNC code computes
that chain rule in its stage bridge and clamps each element of the resulting *delta* gradient to
``[-1/clip_base, 1/clip_base]`` (clip_base 512 in its 5-stage prototxt). :func:`clip_gradient`
on the picked deltas does the same here, autograd supplying the chain rule.

:class:`GradientRatioProbe` logs, per training iteration, the ratio of the L2 norm of that
cascade gradient (after clipping) to the L2 norm of the stage-3 box loss's own gradient on the
deltas (``mnc/box_grad_ratio``) and the fraction of delta-gradient elements the clamp cut
(``mnc/box_grad_clipped_fraction``), so users can see whether the cascade helps or swamps the
box regression.
"""

from __future__ import annotations

import torch
from detectron2.utils.events import get_event_storage


def _put_scalar(name: str, value: float) -> None:
    """Log to the current EventStorage when there is one (backward may run outside it)."""
    try:
        storage = get_event_storage()
    except AssertionError:
        return
    storage.put_scalar(name, value)


class _ClipGradient(torch.autograd.Function):
    """Identity forward; element-wise clamp of the incoming gradient to [-limit, limit]."""

    @staticmethod
    def forward(ctx, tensor, limit, probe):
        ctx.limit, ctx.probe = limit, probe
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad):
        if ctx.probe is not None and grad.numel():
            ctx.probe.clipped_fraction = float((grad.abs() > ctx.limit).float().mean())
        return grad.clamp(-ctx.limit, ctx.limit), None, None


def clip_gradient(tensor: torch.Tensor, limit: float, probe: "GradientRatioProbe | None" = None
                  ) -> torch.Tensor:
    """Identity whose backward clamps each gradient element to [-limit, limit] (0 = no clamp).

    tensor: any shape, e.g. the picked stage-3 deltas (R, 4).
    """
    if limit <= 0 or not tensor.requires_grad:
        return tensor
    return _ClipGradient.apply(tensor, float(limit), probe)


class GradientRatioProbe:
    """Collects the two gradients on the stage-3 deltas during one backward pass and logs their
    ratio once both have arrived (see the module docstring)."""

    def __init__(self):
        self.norms: dict[str, float] = {}
        self.clipped_fraction: float | None = None

    def tap(self, tensor: torch.Tensor, name: str) -> torch.Tensor:
        """Record the L2 norm of the gradient ``tensor`` receives, under ``name`` ("cascade" or
        "box_loss"). Returns ``tensor`` itself."""
        if tensor.requires_grad:
            tensor.register_hook(lambda grad, key=name: self._record(key, grad))
        return tensor

    def _record(self, name: str, grad: torch.Tensor) -> None:
        self.norms[name] = float(grad.detach().float().norm())
        if {"cascade", "box_loss"} <= set(self.norms):
            box = self.norms["box_loss"]
            if box > 0:
                _put_scalar("mnc/box_grad_ratio", self.norms["cascade"] / box)
            if self.clipped_fraction is not None:
                _put_scalar("mnc/box_grad_clipped_fraction", self.clipped_fraction)
            self.norms.clear()
            self.clipped_fraction = None
