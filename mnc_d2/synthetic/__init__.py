"""Synthetic data in the exact layouts of the SpaceNet releases: the embedded default data of
the demo, the tests and the benchmarks (SpaceNet itself cannot be downloaded here).

:mod:`.spacenet2` draws scenes (buildings of several shapes and roofs, roads, trees, clutter; two
data settings) and writes SpaceNet 2 city folders; :mod:`.releases` writes SpaceNet 1 and 4
layouts from the same scenes. Files are written through :mod:`mnc_d2.formats`. Torch-free.
"""

from .releases import generate, generate_spacenet1, generate_spacenet4
from .spacenet2 import SETTINGS, STYLES, ensure_synthetic, generate_city, render_scene

__all__ = ["SETTINGS", "STYLES", "ensure_synthetic", "generate", "generate_city",
           "generate_spacenet1", "generate_spacenet4", "render_scene"]
