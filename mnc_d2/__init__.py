"""mnc_d2: Multi-task Network Cascades (Dai, He, Sun, CVPR 2016) for SpaceNet building
footprints, as a Detectron2 extension.

As with Detectron2's own projects, ``import mnc_d2`` is all a user does before using
Detectron2: the compatibility shims (:mod:`mnc_d2.compat`) then run before the first detectron2
module does, the built-in SpaceNet names are registered when ``detectron2.data`` is imported and
the MNC ROI head when ``detectron2.modeling`` is::

    import mnc_d2
    from detectron2.data import DatasetCatalog   # spacenet2_vegas_train ... are there

``import mnc_d2`` itself imports neither torch nor detectron2 (it only arms that hook), so the
torch-free parts (the SpaceNet scorer, the footprint merge, ``tools/score.py``,
``tools/merge_footprints.py``) start fast. :func:`setup` does all of it at once instead.
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"

from . import compat

compat.install()

_EXPORTS = {
    "MNCROIHeads": "mnc_d2.modeling",
    "SpaceNetEvaluator": "mnc_d2.evaluation.spacenet_evaluation",
    "add_mnc_config": "mnc_d2.config",
    "register_spacenet_instances": "mnc_d2.data",
}
__all__ = ["MNCROIHeads", "SpaceNetEvaluator", "__version__", "add_mnc_config",
           "register_spacenet_instances", "setup"]


def setup() -> None:
    """Apply the Detectron2 shims and register mnc_d2's components now (idempotent).

    Not needed after ``import mnc_d2`` (the same happens when Detectron2 is imported); it
    imports detectron2 and torch at once. A set-up that failed is tried again on the next call.
    """
    compat.apply()


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mnc_d2' has no attribute {name!r}")
