"""Whole-scene prediction on GeoTIFFs of any size: tiling, merging, georeferenced output."""

import mnc_d2

mnc_d2.setup()  # shims before any detectron2 import; registrations

from .predictor import ScenePrediction, ScenePredictor, write_outputs
from .tiling import in_core, merge_across_tiles, tile_grid

__all__ = ["ScenePrediction", "ScenePredictor", "in_core", "merge_across_tiles", "tile_grid",
           "write_outputs"]
