"""mnc_d2: Multi-task Network Cascades (Dai, He, Sun, CVPR 2016) for SpaceNet building
footprints, as a Detectron2 extension.

Importing the package applies the compatibility shims (:mod:`mnc_d2.compat`) before any
detectron2 submodule is imported, then imports the modules that register components with
detectron2's registries and catalogs.
"""

from . import compat

compat.apply()

from .config import add_mnc_config  # noqa: E402

__version__ = "0.1.0"

__all__ = ["add_mnc_config", "__version__"]
