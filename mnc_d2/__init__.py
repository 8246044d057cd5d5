"""mnc_d2: Multi-task Network Cascades (Dai, He, Sun, CVPR 2016) for SpaceNet building
footprints, as a Detectron2 extension.

Importing the package applies the compatibility shims (:mod:`mnc_d2.compat`) before any
detectron2 submodule is imported, then imports the modules that register components with
detectron2's registries and catalogs.
"""

from . import compat

compat.apply()

from .config import add_mnc_config  # noqa: E402
from .data import register_builtin_spacenet, register_spacenet_instances  # noqa: E402
from .evaluation.spacenet_evaluation import SpaceNetEvaluator  # noqa: E402
from .modeling import MNCROIHeads  # noqa: E402  (registers in ROI_HEADS_REGISTRY)

register_builtin_spacenet()

__version__ = "0.1.0"

__all__ = ["MNCROIHeads", "SpaceNetEvaluator", "add_mnc_config", "register_spacenet_instances", "__version__"]
