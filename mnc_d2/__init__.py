"""mnc_d2: Multi-task Network Cascades (Dai, He, Sun, CVPR 2016) for SpaceNet building
footprints, as a Detectron2 extension.

``import mnc_d2`` is light: it imports neither torch nor detectron2, so torch-free parts (the
SpaceNet scorer, :mod:`mnc_d2.evaluation.spacenet_metric`, and ``tools/score.py``) start fast.
:func:`setup` applies the compatibility shims (:mod:`mnc_d2.compat`) and registers the MNC ROI
head and the built-in SpaceNet datasets with Detectron2. It runs on first use of any Detectron2
part: importing :mod:`mnc_d2.modeling`, :mod:`mnc_d2.data`, :mod:`mnc_d2.engine`,
:mod:`mnc_d2.inference` or :mod:`mnc_d2.config`, or reading one of the names below from the
package (``mnc_d2.add_mnc_config``...). Scripts call ``mnc_d2.setup()`` first.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "MNCROIHeads": "mnc_d2.modeling",
    "SpaceNetEvaluator": "mnc_d2.evaluation.spacenet_evaluation",
    "add_mnc_config": "mnc_d2.config",
    "register_spacenet_instances": "mnc_d2.data",
}
_SETUP_DONE = False

__all__ = ["MNCROIHeads", "SpaceNetEvaluator", "__version__", "add_mnc_config",
           "register_spacenet_instances", "setup"]


def setup() -> None:
    """Apply the Detectron2 shims and register mnc_d2's components (idempotent).

    Must run before any detectron2 submodule is imported; the Detectron2-facing subpackages
    call it at import time.
    """
    global _SETUP_DONE
    if _SETUP_DONE:
        return
    _SETUP_DONE = True
    from . import compat

    compat.apply()
    importlib.import_module("mnc_d2.modeling")  # registers MNCROIHeads
    from .data.builtin import register_builtin_spacenet

    register_builtin_spacenet()


def __getattr__(name: str):
    if name in _EXPORTS:
        setup()
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mnc_d2' has no attribute {name!r}")
