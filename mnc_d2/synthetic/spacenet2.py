"""Synthetic SpaceNet 2 data in the exact released layout (the project's embedded default).

``generate_city(out_root, city, num_images, seed)`` writes ``<out_root>/<AOI>_Train/`` with the
four products (RGB-PanSharpen 3 bands, MUL-PanSharpen 8 bands and PAN 1 band at 650x650, MUL 8
bands at 163x163; uint16 holding 11-bit values; EPSG:4326 georeferencing), per-image building
GeoJSON in lon/lat, and the summary CSV (pixel WKT with z=0, ``POLYGON EMPTY`` rows for empty
images). Everything is deterministic in (seed, city, image index).

Scenes reproduce SpaceNet's hard cases: rectangles and L-, U-, T-shaped and courtyard (holed)
buildings, small buildings down to ~4 m, dark roofs, shadows, roads, trees (some overhanging
roofs), buildings cut by the tile edge and empty tiles. Materials have distinct 8-band
WorldView-3 signatures: dark roofs look like asphalt and shadow in RGB but are brighter in red
edge / NIR, so 8-band input can help.

Two settings (``setting=``): ``"default"`` as above, and ``"hard"``: denser tiles with more and
smaller buildings (down to ~3 m) packed closer together, twice the trees, extra clutter (cars,
containers and sheds' worth of small dark and bright patches that are not buildings), more roads,
and dark roofs that stay dark in every band, near infrared included (``roof_dark_nir``), so 8-band
input cannot simply separate them. The hard setting exists so that claims are checked on data
whose statistics no model or default was tuned on.

An extra file, ``summaryData/<AOI>_Train_Building_Attributes.csv`` (ImageId, BuildingId, shape,
roof, area_m2, solidity), records what each building is, for failure-mode benchmarks.
"""

from __future__ import annotations

import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import rasterio
import rasterio.features
import shapely
from rasterio.transform import Affine
from shapely import affinity
from shapely.geometry import Polygon, box

from ..data.versions import SPACENET2
from ..formats.geojson import write_label_geojson
from ..formats.geotiff import write_geotiff
from ..formats.spacenet_csv import spacenet_wkt, write_summary_csv

logger = logging.getLogger(__name__)

GSD_M = 0.3  # metres per pixel of the pan-sharpened grid
LABEL_GRID = SPACENET2.product("RGB-PanSharpen").size[0]  # 650
MUL_SIZE = SPACENET2.product("MUL").size[0]  # 163
CITIES = {a.short: a.aoi for a in SPACENET2.areas}

# Reflectance per WorldView-3 band: coastal, blue, green, yellow, red, red edge, NIR1, NIR2.
SIGNATURES = {
    "soil": (0.20, 0.22, 0.26, 0.30, 0.33, 0.36, 0.38, 0.39),
    "dark_soil": (0.13, 0.14, 0.17, 0.20, 0.23, 0.26, 0.28, 0.29),
    "grass": (0.05, 0.06, 0.10, 0.09, 0.07, 0.20, 0.40, 0.42),
    "pavement": (0.17, 0.18, 0.19, 0.19, 0.20, 0.20, 0.21, 0.21),
    "asphalt": (0.09, 0.09, 0.10, 0.10, 0.11, 0.11, 0.12, 0.12),
    "tree": (0.03, 0.04, 0.08, 0.07, 0.05, 0.18, 0.45, 0.47),
    "roof_concrete": (0.40, 0.45, 0.48, 0.50, 0.50, 0.50, 0.48, 0.47),
    "roof_tile": (0.08, 0.09, 0.12, 0.20, 0.35, 0.40, 0.42, 0.42),
    "roof_metal": (0.36, 0.40, 0.37, 0.33, 0.30, 0.28, 0.26, 0.25),
    "roof_grey": (0.24, 0.26, 0.27, 0.27, 0.27, 0.28, 0.29, 0.29),
    # Dark roofs: as dark as asphalt in the visible bands, bright in red edge / NIR.
    "roof_dark": (0.07, 0.07, 0.08, 0.08, 0.09, 0.22, 0.32, 0.33),
    # Hard setting: dark in every band (tar, dark membranes), only texture and shape tell.
    "roof_dark_nir": (0.06, 0.06, 0.07, 0.07, 0.08, 0.08, 0.09, 0.09),
    # Hard setting: clutter that is not a building.
    "clutter_dark": (0.05, 0.05, 0.06, 0.06, 0.06, 0.07, 0.08, 0.08),
    "clutter_bright": (0.42, 0.46, 0.47, 0.47, 0.46, 0.45, 0.44, 0.43),
}
ATTRIBUTE_HEADER = ("ImageId", "BuildingId", "shape", "roof", "area_m2", "solidity")
DARK_ROOFS = ("roof_dark", "roof_dark_nir")


@dataclass(frozen=True)
class CityStyle:
    ground: str
    origin: tuple[float, float]  # lon, lat of the first tile
    buildings: tuple[int, int]  # min, max buildings per non-empty tile
    angle_jitter: float  # degrees around the street grid orientation
    roofs: tuple[float, ...]  # probabilities of concrete, tile, metal, grey, dark
    trees: int


STYLES = {
    "vegas": CityStyle("soil", (-115.30, 36.20), (18, 40), 4, (0.35, 0.25, 0.10, 0.15, 0.15), 6),
    "paris": CityStyle("grass", (2.30, 48.85), (8, 24), 25, (0.15, 0.40, 0.10, 0.20, 0.15), 14),
    "shanghai": CityStyle("pavement", (121.40, 31.20), (15, 35), 10,
                          (0.25, 0.10, 0.25, 0.25, 0.15), 8),
    "khartoum": CityStyle("dark_soil", (32.50, 15.60), (20, 45), 30,
                          (0.30, 0.05, 0.25, 0.20, 0.20), 4),
}
ROOFS = ("roof_concrete", "roof_tile", "roof_metal", "roof_grey", "roof_dark")
SHAPES = ("rect", "L", "U", "T", "courtyard", "small")
SHAPE_P = (0.34, 0.18, 0.08, 0.08, 0.08, 0.24)
EMPTY_TILE_P = 0.08


@dataclass(frozen=True)
class Setting:
    """How a generated city departs from its CityStyle (see the module docstring)."""

    density: float = 1.0  # multiplier of the buildings per tile
    halo_m: float = 2.5  # minimum gap between buildings, metres
    shape_p: tuple[float, ...] = SHAPE_P
    small_m: tuple[float, float] = (4.0, 7.0)  # side range of "small" buildings, metres
    trees: float = 1.0  # multiplier of the trees per tile
    clutter: int = 0  # mean number of non-building patches per tile
    roads: tuple[int, int] = (0, 3)  # range of roads per tile (high end exclusive)
    dark_roof: str = "roof_dark"  # the material drawn for "dark" roofs


SETTINGS = {
    "default": Setting(),
    "hard": Setting(density=1.6, halo_m=1.0, shape_p=(0.26, 0.14, 0.06, 0.06, 0.06, 0.42),
                    small_m=(3.0, 6.0), trees=2.0, clutter=25, roads=(1, 4),
                    dark_roof="roof_dark_nir"),
}


def _m(metres: float) -> float:
    return metres / GSD_M


def building_shape(kind: str, rng: np.random.Generator,
                   small_m: tuple[float, float] = (4.0, 7.0)) -> Polygon:
    """A footprint of ``kind`` in pixels, centred at the origin, axis-aligned."""
    if kind == "small":
        w, h = _m(rng.uniform(*small_m)), _m(rng.uniform(*small_m))
        return box(-w / 2, -h / 2, w / 2, h / 2)
    if kind == "rect":
        w, h = _m(rng.uniform(8, 24)), _m(rng.uniform(7, 18))
        return box(-w / 2, -h / 2, w / 2, h / 2)
    w, h = _m(rng.uniform(14, 28)), _m(rng.uniform(12, 24))
    outer = box(-w / 2, -h / 2, w / 2, h / 2)
    t = rng.uniform(0.38, 0.55)
    if kind == "L":
        cut = box(-w / 2 + w * t, -h / 2 + h * t, w / 2, h / 2)
    elif kind == "U":
        arm = w * t / 2
        cut = box(-w / 2 + arm, -h / 2 + h * t, w / 2 - arm, h / 2)
    elif kind == "T":
        stem = w * t / 2
        cut = shapely.union(box(-w / 2, -h / 2 + h * t, -stem, h / 2),
                            box(stem, -h / 2 + h * t, w / 2, h / 2))
    elif kind == "courtyard":
        cut = box(-w * t / 2, -h * t / 2, w * t / 2, h * t / 2)
    else:
        raise ValueError(f"unknown building kind {kind!r}")
    shape = outer.difference(cut)
    return shape if shape.geom_type == "Polygon" else max(shape.geoms, key=lambda g: g.area)


def _noise(rng: np.random.Generator, size: int, scale: int, amplitude: float) -> np.ndarray:
    """Smooth multiplicative texture (1 +- amplitude), (size, size) float32."""
    coarse = rng.normal(0, 1, (size // scale + 2, size // scale + 2)).astype(np.float32)
    smooth = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    return 1.0 + amplitude * smooth / max(float(np.abs(smooth).max()), 1e-6)


def _paint(image: np.ndarray, geoms, material: str, rng, texture: float = 0.05) -> None:
    if not geoms:
        return
    mask = rasterio.features.rasterize(geoms, out_shape=image.shape[1:], dtype=np.uint8) > 0
    sig = np.asarray(SIGNATURES[material], dtype=np.float32) * rng.uniform(0.9, 1.1)
    tex = _noise(rng, image.shape[1], 16, texture)
    image[:, mask] = sig[:, None] * tex[mask][None]


def _place_buildings(rng, style: CityStyle, size: int, setting: Setting = SETTINGS["default"]):
    """Non-overlapping footprints (pixel coords, may cross the tile edge) with attributes."""
    n = int(round(int(rng.integers(*style.buildings)) * setting.density))
    base = rng.uniform(0, 90)
    placed, attrs = [], []
    for _ in range(n * 6):
        if len(placed) >= n:
            break
        kind = str(rng.choice(SHAPES, p=setting.shape_p))
        shape = building_shape(kind, rng, setting.small_m)
        angle = base + rng.normal(0, style.angle_jitter) + 90 * rng.integers(0, 4)
        cx, cy = rng.uniform(-0.04 * size, 1.04 * size, 2)
        poly = affinity.translate(affinity.rotate(shape, angle, origin=(0, 0)), cx, cy)
        halo = poly.buffer(_m(setting.halo_m))
        if any(halo.intersects(p) for p in placed):
            continue
        placed.append(poly)
        roof = str(rng.choice(ROOFS, p=style.roofs))
        attrs.append({"shape": kind, "roof": setting.dark_roof if roof == "roof_dark" else roof})
    return placed, attrs


def _clutter(rng: np.random.Generator, count: int, size: int) -> dict[str, list]:
    """Small non-building patches (cars, containers, sheds' worth), dark and bright."""
    patches = {"clutter_dark": [], "clutter_bright": []}
    for _ in range(int(rng.poisson(count)) if count else 0):
        w, h = _m(rng.uniform(1.5, 5.0)), _m(rng.uniform(1.5, 3.0))
        patch = affinity.rotate(box(-w / 2, -h / 2, w / 2, h / 2), rng.uniform(0, 180))
        patch = affinity.translate(patch, *rng.uniform(0, size, 2))
        patches["clutter_dark" if rng.random() < 0.5 else "clutter_bright"].append(patch)
    return patches


def render_scene(rng: np.random.Generator, style: CityStyle, size: int = LABEL_GRID,
                 setting: Setting = SETTINGS["default"]):
    """One scene: (8, size, size) reflectance, building footprints and their attributes."""
    image = np.empty((8, size, size), dtype=np.float32)
    image[:] = np.asarray(SIGNATURES[style.ground], np.float32)[:, None, None]
    image *= _noise(rng, size, 64, 0.15)[None]
    roads = []
    for _ in range(int(rng.integers(*setting.roads))):
        y, w = rng.uniform(0, size), _m(rng.uniform(6, 12))
        road = box(-size, y - w / 2, 2 * size, y + w / 2)
        roads.append(affinity.rotate(road, rng.uniform(0, 180), origin=(size / 2, size / 2)))
    _paint(image, roads, "asphalt", rng, 0.03)
    empty = rng.random() < EMPTY_TILE_P
    footprints, attrs = ([], []) if empty else _place_buildings(rng, style, size, setting)
    # Shadows: each footprint shifted away from the sun darkens what lies under it.
    sun = rng.uniform(0, 2 * math.pi)
    shift = _m(rng.uniform(1.5, 4.0))
    shadows = [affinity.translate(f, shift * math.cos(sun), shift * math.sin(sun))
               for f in footprints]
    if shadows:
        mask = rasterio.features.rasterize(shadows, out_shape=(size, size), dtype=np.uint8) > 0
        image[:, mask] *= 0.35
    trees = [shapely.Point(*rng.uniform(0, size, 2)).buffer(_m(rng.uniform(1.5, 4)))
             for _ in range(int(rng.poisson(style.trees * setting.trees)))]
    _paint(image, trees[: len(trees) // 2], "tree", rng, 0.2)
    for material, patches in _clutter(rng, setting.clutter, size).items():
        _paint(image, patches, material, rng, 0.1)
    for poly, attr in zip(footprints, attrs):
        _paint(image, [poly], attr["roof"], rng, 0.04)
    _paint(image, trees[len(trees) // 2:], "tree", rng, 0.2)  # some overhang roofs
    image = cv2.GaussianBlur(image.transpose(1, 2, 0), (0, 0), 0.7).transpose(2, 0, 1)
    image += rng.normal(0, 0.008, image.shape).astype(np.float32)
    return image, footprints, attrs


def to_dn(reflectance: np.ndarray, max_dn: int = 2047, dtype=np.uint16) -> np.ndarray:
    """Reflectance -> digital numbers 0..``max_dn`` (reflectance 0.6 saturates): uint16 holding
    11-bit values by default, ``(255, np.uint8)`` for 8-bit products."""
    return np.clip(np.round(reflectance * max_dn / 0.6), 0, max_dn).astype(dtype)


def solidity(geom) -> float:
    return float(geom.area / geom.convex_hull.area) if geom.area > 0 else 0.0


def tile_transform(style: CityStyle, index: int, size: int = LABEL_GRID,
                   gsd_m: float = GSD_M) -> Affine:
    """EPSG:4326 transform of tile ``index`` with ``gsd_m`` pixels (tiles of ``size`` pixels
    laid out on a 100-wide grid)."""
    lon0, lat0 = style.origin
    dy = gsd_m / 111_320.0
    dx = dy / math.cos(math.radians(lat0))
    row, col = divmod(index, 100)
    return Affine(dx, 0.0, lon0 + col * size * dx, 0.0, -dy, lat0 - row * size * dy)


def scene_rng(seed: int, stream: int, index: int, setting: str) -> np.random.Generator:
    """The generator of scene ``index``: ``stream`` separates cities (SpaceNet 2: the city's
    position in CITIES) and releases (100 + release number); the default setting keeps the
    seed sequences the generator had before settings existed."""
    extra = [] if setting == "default" else [list(SETTINGS).index(setting)]
    return np.random.default_rng([seed, stream, index, *extra])


def empty_row(image_id: str) -> list:
    """The summary CSV row of an image without buildings."""
    return [image_id, -1, "POLYGON EMPTY", "POLYGON EMPTY"]


def generate_image(aoi_root: Path, city: str, index: int, seed: int,
                   setting: str = "default") -> tuple[list, list]:
    """Write one image in all four products plus its GeoJSON; return its CSV rows."""
    style = STYLES[city]
    aoi = CITIES[city]
    image_id = f"{aoi}_img{index + 1}"
    rng = scene_rng(seed, list(CITIES).index(city), index, setting)
    reflectance, footprints, attrs = render_scene(rng, style, setting=SETTINGS[setting])
    transform = tile_transform(style, index)
    mul = to_dn(reflectance)
    write_geotiff(aoi_root / "MUL-PanSharpen" / f"MUL-PanSharpen_{image_id}.tif", mul, transform)
    write_geotiff(aoi_root / "RGB-PanSharpen" / f"RGB-PanSharpen_{image_id}.tif", mul[[4, 2, 1]],
              transform)
    pan = to_dn(reflectance[1:6].mean(axis=0, keepdims=True))
    write_geotiff(aoi_root / "PAN" / f"PAN_{image_id}.tif", pan, transform)
    small = np.stack([cv2.resize(band, (MUL_SIZE, MUL_SIZE), interpolation=cv2.INTER_AREA)
                      for band in reflectance])
    scale = LABEL_GRID / MUL_SIZE
    write_geotiff(aoi_root / "MUL" / f"MUL_{image_id}.tif", to_dn(small),
              transform @ Affine.scale(scale, scale))

    rows, features, attr_rows = tile_labels(image_id, footprints, attrs, transform,
                                            LABEL_GRID, LABEL_GRID)
    if not rows:
        rows.append(empty_row(image_id))
    write_label_geojson(aoi_root / "geojson" / "buildings" / f"buildings_{image_id}.geojson",
                         features)
    return rows, attr_rows


def tile_labels(image_id: str, footprints, attrs, transform: Affine, width: int, height: int,
                gsd_m: float = GSD_M, wkt_style: str = "ogr") -> tuple[list, list, list]:
    """Footprints drawn on a scene -> (summary CSV rows, GeoJSON features in the transform's CRS,
    attribute rows) of the ``width`` x ``height`` tile; buildings cut by the edge are clipped.
    ``wkt_style``: the release's WKT text (:func:`mnc_d2.formats.spacenet_csv.spacenet_wkt`)."""
    tile = box(0, 0, width, height)
    rows, features, attr_rows = [], [], []
    for poly, attr in zip(footprints, attrs):
        clipped = poly.intersection(tile)
        if clipped.is_empty or clipped.area < 1.0:
            continue
        if clipped.geom_type != "Polygon":
            clipped = max(shapely.get_parts(clipped), key=lambda g: g.area)
        geo = affinity.affine_transform(clipped, [transform.a, transform.b, transform.d,
                                                  transform.e, transform.c, transform.f])
        building_id = len(rows)
        rows.append([image_id, building_id, spacenet_wkt(clipped, wkt_style),
                     spacenet_wkt(geo, wkt_style)])
        features.append({"type": "Feature", "properties": {"Id": 0, "building": "yes"},
                         "geometry": shapely.geometry.mapping(shapely.set_precision(geo, 1e-9))})
        attr_rows.append([image_id, building_id, attr["shape"], attr["roof"],
                          round(clipped.area * gsd_m ** 2, 2), round(solidity(clipped), 4)])
    return rows, features, attr_rows


def generate_city(out_root: str | Path, city: str, num_images: int, seed: int = 0,
                  progress: bool = True, setting: str = "default") -> Path:
    """Write ``<out_root>/<AOI>_Train`` for ``city`` (vegas, paris, shanghai, khartoum) in the
    given ``setting`` ("default" or "hard", see the module docstring)."""
    if city not in STYLES:
        raise ValueError(f"city={city!r} is not one of {sorted(STYLES)}")
    if setting not in SETTINGS:
        raise ValueError(f"setting={setting!r} is not one of {sorted(SETTINGS)}")
    if num_images < 1:
        raise ValueError(f"num_images={num_images} must be >= 1")
    from tqdm import tqdm

    aoi_root = Path(out_root) / f"{CITIES[city]}_Train"
    all_rows, all_attrs = [], []
    for index in tqdm(range(num_images), desc=f"synthetic {CITIES[city]}", unit="img",
                      disable=not progress):
        rows, attrs = generate_image(aoi_root, city, index, seed, setting)
        all_rows.extend(rows)
        all_attrs.extend(attrs)
    summary = aoi_root / "summaryData"
    write_summary_csv(summary / f"{aoi_root.name}_Building_Solutions.csv", all_rows)
    write_summary_csv(summary / f"{aoi_root.name}_Building_Attributes.csv", all_attrs,
                      ATTRIBUTE_HEADER)
    return aoi_root


# Written into each AOI folder ensure_synthetic generates: only such folders are replaced.
GENERATED_STAMP = ".mnc_d2-synthetic"


def _marker_cities(marker: Path) -> set[str]:
    """The city names in an ensure_synthetic marker's name (``.complete-vegas-paris-60-0-ogr``)."""
    return set(marker.name[len(".complete-"):].split("-"))


def ensure_synthetic(root: Path, cities: list[str], images: int, seed: int,
                     setting: str = "default") -> None:
    """Generate ``root/spacenet/<AOI>_Train`` unless a complete copy with these settings exists.

    Another copy of a city (other image count, seed or setting, or an interrupted run) is
    replaced as a whole, never written over: each city is generated into a scratch folder and
    moved into place, so no image of an older copy stays beside the new summary CSV. A folder
    of that name that this generator did not write is left alone (FileExistsError).
    """
    spacenet = Path(root) / "spacenet"
    tag = "" if setting == "default" else f"-{setting}"
    # "ogr": the summary CSVs' WKT as SpaceNet 2 writes it (mnc_d2 0.2 wrote '), (' holes, which
    # the tester reads as one ring): older copies are regenerated.
    marker = spacenet / f".complete-{'-'.join(cities)}-{images}-{seed}{tag}-ogr"
    if marker.exists():
        logger.info("synthetic data already in %s", spacenet)
        return
    markers = list(spacenet.glob(".complete-*"))
    for city in cities:
        target = spacenet / f"{CITIES[city]}_Train"
        ours = (target / GENERATED_STAMP).exists() or any(
            city in _marker_cities(m) for m in markers)  # copies from before the stamp
        if target.exists() and not ours:
            raise FileExistsError(f"{target} exists and was not written by mnc_d2's synthetic "
                                  f"generator; move it or generate into another data root")
    for old in markers:  # they no longer describe what is on disk for these cities
        if _marker_cities(old) & set(cities):
            old.unlink()
    for city in cities:
        replace_generated(spacenet, lambda scratch, c=city: [
            generate_city(scratch, c, images, seed=seed, setting=setting)])
    marker.write_text("generated by mnc_d2.synthetic.ensure_synthetic\n")


def replace_generated(spacenet: Path, generate_into) -> list[Path]:
    """Generate area folders into a scratch folder beside them (``generate_into(scratch)``
    returns the folders it wrote), stamp each and move it into ``spacenet`` in place of any
    folder of that name, so no file of an older copy survives beside the new one. Returns the
    folders in place."""
    scratch = Path(spacenet) / ".generating"
    shutil.rmtree(scratch, ignore_errors=True)
    out = []
    for made in map(Path, generate_into(scratch)):
        (made / GENERATED_STAMP).write_text("written by mnc_d2.synthetic\n")
        target = Path(spacenet) / made.name
        shutil.rmtree(target, ignore_errors=True)
        made.rename(target)
        out.append(target)
    shutil.rmtree(scratch, ignore_errors=True)
    return out
