"""Training-side helpers: the CPU-capable launcher."""

import mnc_d2

mnc_d2.setup()  # shims before any detectron2 import; registrations

from .launch import launch

__all__ = ["launch"]
