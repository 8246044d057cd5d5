"""Whole-scene prediction on GeoTIFFs of any size: tiling, merging, georeferenced output.

Importing this package is light: :mod:`.merge` and :mod:`.tiling` (the city-wide footprint merge)
import neither torch nor detectron2. The names below load on first use.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ScenePrediction": ".predictor", "ScenePredictor": ".predictor",
    "in_core": ".tiling", "merge_across_tiles": ".tiling", "tile_grid": ".tiling",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module 'mnc_d2.inference' has no attribute {name!r}")
