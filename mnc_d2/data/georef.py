"""Whether an open raster is placed on a map grid, and what to do when it is not.

Buildings are placed on the map through the raster's CRS and geotransform (the pixel -> map
affine). Imagery can lack either in ways that look alike to a reader but need different fixes:
no georeferencing at all, ground control points only (a scanned or raw image tied to the map at
a few points), rational polynomial coefficients only (raw, not orthorectified, satellite
imagery), or a CRS without a geotransform (GDAL then reports the identity affine, which would
put the scene's pixels at map coordinates 0..width, 0..height of that CRS: silently wrong
places). Each case gets a message naming the file and the command that fixes it; warping onto
a grid is left to GDAL, where the user chooses the resampling and, for RPCs, the elevation
model.
"""

from __future__ import annotations


def georeferencing_problem(src, shown: str) -> str | None:
    """Why ``src`` (an open rasterio dataset; ``shown`` its name in the message) cannot place
    buildings on a map, or None when it has a CRS and a geotransform."""
    gcps, gcp_crs = src.gcps
    if src.crs is None or src.transform.is_identity:
        if gcps:
            where = f" (in {gcp_crs})" if gcp_crs else ""
            return (f"{shown} is georeferenced only by {len(gcps)} ground control "
                    f"points{where}, not by a map grid; warp it onto one first, e.g. "
                    "gdalwarp -t_srs EPSG:<its UTM zone> -r bilinear IN.tif OUT.tif")
        if src.rpcs is not None:
            return (f"{shown} has rational polynomial coefficients (RPCs) but no map grid: "
                    "raw, not orthorectified, imagery; orthorectify it first, e.g. gdalwarp "
                    "-rpc -to RPC_DEM=dem.tif -t_srs EPSG:<its UTM zone> -r bilinear IN.tif "
                    "OUT.tif")
    if src.crs is None:
        return (f"{shown} has no CRS, so its buildings cannot be placed on a map; "
                "georeference it (e.g. gdal_edit.py -a_srs EPSG:32611 ...)")
    if src.transform.is_identity:
        return (f"{shown} has a CRS ({src.crs.to_string()}) but no geotransform (the pixel -> "
                "map affine), so its buildings cannot be placed on the map; assign one (e.g. "
                "gdal_edit.py -a_ullr ULX ULY LRX LRY) or use the original file")
    return None
