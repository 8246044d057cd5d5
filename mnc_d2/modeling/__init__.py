"""Modeling: the MNC cascade ROI head, differentiable RoI warping, multi-band checkpoints, the
hard-mining RPN."""

from .checkpoint import MultiBandCheckpointer, inflate_input_channels
from .hard_mining_rpn import HardMiningRPN
from .mnc_roi_heads import MNCROIHeads
from .roi_warp import MultiLevelWarp, roi_warp

__all__ = ["HardMiningRPN", "MNCROIHeads", "MultiBandCheckpointer", "MultiLevelWarp",
           "inflate_input_channels", "roi_warp"]
