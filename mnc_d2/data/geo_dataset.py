"""Training and evaluation data from your own GeoTIFF scenes and building footprints.

A mapping team's labels rarely come in a SpaceNet release's layout: scenes of any size, and one
vector file of footprints (GeoJSON, GeoPackage, GeoParquet, shapefile) in any CRS. This turns
them into Detectron2 dataset dicts: each scene cut into ``tile_size`` windows on the grid
``tools/predict.py`` uses (:func:`mnc_d2.inference.tiling.tile_grid`), each window one image
whose annotations are the footprints inside it, clipped to it (a building cut by a window edge
is trained on the part the window shows, as SpaceNet's tiles cut them; one with most of its
area under the scene's nodata, where the model sees band means, is left out, by the rule
``tools/predict.py`` drops such detections by). The mapper reads only
the window (``window`` in the dict), so a scene is never read whole. Scenes may be URLs
(``https://``, ``s3://``, ``gs://``, ``az://`` or a GDAL ``/vsi`` path: COGs where they live,
read window by window as ``tools/predict.py`` reads them), or STAC documents (their items'
GeoTIFF data assets, picked as ``tools/predict.py`` picks them, or by the entry's
``stac_asset``); the footprint file may be a URL too (not a GeoParquet one: pyarrow, not GDAL,
reads those, from a local path).

    from mnc_d2.data import register_geo_instances
    register_geo_instances("mycity_train", ["scenes/a.tif", "scenes/b.tif"], "buildings.gpkg")

Registered datasets carry what the SpaceNetEvaluator and a training run record need:
evaluator_type "spacenet" (scored as one group), the scenes' band count and metres per pixel
(INPUT.GSD, so tools/predict.py resamples other imagery to it).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import rasterio
import shapely
from rasterio.warp import transform_bounds
from rasterio.windows import transform as window_transform

from ..geometry.on_data import inside_data
from ..geometry.polygons import pixel_to_map
from ..inference.scenes import scene_stem
from ..inference.sources import (REMOTE_READ_HINT, expand_stac, is_remote, is_stac, redact,
                                 without_query)
from .labels import (LabelError, RepairLog, clip_to_tile, read_geojson_footprints,
                     to_pixel_footprints)

logger = logging.getLogger(__name__)


class FootprintFile:
    """A footprint file read once, its features found per scene by their bounds (a city's
    labels are read once for all its scenes, not once per scene).

    GeoJSON that names no CRS and holds coordinates outside lon/lat goes through the SpaceNet
    label reader per scene instead (:func:`mnc_d2.data.labels.read_geojson_footprints`, which
    assumes the raster's CRS when the coordinates fall inside it, with a warning); any other
    file must carry a CRS."""

    def __init__(self, labels: str | Path):
        import geopandas as gpd

        remote = is_remote(str(labels))
        self.path = str(labels) if remote else Path(labels)
        shown = redact(str(labels))
        if not remote and not self.path.is_file():
            raise LabelError(f"label file {self.path} does not exist")
        suffix = Path(without_query(str(labels))).suffix.lower()
        if suffix == ".parquet" and remote:
            raise LabelError(f"{shown}: GeoParquet footprints are read from a local file; copy "
                             "it here, or give a GeoPackage, FlatGeobuf or GeoJSON URL")
        if remote:
            use_remote_gdal_defaults()
        try:
            frame = (gpd.read_parquet(self.path) if suffix == ".parquet"
                     else gpd.read_file(self.path, on_invalid="ignore"))
        except Exception as exc:  # pyogrio's DataSourceError, HTTP errors, ...
            if not remote:
                raise
            raise LabelError(f"{shown} cannot be read ({redact(str(exc))}): "
                             f"{REMOTE_READ_HINT}") from None
        self.per_scene = False
        if suffix in (".geojson", ".json"):
            x0, y0, x1, y1 = frame.total_bounds if len(frame) else (0, 0, 0, 0)
            outside = max(abs(x0), abs(x1)) > 180 or max(abs(y0), abs(y1)) > 90
            # read as lon/lat (no CRS named) but not lon/lat: the SpaceNet reader's case
            self.per_scene = outside and (frame.crs is None or frame.crs.is_geographic)
            if self.per_scene and remote:
                raise LabelError(f"{shown} names no CRS and its coordinates are not lon/lat: "
                                 "name its CRS in the file (ogr2ogr -a_srs), or use a local "
                                 "copy, which is read in each scene's CRS")
        elif frame.crs is None:
            raise LabelError(f"{shown} has no CRS; set one (GeoDataFrame.set_crs) so its "
                             "footprints can be placed on the scenes")
        self.frame = frame[frame.geometry.notna()]

    def pixel_polygons(self, crs, transform, width: int, height: int,
                       repairs: RepairLog, cuts: RepairLog) -> list:
        """The footprints over a raster grid (``crs``, ``transform``, ``width`` x ``height``)
        as its pixel polygons, clipped to it (counted in ``cuts``: a scene cut out of a larger
        labelled area cuts footprints by design, which is no repair)."""
        if self.per_scene:
            return read_geojson_footprints(self.path, crs, transform, width, height, repairs,
                                           cuts)
        grid = pixel_to_map(shapely.box(0, 0, width, height), transform)
        bounds = transform_bounds(crs, self.frame.crs, *grid.bounds)
        near = self.frame.iloc[self.frame.sindex.query(shapely.box(*bounds))]
        return to_pixel_footprints(near.to_crs(crs).geometry, transform, width, height, repairs,
                                   cuts)


def load_geo_dicts(scenes: list[str], labels: str | Path, tile_size: int = 650,
                   overlap: int = 0, stems: list[str] | None = None) -> list[dict]:
    """Dataset dicts of ``scenes`` cut into windows (module docstring). Each dict: file_name
    (the scene), image_id (``<scene stem>_<column>_<row>`` of the window's origin), height,
    width, window ([column, row, width, height] in the scene), crs, transform (the window's),
    annotations (:func:`mnc_d2.data.spacenet.make_annotation`, window pixels). ``stems``: the
    scenes' names in image ids (default: their file names' stems; STAC scenes: item ids)."""
    from ..inference.predictor import scene_gsd_m
    from ..inference.tiling import tile_grid
    from .spacenet import make_annotation, raster_header

    if not scenes:
        raise ValueError("no scenes to register: pass GeoTIFF paths")
    stems = list(stems) if stems else [scene_stem(s) for s in scenes]
    if len(set(stems)) != len(stems):
        twice = sorted(s for s in set(stems) if stems.count(s) > 1)
        raise ValueError(f"scene names repeat ({', '.join(twice)}): image ids are made from "
                         "them; rename the files or register them as separate datasets")
    repairs = RepairLog()
    source = FootprintFile(labels)
    labels = redact(str(labels))  # as named in messages: a signed URL's token left out
    gsds, cuts, first = [], RepairLog(), None
    dicts, bare, blank, under = [], [], 0, 0
    for scene, stem in zip(scenes, stems):
        head = raster_header(scene)
        first = first or head
        gsds.append(scene_gsd_m(SimpleNamespace(**head)))
        footprints = source.pixel_polygons(head["crs"], head["transform"], head["width"],
                                           head["height"], repairs, cuts)
        tree = shapely.STRtree(footprints)
        start = len(dicts)
        tiles = tile_grid(head["width"], head["height"], tile_size, overlap)
        gaps = windows_data_gaps(scene, [t.window for t in tiles])
        blank += sum(g is None for g in gaps)
        if all(g is None for g in gaps):
            logger.warning("%s holds no pixel of data (its nodata value or mask covers it "
                           "all): left out", redact(scene))
            continue
        for tile, gap in ((t, g) for t, g in zip(tiles, gaps) if g is not None):
            w = tile.window
            col, row, ww, wh = int(w.col_off), int(w.row_off), int(w.width), int(w.height)
            near = [footprints[i] for i in tree.query(shapely.box(col, row, col + ww, row + wh))]
            local = [shapely.affinity.translate(f, -col, -row) for f in near]
            inside = clip_to_tile(local, ww, wh, cuts)  # by design here: not repairs
            if len(gap):  # predict.py's rule: no building with most of its area off the data
                on_data = inside_data(inside, [gap])
                under += int((~on_data).sum())
                inside = [f for f, keep in zip(inside, on_data) if keep]
            dicts.append({
                "file_name": str(scene), "image_id": f"{stem}_{col}_{row}", "height": wh,
                "width": ww, "window": [col, row, ww, wh], "crs": head["crs"].to_wkt(),
                "transform": tuple(window_transform(w, head["transform"]))[:6],
                "annotations": [make_annotation(f, wh, ww) for f in inside]})
        if not any(d["annotations"] for d in dicts[start:]):
            bare.append(scene)
    repairs.report(f"{labels} on {len(scenes)} scene(s)")
    if len(source.frame) and not any(d["annotations"] for d in dicts):
        crs = source.frame.crs or "EPSG:4326"
        grid = pixel_to_map(shapely.box(0, 0, first["width"], first["height"]),
                            first["transform"])
        covers = _bounds_text(transform_bounds(first["crs"], crs, *grid.bounds))
        raise LabelError(
            f"none of the {len(source.frame)} footprints of {labels} (bounds "
            f"{_bounds_text(source.frame.total_bounds)} in {crs}) lies on the {len(scenes)} "
            f"scene(s) ({', '.join(scene_file_name(s) for s in scenes[:3])}"
            f"{', ...' if len(scenes) > 3 else ''}; the first covers {covers} there): the "
            "labels are of another place or in another CRS than the file says (set it: "
            "GeoDataFrame.set_crs, or ogr2ogr -a_srs); for scenes without buildings on "
            "purpose, pass an empty footprint file")
    if bare and len(bare) < len(scenes):
        warn_unlabelled_scenes(labels, bare, len(scenes))
    warn_mixed_gsd(f"the scenes registered with {labels}", dict(zip(scenes, gsds)))
    logger.info("%d scene(s) -> %d windows of %d px, %d footprint pieces (%d cut by a window "
                "edge)%s", len(scenes), len(dicts), tile_size,
                sum(len(d["annotations"]) for d in dicts),
                cuts["clipped: crossing the tile edge"],
                (f"; {blank} windows without a pixel of data left out" if blank else "")
                + (f"; {under} footprint pieces with most of their area under nodata left "
                   "out" if under else ""))
    return dicts


def scene_file_name(scene: str) -> str:
    """A scene's file name, a URL's without its query string (which may hold a token)."""
    return Path(without_query(str(scene))).name


def _bounds_text(bounds) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in bounds) + ")"


# Side (px) of the scene-wide mask that finds candidate windows without data (each candidate
# is then checked on its own full-resolution mask, so no window holding data is left out).
MASK_OVERVIEW_PX = 1024


def windows_data_gaps(scene: str | Path, windows: list) -> list:
    """For each rasterio ``window`` of ``scene``: None when it holds no pixel of data (GDAL's
    dataset mask: nodata value, internal mask or alpha band; an orthorectified scene's collar,
    a mosaic's gaps), as it would train on a blank image of band means; else (K,) polygons,
    in the window's pixels, of its pixels without data (none when all hold data). Without a
    mask, no gaps anywhere; else the scene's mask at most MASK_OVERVIEW_PX a side finds the
    windows that may lack data, each then read at full resolution (an approximation: in a
    scene wider than that, a gap narrower than the small mask's pixel may go unseen)."""
    from ..geometry.polygons import mask_to_polygons
    from .bands import has_data_mask

    none = np.zeros(0, dtype=object)
    with rasterio.open(scene) as src:
        if not has_data_mask(src):
            return [none] * len(windows)
        factor = max(1, -(-max(src.width, src.height) // MASK_OVERVIEW_PX))
        small = src.dataset_mask(out_shape=(-(-src.height // factor), -(-src.width // factor)))
        out = []
        for w in windows:
            rows = slice(int(w.row_off) // factor, -(-int(w.row_off + w.height) // factor))
            cols = slice(int(w.col_off) // factor, -(-int(w.col_off + w.width) // factor))
            if small[rows, cols].all():
                out.append(none)
                continue
            valid = src.dataset_mask(window=w) > 0
            out.append(None if not valid.any() else none if valid.all() else
                       np.asarray(mask_to_polygons(~valid), dtype=object))
        return out


def warn_unlabelled_scenes(labels, bare: list[str], total: int) -> None:
    """Warn that ``bare`` scenes (of ``total``) have no footprint of ``labels`` while others do:
    legitimate for scenes without buildings, but also what a footprint file that lacks an
    area's labels looks like, and such scenes train their buildings as background."""
    names = ", ".join(scene_file_name(s) for s in bare[:5]) + \
        (", ..." if len(bare) > 5 else "")
    logger.warning("%d of %d scenes have no footprint of %s on them (%s): they train as "
                   "background only. If they show buildings, the file lacks their labels: add "
                   "them, or leave those scenes out", len(bare), total, labels, names)


def warn_mixed_gsd(what: str, gsds: dict[str, float]) -> bool:
    """Warn (and return True) when the known metres per pixel of ``gsds`` (a name -> GSD for
    each scene or dataset of ``what``) differ by more than predict.py's resampling tolerance:
    training reads every scene at its own pixel size, while the run records one INPUT.GSD (the
    first training dataset's first scene's) and tools/predict.py resamples every scene to it."""
    from ..inference.predictor import GSD_TOLERANCE

    known = {k: float(v) for k, v in gsds.items() if v is not None and np.isfinite(v)}
    if not known:
        return False
    low, high = min(known.values()), max(known.values())
    if high <= low * (1 + GSD_TOLERANCE):
        return False
    first = next(iter(known.values()))
    smallest = min(known, key=known.get)
    largest = max(known, key=known.get)
    logger.warning(
        "%s differ in pixel size by more than %d%%: %.3g m (%s) to %.3g m (%s). Training reads "
        "each at its own pixel size, but the run records one INPUT.GSD, the first's (%.3g m), "
        "and tools/predict.py resamples every scene to it; resample them to one pixel size "
        "first (e.g. gdalwarp -tr %.3g %.3g -r bilinear IN.tif OUT.tif, in the CRS's units)",
        what, round(GSD_TOLERANCE * 100), low, smallest, high,
        largest, first, first, first)
    return True


# (scenes, labels, tile_size, overlap, the local files' sizes and times) -> dataset dicts: a
# training run asks for a dataset several times (band statistics, the training and test loaders,
# the evaluator's truth), and each load reads the footprint file and opens every scene (over
# the network for remote ones)
_LOADED: dict = {}


def _file_stamp(path: str):
    """(size, modification time) of a local file; None for a URL or a missing file."""
    if is_remote(path):
        return None
    try:
        stat = Path(path).stat()
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


def _load_once(scenes: tuple, labels: str, tile_size: int, overlap: int,
               stems: tuple | None = None) -> list[dict]:
    """:func:`load_geo_dicts`, loaded once per process while the local files are unchanged;
    each call gets its own copy."""
    import copy

    key = (scenes, labels, tile_size, overlap, stems,
           tuple(_file_stamp(p) for p in (labels, *scenes)))
    if key not in _LOADED:
        _LOADED.clear()  # one dataset's dicts held at a time per process (a city's can be big)
        _LOADED[key] = load_geo_dicts(list(scenes), labels, tile_size, overlap,
                                      list(stems) if stems else None)
    return copy.deepcopy(_LOADED[key])


def register_geo_instances(name: str, scenes: list[str], labels: str | Path,
                           tile_size: int = 650, overlap: int = 0,
                           stems: list[str] | None = None) -> None:
    """Register ``scenes`` and footprint file ``labels`` as Detectron2 dataset ``name`` (lazy:
    read on first use), with the metadata the evaluator and a training run read: one group,
    band count and metres per pixel of the first scene (the scenes should share them).
    ``stems``: as :func:`load_geo_dicts`'s."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from ..inference.predictor import scene_gsd_m
    from .spacenet import raster_header

    scenes = [str(s) for s in scenes]
    if not scenes:
        raise ValueError(f"{name}: no scenes to register: pass GeoTIFF paths")
    if any(is_remote(s) for s in scenes):
        use_remote_gdal_defaults()
    head = raster_header(scenes[0])  # an unreadable first scene: an error naming it, the fix
    count, gsd = head["count"], scene_gsd_m(SimpleNamespace(**head))
    names = [d or "" for d in head["descriptions"]]
    DatasetCatalog.register(name, functools.partial(_load_once, tuple(scenes), str(labels),
                                                    tile_size, overlap,
                                                    tuple(stems) if stems else None))
    meta = {"thing_classes": ["building"], "evaluator_type": "spacenet", "group_by": "none",
            "headline": "F1", "num_bands": count, "labels": redact(str(labels)),
            # the windows' side, what the test resize refers to: tile_size, or the first
            # scene's shorter side where scenes are smaller (chips: each is one window)
            "tile_px": int(min(tile_size, head["width"], head["height"]))}
    if np.isfinite(gsd):
        meta["gsd_m"] = float(gsd)
    if all(names):
        meta["band_names"] = names
    MetadataCatalog.get(name).set(**meta)


def use_remote_gdal_defaults() -> None:
    """Put tools/predict.py's GDAL options for remote reads (``REMOTE_GDAL_DEFAULTS``: no
    directory listing, no HEAD request, bounded retries) into this process's environment,
    where the environment does not set them: training reads remote scenes in many places (the
    mapper in its worker processes, band statistics, the evaluator), and GDAL reads its
    options from the environment at each request."""
    import os

    from ..inference.engines import REMOTE_GDAL_DEFAULTS

    for key, value in REMOTE_GDAL_DEFAULTS.items():
        os.environ.setdefault(key, value)


def register_geo_file(path: str | Path) -> list[str]:
    """Register every dataset of a DATASETS.GEO file (see :mod:`mnc_d2.config`) that is not
    registered yet; returns the names. Errors name the file and the entry."""
    import glob

    import yaml
    from detectron2.data import DatasetCatalog

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DATASETS.GEO {path} does not exist")
    entries = yaml.safe_load(path.read_text()) or {}
    if not isinstance(entries, dict):
        raise ValueError(f"DATASETS.GEO {path}: expected a mapping of dataset names to "
                         "{scenes: [...], labels: ...}")
    names = []
    for name, entry in entries.items():
        if not isinstance(entry, dict) or "scenes" not in entry or "labels" not in entry:
            raise ValueError(f"DATASETS.GEO {path}: {name!r} needs 'scenes' (GeoTIFF paths or "
                             "globs) and 'labels' (a footprint file)")
        unknown = set(entry) - {"scenes", "labels", "tile_size", "overlap", "stac_asset"}
        if unknown:
            raise ValueError(f"DATASETS.GEO {path}: {name!r} has unknown key(s) "
                             f"{', '.join(sorted(unknown))}; known: scenes, labels, tile_size, "
                             "overlap, stac_asset")
        patterns = entry["scenes"] if isinstance(entry["scenes"], list) else [entry["scenes"]]
        scenes, stems = [], []
        for pattern in map(str, patterns):
            if is_stac(pattern):  # a STAC item, item collection or catalog: its items' scenes
                source = pattern if is_remote(pattern) or Path(pattern).is_absolute() \
                    else str(path.parent / pattern)
                found = expand_stac(source, entry.get("stac_asset"),
                                    option=f"'stac_asset: KEY' in {name!r} of DATASETS.GEO {path}")
                if not found:
                    raise ValueError(f"DATASETS.GEO {path}: {name!r} scenes {redact(pattern)}: "
                                     "the STAC document holds no items")
                scenes += [href for href, _ in found]
                # named by item id, as tools/predict.py names them (assets of many catalogs
                # share a file name: each item's visual.tif)
                stems += [scene_stem(href, info) for href, info in found]
                continue
            if is_remote(pattern):  # a URL or /vsi path: as it is, one scene
                if glob.has_magic(without_query(pattern)):
                    raise ValueError(f"DATASETS.GEO {path}: {name!r} scenes {redact(pattern)}: "
                                     "a URL is one scene, not a pattern; list each scene's URL")
                scenes.append(pattern)
                stems.append(scene_stem(pattern))
                continue
            pattern = str(path.parent / pattern) if not Path(pattern).is_absolute() else pattern
            found = sorted(glob.glob(pattern))
            if not found:
                raise FileNotFoundError(f"DATASETS.GEO {path}: {name!r} scenes {pattern} match "
                                        "no file")
            scenes += found
            stems += [scene_stem(s) for s in found]
        labels = str(entry["labels"])
        if not is_remote(labels) and not Path(labels).is_absolute():
            labels = str(path.parent / labels)
        if name not in DatasetCatalog.list():
            register_geo_instances(name, scenes, labels, int(entry.get("tile_size", 650)),
                                   int(entry.get("overlap", 0)), stems)
        names.append(name)
    return names
