"""Geometry shared by data, evaluation and inference (torch-free): polygon parts, mask ->
polygon, rectilinear regularisation, pixel <-> map coordinates, which buildings lie on the
imagery's data (:mod:`.on_data`)."""

from .polygons import (map_to_pixel, mask_to_polygon, mask_to_polygons, masks_to_polygon,
                       pixel_to_map, polygonal_parts, regularize_rectilinear)

__all__ = ["map_to_pixel", "mask_to_polygon", "mask_to_polygons", "masks_to_polygon",
           "pixel_to_map", "polygonal_parts", "regularize_rectilinear"]
