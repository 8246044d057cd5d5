"""Modeling: the MNC cascade ROI head, differentiable RoI warping, multi-band checkpoints."""

from .checkpoint import MultiBandCheckpointer, inflate_input_channels
from .mnc_roi_heads import MNCROIHeads
from .roi_warp import MultiLevelWarp, roi_warp

__all__ = ["MNCROIHeads", "MultiBandCheckpointer", "MultiLevelWarp", "inflate_input_channels",
           "roi_warp"]
