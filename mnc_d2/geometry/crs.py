"""Which coordinate reference systems measure the ground in metres as they stand.

A projected CRS in metres is not always one: Mercator (Web Mercator, EPSG:3857, the CRS of
web-map exports, and World Mercator) stretches lengths by 1 / cos(latitude), 1.31 at 40 degrees,
and areas by its square. Lengths and areas in metres are taken in the local UTM zone instead
(:func:`needs_utm`).
"""

from __future__ import annotations


def is_mercator(crs) -> bool:
    """True for a (pyproj or rasterio) CRS projected by a Mercator method other than
    Transverse Mercator (UTM's, whose scale stays within 0.04% of 1 in its zone)."""
    from pyproj import CRS

    operation = CRS.from_user_input(crs).coordinate_operation
    name = operation.method_name if operation is not None else ""
    return "Mercator" in name and "Transverse" not in name


def needs_utm(crs) -> bool:
    """True when lengths and areas must be taken in the local UTM zone: a geographic CRS
    (degrees) or Mercator (:func:`is_mercator`)."""
    from pyproj import CRS

    return CRS.from_user_input(crs).is_geographic or is_mercator(crs)


def metre_units(crs) -> bool:
    """True when every axis of ``crs`` (pyproj or rasterio) is in metres (False for degrees,
    US survey feet, ...)."""
    from pyproj import CRS

    return all((axis.unit_name or "").lower() in ("metre", "meter")
               for axis in CRS.from_user_input(crs).axis_info)
