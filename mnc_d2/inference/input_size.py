"""The model's input size of a tile: Detectron2's test resize (INPUT.MIN/MAX_SIZE_TEST) of a
whole tile, and the one factor every tile is resized by so that an edge tile, a scene smaller
than a tile or another ``--tile-size`` is seen at the scale the model was trained at. Imports
nothing (the eager model and the export graph use it on machines without the geospatial stack).
"""

from __future__ import annotations


def resized_shape(height: int, width: int, short: int, longest: int) -> tuple[int, int]:
    """Detectron2's ResizeShortestEdge size for one (height, width) at test time."""
    scale = short / min(height, width)
    new_h, new_w = (short, scale * width) if height < width else (scale * height, short)
    if max(new_h, new_w) > longest:
        factor = longest / max(new_h, new_w)
        new_h, new_w = new_h * factor, new_w * factor
    return int(new_h + 0.5), int(new_w + 0.5)


def input_scale(reference: int, short: int, longest: int) -> float:
    """The factor the model's test resizing (``short`` = INPUT.MIN_SIZE_TEST, ``longest`` =
    MAX_SIZE_TEST) applies to a ``reference`` x ``reference`` tile (INPUT.TRAIN_TILE_SIZE): the
    one factor every tile is resized by, whatever its own size."""
    return resized_shape(reference, reference, short, longest)[0] / reference


def tile_scale(cfg, tile_size: int | None) -> float | None:
    """The factor every tile of ``tile_size`` (predict.py's --tile-size, the exported tile) is
    resized by for ``cfg``'s model: that of an INPUT.TRAIN_TILE_SIZE tile, else of a whole
    ``tile_size`` one; None when neither is known (resize each image to MIN_SIZE_TEST)."""
    reference = cfg.INPUT.TRAIN_TILE_SIZE or tile_size
    return (input_scale(reference, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
            if reference else None)


def scaled_shape(height: int, width: int, factor: float) -> tuple[int, int]:
    """(height, width) times ``factor``, rounded as Detectron2 rounds its resized sizes."""
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))
