"""Which coordinate reference systems measure the ground in metres as they stand.

A projected CRS in metres is not always one: Mercator (Web Mercator, EPSG:3857, the CRS of
web-map exports, and World Mercator) stretches lengths by 1 / cos(latitude), 1.31 at 40 degrees,
and areas by its square. Lengths and areas in metres are taken in the local UTM zone instead
(:func:`needs_utm`, :func:`utm_crs_of`).
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


def local_utm_crs(lon: float, lat: float) -> str:
    """The UTM zone (WGS 84, "EPSG:326zz" north of the equator, "EPSG:327zz" south) of a point,
    by the zones' definition (6-degree bands from 180 degrees west): the zone pyproj's database
    query (geopandas' ``estimate_utm_crs``) returns for the point, without its cost (about
    0.05 s a query, once per scene and table when metrics are taken in metres). On a band's
    edge or the equator, where both neighbours' areas of use hold the point, this picks the
    east or north one."""
    zone = int((min(max(lon, -180.0), 179.999999) + 180.0) // 6) + 1
    return f"EPSG:{(32600 if lat >= 0 else 32700) + zone}"


def utm_crs_of(geoseries) -> str:
    """The local UTM zone (:func:`local_utm_crs`) of a GeoSeries or GeoDataFrame (a CRS set):
    the zone of the centre of its bounds in longitude and latitude, the point geopandas'
    ``estimate_utm_crs`` takes (bounds reprojected, densified; one that crosses the
    antimeridian centred across it)."""
    from pyproj import CRS, Transformer

    crs = CRS.from_user_input(geoseries.crs)
    west, south, east, north = geoseries.total_bounds
    if not crs.is_geographic:
        west, south, east, north = Transformer.from_crs(
            crs, "EPSG:4326", always_xy=True).transform_bounds(west, south, east, north)
        if west > east:  # across the antimeridian
            centre = ((west + east + 360) / 2 + 180) % 360 - 180
            return local_utm_crs(centre, (south + north) / 2)
    return local_utm_crs((west + east) / 2, (south + north) / 2)
