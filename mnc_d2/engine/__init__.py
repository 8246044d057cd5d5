"""Training-side helpers: the CPU-capable launcher."""

from .launch import launch

__all__ = ["launch"]
