"""SpaceNet data: release descriptions, labels, dataset registration, band reader, N-band mapper
(synthetic data of every release: :mod:`mnc_d2.synthetic`); your own scenes and footprint files
(:mod:`.geo_dataset`).

Importing this package is light: the torch-free modules (:mod:`.versions`, :mod:`.bands`,
:mod:`.labels`, :mod:`.radiometry`) import neither torch nor detectron2. The Detectron2-facing
names below load on first use.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "SpaceNetDatasetMapper": ".mapper", "check_band_config": ".mapper",
    "compute_band_stats": ".band_stats", "resolve_band_stats": ".band_stats",
    "register_builtin_spacenet": ".builtin", "split_of": ".builtin",
    "input_bands": ".bands", "read_bands": ".bands",
    "DNTransform": ".radiometry", "dn_transform": ".radiometry",
    "dn_transform_from_config": ".radiometry",
    "load_spacenet_dicts": ".spacenet", "register_spacenet_instances": ".spacenet",
    "load_geo_dicts": ".geo_dataset", "register_geo_instances": ".geo_dataset",
    "SpaceNetVersion": ".versions", "VERSIONS": ".versions", "get_version": ".versions",
    "infer_version": ".versions",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module 'mnc_d2.data' has no attribute {name!r}")
