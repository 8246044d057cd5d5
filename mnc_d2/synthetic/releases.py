"""Synthetic SpaceNet 1 and SpaceNet 4 folders in their released layouts (:mod:`.versions`), so
tests and examples cover every release. SpaceNet 2 is :func:`.synthetic.generate_city`;
:func:`generate` dispatches on the release name.

Scenes come from the same renderer as SpaceNet 2 (:func:`.synthetic.render_scene`). What follows
each release exactly: folder and file names, ImageIds, products with their band counts, sizes and
dtypes, CRS (SpaceNet 1 lon/lat, SpaceNet 4 UTM 16N with ``{x}_{y}`` tile ids at 450 m steps),
label files and summary CSVs. Approximations, named: objects are drawn at the renderer's 0.3 m
scale whatever the release's pixel size (the transforms carry the release's pixel size, so areas
in m2 are not those of the drawing); SpaceNet 4's off-nadir views of a tile are one scene seen
through blur and haze that grow with the angle, not a true parallax (the labels, as released,
are the same footprints for every view).
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import shapely
from rasterio.transform import Affine
from shapely import affinity
from shapely.geometry import mapping, shape

from ..data.versions import SPACENET1, SPACENET4, nadir_angle, nadir_bin
from ..formats.geojson import write_label_geojson
from ..formats.geotiff import write_geotiff
from ..formats.spacenet_csv import spacenet_wkt, write_summary_csv
from .spacenet2 import (ATTRIBUTE_HEADER, SETTINGS, STYLES, CityStyle, empty_row, generate_city,
                        render_scene, scene_rng, tile_labels, tile_transform, to_dn)

logger = logging.getLogger(__name__)

RIO = CityStyle("grass", (-43.30, -22.90), (12, 30), 20, (0.20, 0.35, 0.15, 0.15, 0.15), 10)
ATLANTA = CityStyle("grass", (-84.40, 33.75), (8, 22), 15, (0.30, 0.10, 0.15, 0.30, 0.15), 16)

# SpaceNet 4's 27 collects: (off-nadir angle, catalog id), as the release names its folders.
SN4_COLLECTS = (
    (7, "1030010003D22F00"), (8, "10300100023BC100"), (10, "1030010003993E00"),
    (10, "1030010003CAF100"), (13, "1030010002B7D800"), (14, "10300100039AB000"),
    (16, "1030010002649200"), (19, "1030010003C92000"), (21, "1030010003127500"),
    (23, "103001000352C200"), (25, "103001000307D800"), (27, "1030010003472200"),
    (29, "1030010003315300"), (30, "10300100036D5200"), (32, "103001000392F600"),
    (34, "1030010003697400"), (36, "1030010003895500"), (39, "1030010003832800"),
    (42, "10300100035D1B00"), (44, "1030010003CCD700"), (46, "1030010003713C00"),
    (47, "10300100033C5200"), (49, "1030010003492700"), (50, "10300100039E6200"),
    (52, "1030010003BDDC00"), (53, "1030010003193D00"), (53, "1030010003CD4300"),
)
# One collect per nadir segment by default: small, and every segment scored.
DEFAULT_SN4_COLLECTS = ("Atlanta_nadir7_catid_1030010003D22F00",
                        "Atlanta_nadir30_catid_10300100036D5200",
                        "Atlanta_nadir50_catid_10300100039E6200")
SN4_ORIGIN = (733601, 3725139)  # UTM 16N origin of the first tile (the real sample's tile)
SN4_TILE_M = 450
SN1_SIZE = (438, 406)  # width, height of a 3band chip; 8band is a quarter of it


def sn4_collect_names() -> list[str]:
    return [f"Atlanta_nadir{angle}_catid_{catid}" for angle, catid in SN4_COLLECTS]


def generate_spacenet1(out_root: str | Path, num_images: int, seed: int = 0,
                       setting: str = "default") -> Path:
    """Write ``<out_root>/SN1_buildings_train_AOI_1_Rio`` (3band, 8band, geojson, summary CSVs)."""
    root = Path(out_root) / SPACENET1.area("rio").folder
    width, height = SN1_SIZE
    gsd = SPACENET1.product("3band").gsd_m
    small = (width // 4, height // 4)
    rows = {"3band": [], "8band": []}
    attrs_all = []
    for index in range(num_images):
        image_id = f"AOI_1_RIO_img{index + 1}"
        reflectance, footprints, attrs = render_scene(scene_rng(seed, 101, index, setting), RIO,
                                                      size=width, setting=SETTINGS[setting])
        reflectance = reflectance[:, :height, :width]
        transform = tile_transform(RIO, index, width, gsd)
        write_geotiff(root / "3band" / f"3band_{image_id}.tif",
                  to_dn(reflectance[[4, 2, 1]], 255, np.uint8), transform)
        eight = np.stack([cv2.resize(b, small, interpolation=cv2.INTER_AREA) for b in reflectance])
        sx, sy = width / small[0], height / small[1]
        write_geotiff(root / "8band" / f"8band_{image_id}.tif", to_dn(eight),
                  transform @ Affine.scale(sx, sy))
        tile_rows, features, attr_rows = tile_labels(image_id, footprints, attrs, transform,
                                                     width, height, gsd)
        write_label_geojson(root / "geojson" / f"Geo_{image_id}.geojson", features)
        rows["3band"].extend(tile_rows or [empty_row(image_id)])
        # The 8band CSV's pixels are on the 8band grid.
        rows["8band"].extend([[r[0], r[1], _scaled_wkt(r[2], 1 / sx, 1 / sy), r[3]]
                              for r in tile_rows] or [empty_row(image_id)])
        attrs_all.extend(attr_rows)
    summary = root / "vectordata" / "summarydata"
    for product, product_rows in rows.items():
        write_summary_csv(summary / f"AOI_1_RIO_polygons_solution_{product}.csv", product_rows)
    write_summary_csv(summary / "AOI_1_RIO_Building_Attributes.csv", attrs_all, ATTRIBUTE_HEADER)
    return root


def _scaled_wkt(text: str, sx: float, sy: float) -> str:
    return spacenet_wkt(affinity.scale(shapely.from_wkt(text), sx, sy, origin=(0, 0)))


def _view(reflectance: np.ndarray, angle: int) -> np.ndarray:
    """The scene seen ``angle`` degrees off nadir (approximation: blur and haze grow with it)."""
    sigma = 0.3 + 2.5 * angle / 54
    hazed = np.stack([cv2.GaussianBlur(b, (0, 0), sigma) for b in reflectance])
    haze = 0.15 * angle / 54
    return hazed * (1 - haze) + haze * hazed.mean()


def generate_spacenet4(out_root: str | Path, num_tiles: int, seed: int = 0,
                       setting: str = "default",
                       collects: tuple[str, ...] = DEFAULT_SN4_COLLECTS) -> Path:
    """Write ``<out_root>/SN4_buildings_train_AOI_6_Atlanta``: each tile in every collect
    (Pan-Sharpen, PAN, MS), one GeoJSON per tile (EPSG:4326), one summary CSV per collect."""
    from pyproj import Transformer

    root = Path(out_root) / SPACENET4.area("atlanta").folder
    known = set(sn4_collect_names())
    unknown = [c for c in collects if c not in known]
    if unknown:
        raise ValueError(f"collects {unknown} are not SpaceNet 4 collects; expected names like "
                         f"{DEFAULT_SN4_COLLECTS[0]}")
    size = SPACENET4.product("Pan-Sharpen").size[0]
    ms = SPACENET4.product("MS").size[0]
    gsd = SPACENET4.product("Pan-Sharpen").gsd_m
    to_lonlat = Transformer.from_crs("EPSG:32616", "EPSG:4326", always_xy=True)
    rows = {c: [] for c in collects}
    attrs_all = []
    for index in range(num_tiles):
        row, col = divmod(index, 10)
        x0, y0 = SN4_ORIGIN[0] + col * SN4_TILE_M, SN4_ORIGIN[1] - row * SN4_TILE_M
        tile = f"{x0}_{y0}"
        transform = Affine(gsd, 0.0, x0, 0.0, -gsd, y0)
        reflectance, footprints, attrs = render_scene(scene_rng(seed, 104, index, setting), ATLANTA,
                                                      size=size, setting=SETTINGS[setting])
        tile_rows, features, attr_rows = tile_labels(tile, footprints, attrs, transform, size,
                                                     size, gsd, wkt_style="shapely")
        for feature in features:  # UTM -> lon/lat, as the released label files
            feature["geometry"] = _reproject(feature["geometry"], to_lonlat)
        write_label_geojson(root / "geojson" / "spacenet-buildings" /
                             f"spacenet-buildings_{tile}.geojson", features)
        attrs_all.extend(attr_rows)
        for collect in collects:
            image_id = f"{collect}_{tile}"
            view = _view(reflectance, nadir_angle(collect))
            bgrn = view[[1, 2, 4, 6]]  # blue, green, red, NIR1
            folder = root / collect
            write_geotiff(folder / "Pan-Sharpen" / f"Pan-Sharpen_{image_id}.tif", to_dn(bgrn),
                      transform, "EPSG:32616")
            write_geotiff(folder / "PAN" / f"PAN_{image_id}.tif",
                      to_dn(view[1:6].mean(axis=0, keepdims=True)), transform, "EPSG:32616")
            low = np.stack([cv2.resize(b, (ms, ms), interpolation=cv2.INTER_AREA) for b in bgrn])
            write_geotiff(folder / "MS" / f"MS_{image_id}.tif", to_dn(low),
                      transform @ Affine.scale(size / ms, size / ms), "EPSG:32616")
            rows[collect].extend([[image_id, *r[1:]] for r in tile_rows]
                                 or [empty_row(image_id)])
    for collect, collect_rows in rows.items():
        write_summary_csv(root / "summaryData" / f"{collect}_Train.csv", collect_rows)
    write_summary_csv(root / "Building_Attributes.csv", attrs_all, ATTRIBUTE_HEADER)
    logger.info("SpaceNet 4 synthetic: %d tiles x %d collects (%s)", num_tiles, len(collects),
                ", ".join(sorted({nadir_bin(c) for c in collects})))
    return root


def _reproject(geometry: dict, transformer) -> dict:
    geom = shapely.transform(shape(geometry), lambda xy: np.column_stack(
        transformer.transform(xy[:, 0], xy[:, 1])))
    return mapping(shapely.set_precision(geom, 1e-9))


def generate(version: str, out_root: str | Path, count: int, seed: int = 0,
             setting: str = "default", cities: tuple[str, ...] = ("vegas", "paris")) -> list[Path]:
    """Synthetic data of release ``version`` under ``out_root`` (``count`` images per city for
    SpaceNet 2, images for SpaceNet 1, tiles for SpaceNet 4); returns the area folders."""
    if version == "spacenet2":
        unknown = [c for c in cities if c not in STYLES]
        if unknown:
            raise ValueError(f"cities {unknown} are not among {sorted(STYLES)}")
        return [generate_city(out_root, c, count, seed=seed, progress=False, setting=setting)
                for c in cities]
    if version == "spacenet1":
        return [generate_spacenet1(out_root, count, seed, setting)]
    if version == "spacenet4":
        return [generate_spacenet4(out_root, count, seed, setting)]
    raise ValueError(f"version={version!r} is not one of spacenet1, spacenet2, spacenet4")
