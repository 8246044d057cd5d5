"""SpaceNet data: layout, labels, dataset registration, N-band mapper, synthetic generator."""

import mnc_d2

mnc_d2.setup()  # shims before any detectron2 import; registrations

from .band_stats import compute_band_stats, resolve_band_stats
from .builtin import register_builtin_spacenet, split_of
from .bands import input_bands, read_bands
from .mapper import SpaceNetDatasetMapper, check_band_config
from .spacenet import load_spacenet_dicts, register_spacenet_instances

__all__ = ["SpaceNetDatasetMapper", "check_band_config", "compute_band_stats",
           "input_bands", "load_spacenet_dicts", "read_bands", "register_builtin_spacenet",
           "register_spacenet_instances", "resolve_band_stats", "split_of"]
