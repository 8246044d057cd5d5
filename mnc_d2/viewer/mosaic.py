"""One imagery mosaic for a city, as web-mercator tiles, instead of an image layer per scene.

A map with an image layer per scene draws every layer on every frame: at 1,000 scenes that
alone kept panning at about 10 frames a second (BENCHMARKS.md, the web map at scale). For a
city the site gets one raster pyramid instead (``SITE/data/overview/{z}/{x}/{y}.png``, 256 px
tiles): the deepest zoom is the one whose pixels are no finer than the scenes' overviews, each
of its tiles composited from the scenes it touches (rio-tiler, each scene's own stretch, later
scenes over earlier ones where they overlap), and every zoom above it is its four children
halved, up to a zoom where at most four tiles cover the city. ``tools/view.py --serve`` also
answers ``/tiles/_mosaic/{z}/{x}/{y}.png`` past the pyramid, from the scenes at full resolution.
"""

from __future__ import annotations

import functools
import math
import warnings
from pathlib import Path

import numpy as np

from ..utils.atomic import atomic_write
from .tiles import HALF

TILE_PX = 256
MOSAIC = "_mosaic"


@functools.lru_cache(maxsize=1)
def _tms():
    """morecantile's web-mercator grid (its ``get`` deep-copies the definition: once here)."""
    import morecantile

    return morecantile.tms.get("WebMercatorQuad")


def scene_tile_rgba(source: dict, z: int, x: int, y: int) -> np.ndarray | None:
    """(256, 256, 4) uint8 RGBA of tile z/x/y of one scene (``source``: path, bands, stretch;
    alpha 0 outside its data), None when the tile misses the scene."""
    from rio_tiler.errors import TileOutsideBounds
    from rio_tiler.io import Reader

    from ..evaluation.visualize import stretch_to_uint8

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no overviews": fine for these tiles
        try:
            with Reader(source["path"]) as reader:
                if not reader.tile_exists(x, y, z):
                    return None
                image = reader.tile(x, y, z, indexes=tuple(source["bands"]))
        except TileOutsideBounds:
            return None
    rgb = stretch_to_uint8(image.data, limits=source["stretch"])
    return np.dstack([rgb, image.mask])


def composite(sources: list[dict], z: int, x: int, y: int) -> np.ndarray | None:
    """RGBA of tile z/x/y over the given scenes (later ones on top), None when empty."""
    out = None
    for source in sources:
        tile = scene_tile_rgba(source, z, x, y)
        if tile is None:
            continue
        if out is None:
            out = tile.copy()
        else:
            inside = tile[..., 3] > 0
            out[inside] = tile[inside]
    return out if out is not None and out[..., 3].any() else None


def png(rgba: np.ndarray) -> bytes:
    import cv2

    ok, data = cv2.imencode(".png", rgba[..., [2, 1, 0, 3]])  # cv2 writes BGRA
    if not ok:
        raise ValueError("PNG encoding failed")
    return data.tobytes()


def touching(sources: dict, z: int, x: int, y: int) -> list[dict]:
    """The sources whose lon/lat ``bounds`` intersect tile z/x/y."""
    b = _tms().bounds(x, y, z)
    return [s for s in sources.values() if s.get("bounds")
            and s["bounds"][0] < b.right and s["bounds"][2] > b.left
            and s["bounds"][1] < b.top and s["bounds"][3] > b.bottom]


def max_zoom_for(metres_per_px: float, lat: float) -> int:
    """The deepest zoom whose 256 px tiles are no finer than ``metres_per_px`` at ``lat``."""
    at_zero = 2 * HALF / TILE_PX * math.cos(math.radians(lat))
    return int(max(0, min(22, math.floor(math.log2(at_zero / max(metres_per_px, 1e-6))))))


def write_overview_pyramid(sources: dict, out: Path, max_zoom: int) -> dict:
    """Write the pyramid (module docstring) of ``sources`` (scene -> path, bands, stretch,
    bounds) under ``out``; returns {"min_zoom", "max_zoom", "tiles", "bounds"}."""
    import cv2

    boxes = np.asarray([s["bounds"] for s in sources.values() if s.get("bounds")])
    if not len(boxes):
        return {"tiles": 0}
    west, south = boxes[:, 0].min(), boxes[:, 1].min()
    east, north = boxes[:, 2].max(), boxes[:, 3].max()
    # the tiles each scene touches, not every tile of the scenes' common bounds: scenes of
    # distant places (a country's cities, two cities in one run) would make those billions
    tms = _tms()
    members: dict[tuple, list] = {}
    for source in sources.values():  # in order: later scenes drawn over earlier ones
        if source.get("bounds"):
            for t in tms.tiles(*source["bounds"], zooms=[max_zoom]):
                members.setdefault((t.x, t.y), []).append(source)
    level = {}
    for (x, y), touched in sorted(members.items()):
        rgba = composite(touched, max_zoom, x, y)
        if rgba is not None:
            level[(x, y)] = rgba
    written, z = 0, max_zoom
    while True:
        for (x, y), rgba in level.items():
            with atomic_write(out / str(z) / str(x) / f"{y}.png", "wb") as handle:
                handle.write(png(rgba))
            written += 1
        if len(level) <= 4 or z == 0 or z <= max_zoom - 10:
            break
        parents = {}
        for (x, y), rgba in level.items():
            canvas = parents.setdefault((x // 2, y // 2),
                                        np.zeros((2 * TILE_PX, 2 * TILE_PX, 4), np.uint8))
            oy, ox = (y % 2) * TILE_PX, (x % 2) * TILE_PX
            canvas[oy: oy + TILE_PX, ox: ox + TILE_PX] = rgba
        level = {k: cv2.resize(v, (TILE_PX, TILE_PX), interpolation=cv2.INTER_AREA)
                 for k, v in parents.items()}
        z -= 1
    return {"min_zoom": z, "max_zoom": max_zoom, "tiles": written,
            "bounds": [float(west), float(south), float(east), float(north)]}
