"""Kept for imports of mnc_d2 0.2: the polygon step lives in :mod:`mnc_d2.geometry.instances`
(torch-free, shared with the exported-model backends)."""

from ..geometry.instances import instances_to_polygons

__all__ = ["instances_to_polygons"]
