"""Modeling: the MNC cascade head and multi-band checkpoint loading."""

from .checkpoint import MultiBandCheckpointer, inflate_input_channels

__all__ = ["MultiBandCheckpointer", "inflate_input_channels"]
