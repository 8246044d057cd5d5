"""Building footprints for whole GeoTIFF scenes of any size (``tools/predict.py``).

The scene is read window by window (memory stays bounded by one batch of tiles plus the
polygons), tiles overlap and are batched through the model, predictions are merged across tile
borders (:mod:`.tiling`), and the result is written as GeoJSON in the source CRS, a SpaceNet
proposal CSV (pixel coordinates) and optionally a PNG overlay. Band selection and normalisation
are those of the training run (its config.yaml: INPUT.BANDS, MODEL.PIXEL_MEAN/STD).

The model runs on a backend: ``torch`` (the training run's config and weights, eager
Detectron2) or an exported folder (``tools/export_model.py``) on ``onnxruntime``, ``openvino``
or ``torchscript``, or its int8 graph on ``onnxruntime-int8`` or ``openvino-int8``; this module
imports neither torch nor Detectron2 for the exported backends.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
import shapely
from affine import Affine
from rasterio.enums import Resampling
from rasterio.errors import CRSError
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform as transform_coords
from shapely import affinity
from tqdm import tqdm

from ..data.bands import (SCENE_BANDS_HINT, check_band_count, check_scene_bands,
                          has_data_mask, input_bands, read_bands)
from ..data.radiometry import dn_transform, dn_transform_from_config, training_spread
from ..export.bundle import BACKEND_FILES
from .threshold import resolve_score_threshold  # noqa: F401 - also imported from here
from ..geometry.crs import is_mercator
from ..geometry.polygons import map_to_pixel, mask_to_polygons, pixel_to_map
from ..geometry.instances import instances_to_polygons
from ..geometry.on_data import data_region, inside_data
from ..evaluation.visualize import draw_outline, stretch_to_uint8, write_png
from ..formats.geojson import write_geojson
from ..formats.spacenet_csv import write_proposal_csv
from .eager import EagerModel
from .radiometry_check import (matching_gain_offset, radiometry_warning, scene_band_stats,
                               scene_levels)
from .sources import (MAX_UPSAMPLE, check_max_upsample, redact, scene_image_id, tiff_datetime,
                      without_query)
from .tiling import in_core, merge_across_tiles, tile_grid

logger = logging.getLogger(__name__)

MAX_OVERLAY_SIDE = 4096


@dataclass
class ScenePrediction:
    """Building polygons of one scene (pixel coordinates of the grid the model saw: the scene's,
    or the scene resampled to INPUT.GSD) with scores and that grid's georeferencing."""

    path: str
    image_id: str
    polygons: list
    scores: list[float]
    crs: object
    transform: object
    width: int
    height: int
    gsd_m: float = float("nan")  # metres per pixel of the scene as stored (NaN: unknown)
    model_gsd_m: float = float("nan")  # INPUT.GSD (NaN: not recorded)
    datetime: str | None = None  # acquisition time, ISO UTC: STAC's, else the TIFF's date tag
    warnings: list[str] = field(default_factory=list)  # logged, and kept in the manifest row
    # the scene file's own pixel grid, where the model saw it resampled (None: the same grid)
    file_transform: object = None
    file_size: tuple | None = None  # its (width, height) then
    # where the scene holds data (a polygon in ``crs``), when some of its pixels do not (a
    # nodata collar, a mosaic's gaps); None: all of the grid
    data_region: object = None

    def file_grid(self) -> dict:
        """The scene file's own grid, as predict.py records it beside the buildings (so that
        scoring needs no access to the scene): {"crs": WKT, "transform": 6 affine numbers,
        "width", "height"}."""
        transform = self.file_transform if self.file_transform is not None else self.transform
        width, height = self.file_size or (self.width, self.height)
        grid = {"crs": self.crs.to_wkt() if self.crs is not None else None,
                "transform": list(transform)[:6], "width": int(width), "height": int(height)}
        if self.data_region is not None:  # where merge_footprints' seams lie
            grid["data"] = shapely.to_wkt(self.data_region, rounding_precision=-1)
        return grid


# A scene whose pixel size differs from INPUT.GSD by more than this fraction is resampled to it.
GSD_TOLERANCE = 0.05


def scene_gsd_m(src, info=None) -> float:
    """Metres on the ground per pixel of an open dataset: what its STAC item states; else from
    its transform: in a projected CRS the pixel size in the CRS's units converted to metres
    (feet and US survey feet, as US State Plane orthophotos come, included); in Mercator, whose
    scale grows with latitude (web-map exports in EPSG:3857 state 0.39 m pixels at 40 degrees
    north for 0.3 m on the ground), and in degrees (geographic CRSs), one pixel step along each
    axis of the grid from the scene's centre measured on the WGS84 ellipsoid; the mean of the
    two axes' steps (rotated grids included). NaN when it cannot be known (no CRS, a projected
    CRS without linear units)."""
    if info is not None and info.gsd:
        return float(info.gsd)
    if src.crs is None:
        return float("nan")
    if src.crs.is_projected and not is_mercator(src.crs):
        try:
            metres = src.crs.linear_units_factor[1]
        except CRSError:
            return float("nan")
        t = src.transform  # a rotated grid's pixel steps are (a, d) and (b, e)
        return (math.hypot(t.a, t.d) + math.hypot(t.b, t.e)) / 2 * float(metres)
    from pyproj import Geod

    x, y = src.transform @ (src.width / 2, src.height / 2)
    x1, y1 = src.transform @ (src.width / 2 + 1, src.height / 2)
    x2, y2 = src.transform @ (src.width / 2, src.height / 2 + 1)
    xs, ys = [x, x1, x2], [y, y1, y2]
    if src.crs.is_projected:  # Mercator: to longitude and latitude first
        xs, ys = transform_coords(src.crs, "EPSG:4326", xs, ys)
    geod = Geod(ellps="WGS84")
    east = geod.inv(xs[0], ys[0], xs[1], ys[1])[2]
    south = geod.inv(xs[0], ys[0], xs[2], ys[2])[2]
    return float((east + south) / 2)


def reads_by_name(run_names: list[str], scene_names: list[str]) -> bool:
    """Whether :func:`bands_by_name` looks bands up by name: both lists known, every scene band
    named, and at least one name shared (case-insensitive)."""
    if not run_names or not scene_names or not all(scene_names):
        return False
    lower = [n.lower() for n in scene_names]
    return any(n.lower() in lower for n in run_names)


def bands_by_name(run_names: list[str], scene_names: list[str], indices: list[int],
                  where: str) -> list[int]:
    """1-based file bands to read: ``run_names`` (INPUT.BAND_NAMES) looked up in the scene's
    ``scene_names`` (case-insensitive) when both are known and share a name, else ``indices``
    (INPUT.BANDS): a file whose descriptions name no band the model knows ("Band 1", ...) is
    read by index, one that names some of them but not all is an error."""
    if not reads_by_name(run_names, scene_names):
        return indices
    lower = [n.lower() for n in scene_names]
    missing = [n for n in run_names if n.lower() not in lower]
    if missing:
        raise ValueError(f"{where} has no band named {missing[0]!r} (its bands: "
                         f"{', '.join(scene_names)}); the model reads "
                         f"{', '.join(run_names)} (INPUT.BAND_NAMES)")
    return [lower.index(n.lower()) + 1 for n in run_names]


BACKENDS = ("torch", *BACKEND_FILES)  # eager, then the exported-model runtimes


class _ExportedModel:
    """An exported folder on one runtime: tiles -> numpy detections, one tile at a time (the
    graph takes one tile)."""

    def __init__(self, bundle, backend: str, threads: int | None):
        from ..export.runtime import ExportedModel

        self.model = ExportedModel(bundle, backend, threads)

    def __call__(self, images: list[np.ndarray]) -> list:
        return [self.model(image) for image in images]


def check_upsample(scale: float, limit: float, gsd: float, model_gsd: float, width: int,
                   height: int, shown: str) -> None:
    """Refuse a scene whose pixels are more than ``limit`` times the model's (``scale`` = scene
    GSD / INPUT.GSD; ``limit`` 0 = no limit), before any tile is read: ValueError naming the
    scene, both pixel sizes, the size it would be resampled to and the option that allows it."""
    if not limit or scale <= limit:
        return
    raise ValueError(
        f"{shown}: its {gsd:.3g} m pixels are {scale:.1f}x the model's {model_gsd:.3g} m "
        f"(INPUT.GSD); resampled to it the {width} x {height} px scene would be "
        f"{round(width * scale):,} x {round(height * scale):,} px, and imagery this coarse "
        f"shows few of the buildings a {model_gsd:.3g} m model learned. Use imagery of about "
        f"{model_gsd:.3g} m per pixel, or pass "
        f"--max-upsample {math.ceil(scale)} to resample it anyway (default {MAX_UPSAMPLE:g}; "
        "0 = no limit)")


class ScenePredictor:
    """Run a trained model over GeoTIFF scenes (see the module docstring).

    ``cfg`` (backend ``torch``): the training run's config with MODEL.WEIGHTS. Other backends:
    ``model_dir``, an exported folder, whose export.json gives the bands, GSD, threshold and
    polygon settings (``cfg`` unused); ``threads``: the runtime's intra-op threads.
    """

    def __init__(self, cfg=None, tile_size: int = 650, overlap: int = 128, batch_size: int = 2,
                 score_thresh: float | None = None, backend: str = "torch",
                 model_dir: str | None = None, threads: int | None = None,
                 max_upsample: float = MAX_UPSAMPLE, scene_bands: list[int] | None = None,
                 match_radiometry: bool = False):
        if backend not in BACKENDS:
            raise ValueError(f"backend {backend!r}: choose from {', '.join(BACKENDS)}")
        self.tile_size, self.overlap, self.batch_size = tile_size, overlap, batch_size
        self.max_upsample = check_max_upsample(max_upsample)
        self.backend = backend
        if backend == "torch":
            if cfg is None:
                raise ValueError("backend torch needs the run's config (--config-file)")
            self.model = EagerModel(cfg, tile_size=tile_size)
            self.bands = input_bands(cfg)
            self.band_names = [str(n) for n in cfg.INPUT.BAND_NAMES]
            self.model_gsd = float(cfg.INPUT.GSD) if cfg.INPUT.GSD else float("nan")
            self.dn = dn_transform_from_config(cfg)
            mean = cfg.MODEL.PIXEL_MEAN
            spread = training_spread(cfg)
            sn = cfg.TEST.SPACENET
            post = {"simplify_tolerance": sn.SIMPLIFY_TOLERANCE, "regularize": sn.REGULARIZE,
                    "min_edge": sn.REGULARIZE_MIN_EDGE, "align_deg": sn.ALIGN_NEIGHBOURS,
                    "align_gap": sn.ALIGN_NEIGHBOURS_GAP}
            # predict.py resolves (and logs) it once and passes the value on
            threshold = (resolve_score_threshold(cfg) if score_thresh is None
                         else float(score_thresh))
        else:
            from ..export.bundle import read_bundle

            if not model_dir:
                raise ValueError(f"backend {backend} runs an exported model: pass --model "
                                 "EXPORTED_DIR (tools/export_model.py writes one)")
            bundle = read_bundle(model_dir)
            side = max(bundle.tile_shape)
            if tile_size != side:
                raise ValueError(f"--tile-size {tile_size}, but {model_dir} was exported for "
                                 f"{side} x {side} tiles: use --tile-size {side} or re-export "
                                 f"with --tile-size {tile_size}")
            self.model = _ExportedModel(bundle, backend, threads)
            self.bands, self.band_names = bundle.bands, bundle.band_names
            self.model_gsd = bundle.gsd
            self.dn = dn_transform(bundle.dn_transform)
            mean = bundle.pixel_mean
            spread = bundle.data_std
            self.dn.check_means(mean, f"{model_dir}: pixel_mean")
            post = dict(bundle.meta["post"])
            threshold = float(bundle.meta["score_thresh"] if score_thresh is None
                              else score_thresh)
        # where the scenes hold the model's input channels, when not where the training files
        # did (predict.py --scene-bands): read by these numbers, never by name
        self.scene_bands = [int(b) for b in scene_bands] if scene_bands else None
        if self.scene_bands is not None and len(self.scene_bands) != len(self.bands):
            raise ValueError(f"scene_bands {self.scene_bands}: the model reads "
                             f"{len(self.bands)} band(s) (trained on bands {self.bands})")
        # nodata and pixels outside the data get the DNs INPUT.DN_TRANSFORM maps to PIXEL_MEAN
        self.fill = np.asarray(self.dn.inverse(mean), dtype=np.float32)
        # predict.py --match-radiometry: each scene's bands mapped onto the training imagery's
        # mean and spread (model input scale) before the model normalises them
        self.match_radiometry = bool(match_radiometry)
        self.target = (np.asarray(mean, np.float64), np.asarray(spread, np.float64))
        self.post = {"score_thresh": threshold, **post}
        self.pipeline = True  # read and polygonise beside the model (see _predict_grid)
        self.timings = collections.Counter()

    def _read(self, src, bands: list[int], window, match=None):
        """(H, W, C) model input values of one window (INPUT.DN_TRANSFORM of its DNs; with
        ``match``, a (gain, offset) pair of (C,) arrays, mapped by ``x * gain + offset``),
        pixels outside the data (nodata, mask or alpha band, a mosaic's empty parts) set to the
        band means; and (H, W) bool: inside the data."""
        # pixels outside GDAL's dataset mask filled by the reader
        image, valid = read_bands(src, bands, self.fill, window, with_valid=True)
        image = self.dn.forward(image)
        if match is not None:
            image = (image * match[0] + match[1]).astype(np.float32)
            image[~valid] = self.target[0]  # still the band means
        return image, valid

    def _run(self, images: list[np.ndarray]) -> list:
        return self.model(images)

    def predict(self, path: str | Path, progress: bool = True, info=None) -> ScenePrediction:
        """Buildings of the scene at ``path`` (a file, URL or /vsi path rasterio opens).

        ``info`` (:class:`mnc_d2.inference.sources.SceneInfo`): its band names and GSD, when
        known from STAC. Bands are chosen by name when the run and the scene both name them
        (else by index); a scene whose pixel size differs from INPUT.GSD is resampled to it
        (bilinear, on read); buildings with more than half their area outside the data
        (nodata, a mask or alpha band, a mosaic's gaps) are dropped, after the pieces of a
        building cut by tile edges are merged (the rule applies to the polygon written)."""
        path = str(path)
        shown = redact(path)
        with rasterio.open(path) as src:
            names = list(info.band_names) if info is not None and info.band_names else \
                [d or "" for d in src.descriptions]
            if self.scene_bands is not None:  # the user said where they are
                bands, warnings = self.scene_bands, []
                check_scene_bands(src, bands)
            else:
                bands = bands_by_name(self.band_names, names, self.bands, shown)
                check_band_count(src, bands, SCENE_BANDS_HINT)
                warnings = self._band_warnings(src, names, bands, shown)
            gsd = scene_gsd_m(src, info)
            scale = gsd / self.model_gsd if np.isfinite(gsd) and np.isfinite(self.model_gsd) \
                else 1.0
            check_upsample(scale, self.max_upsample, gsd, self.model_gsd, src.width,
                           src.height, shown)
            match = None
            if self.match_radiometry:
                match, notes = self._matching(src, bands, shown)
                warnings += notes
            else:
                warnings += self._check_radiometry(src, bands, shown)
            for warning in warnings:
                logger.warning(warning)
            with contextlib.ExitStack() as stack:
                data = src
                if abs(scale - 1.0) > GSD_TOLERANCE:
                    width, height = max(1, round(src.width * scale)), max(1, round(src.height
                                                                                     * scale))
                    data = stack.enter_context(WarpedVRT(
                        src, crs=src.crs, width=width, height=height,
                        transform=src.transform @ Affine.scale(src.width / width,
                                                               src.height / height),
                        resampling=Resampling.bilinear))
                    logger.info("%s: %.3f m pixels resampled to the model's %.3f m (%d x %d)",
                                shown, gsd, self.model_gsd, width, height)
                masked = has_data_mask(data)
                polygons, scores, gaps = self._predict_grid(data, bands, masked, shown,
                                                            progress, match)
                image_id = scene_image_id(path)
                when = (info.datetime if info is not None and info.datetime
                        else tiff_datetime(src.tags()))
                region = data_region(gaps, data.width, data.height)
                return ScenePrediction(path, image_id, polygons, scores, data.crs,
                                       data.transform, data.width, data.height, gsd,
                                       self.model_gsd, when, warnings,
                                       None if data is src else src.transform,
                                       None if data is src else (src.width, src.height),
                                       None if region is None
                                       else pixel_to_map(region, data.transform))

    def _band_warnings(self, src, names: list[str], bands: list[int], shown: str) -> list[str]:
        """The warning (in a list, or none) for a scene with more bands than the model reads
        when they are read by index because no band is named as the run names them, and their
        colour interpretation does not say they are the model's (NAIP's red, green, blue, NIR
        file tags them so)."""
        interp = [src.colorinterp[b - 1].name for b in bands]
        if reads_by_name(self.band_names, names) or not self.band_names or \
                src.count == len(bands) or \
                interp == [n.lower() for n in self.band_names]:
            return []
        return [f"{shown} has {src.count} bands and names none the model knows: it reads bands "
                f"{bands} by index (INPUT.BANDS), which it learned as "
                f"{', '.join(self.band_names)}; if they are other bands here (an 8-band "
                "MUL-PanSharpen file for an RGB model), say where the model's bands are "
                "(tools/predict.py --scene-bands, e.g. 5 3 2 for red, green, blue of a "
                "WorldView-3 8-band file) or name the file's bands (GeoTIFF band descriptions, "
                "STAC eo:bands)"]

    def _check_radiometry(self, src, bands: list[int], shown: str) -> list[str]:
        """The warning (in a list, or none) for a scene far darker or brighter than the
        training imagery (:mod:`.radiometry_check`); a scene that cannot be sampled is not held
        up by it."""
        try:
            levels = scene_levels(src, bands, self.dn)
        except Exception as exc:  # the prediction's own read reports a real read error
            logger.debug("%s: radiometry not sampled (%s)", shown, exc)
            return []
        if levels is None:
            return [f"{shown}: every sampled pixel is outside its data (nodata value "
                    f"{src.nodata}, a mask or an alpha band): if the whole scene is, there is "
                    "nothing to find; if it holds imagery, its nodata value is wrong "
                    "(gdal_edit.py -a_nodata VALUE, or -unsetnodata)"]
        warning = radiometry_warning(levels, self.fill, src.dtypes[bands[0] - 1], shown)
        return [warning] if warning else []

    def _matching(self, src, bands: list[int], shown: str):
        """(gain, offset) that give the scene's sampled bands the training imagery's mean and
        spread (:func:`.radiometry_check.matching_gain_offset`), logged; (None, [warning]) when
        the scene cannot be sampled (it is then predicted as it is)."""
        try:
            stats = scene_band_stats(src, bands, self.dn)
        except Exception as exc:  # the prediction's own read reports a real read error
            logger.debug("%s: radiometry not sampled (%s)", shown, exc)
            stats = None
        if stats is None:
            return None, [f"{shown}: --match-radiometry found no valid pixel to sample; "
                          "predicted as it is"]
        gain, offset = matching_gain_offset(stats, *self.target)
        logger.info("%s: radiometry matched to the training imagery (per band x * gain + "
                    "offset on the model's input scale: gains %s, offsets %s)", shown,
                    ", ".join(f"{g:.4g}" for g in gain), ", ".join(f"{o:.4g}" for o in offset))
        return (gain.astype(np.float32), offset.astype(np.float32)), []

    def _predict_grid(self, data, bands, masked: bool, shown: str, progress: bool,
                      match=None):
        """Tiles through the model in batches. With ``self.pipeline`` (default) the next batch
        is read in one thread and the last batch polygonised in another while the model runs
        (only the reader thread touches ``data``); the result is the same either way.
        ``self.timings`` accumulates seconds: read, model, polygons (each stage's own time),
        waiting_for_read and waiting_for_polygons (what the model loop waited), merge. Tiles
        without a pixel of data are not run (:meth:`_run_where_data`). Returns (polygons,
        scores, the gap_parts arrays of the tiles with pixels outside the data)."""
        tiles = tile_grid(data.width, data.height, self.tile_size, self.overlap)
        batches = [(start, tiles[start: start + self.batch_size])
                   for start in range(0, len(tiles), self.batch_size)]
        clock = self.timings

        def read_batch(chunk):
            began = time.perf_counter()
            out = [self._read(data, bands, t.window, match) for t in chunk]
            clock["read"] += time.perf_counter() - began
            return out

        gaps = []  # gap_parts of the tiles with pixels outside the data

        def polygonise(start, chunk, outputs, read):
            began = time.perf_counter()
            out = self._tile_polygons(start, chunk, outputs)
            if masked:
                for k, (tile, (_, valid)) in enumerate(zip(chunk, read)):
                    if not valid.all():
                        gaps.append(gap_parts(tile, valid))
            clock["polygons"] += time.perf_counter() - began
            return out

        bar = tqdm(total=len(tiles), desc=Path(without_query(shown)).name, unit="tile",
                   disable=not progress)
        found = []
        idle = 0  # tiles without data, not run
        workers = 1 if self.pipeline else 0
        with _Lane(workers) as reader, _Lane(workers) as polygoniser:
            pending = reader.submit(read_batch, batches[0][1]) if batches else None
            queued = collections.deque()
            for i, (start, chunk) in enumerate(batches):
                began = time.perf_counter()
                read = pending.result()
                clock["waiting_for_read"] += time.perf_counter() - began
                if i + 1 < len(batches):
                    pending = reader.submit(read_batch, batches[i + 1][1])
                began = time.perf_counter()
                outputs = self._run_where_data(read)
                clock["model"] += time.perf_counter() - began
                idle += sum(out is None for out in outputs)
                queued.append(polygoniser.submit(polygonise, start, chunk, outputs, read))
                while len(queued) > 2:  # bounded: at most two batches' masks held
                    found.extend(self._wait(queued.popleft()))
                bar.update(len(chunk))
            while queued:
                found.extend(self._wait(queued.popleft()))
        bar.close()
        if idle:
            logger.info("%s: %d of %d tiles hold no data (nodata, mask or a mosaic's gaps): "
                        "not run", shown, idle, len(tiles))
        began = time.perf_counter()
        merged = merge_across_tiles([f[0] for f in found], [f[1] for f in found],
                                    [f[2] for f in found])
        if gaps and merged[0]:
            keep = inside_data(merged[0], gaps)
            merged = ([p for p, k in zip(merged[0], keep) if k],
                      [v for v, k in zip(merged[1], keep) if k])
        clock["merge"] += time.perf_counter() - began
        return merged[0], merged[1], gaps

    def _run_where_data(self, read: list) -> list:
        """Model outputs of one batch's tiles ``read`` ((image, valid) pairs), None for each
        tile without a single pixel of data (a scene's nodata collar, a mosaic's gaps): such a
        tile is not run. Whatever the model found there would lie wholly outside the data:
        dropped (:data:`mnc_d2.geometry.on_data.MAX_OUTSIDE_DATA`), or, touching a building of
        the next tile at the tile edge, merged into it as a piece the imagery does not show
        (which could get it dropped)."""
        outputs = [None] * len(read)
        todo = [k for k, (_, valid) in enumerate(read) if valid.any()]
        if todo:
            for k, out in zip(todo, self._run([read[k][0] for k in todo])):
                outputs[k] = out
        return outputs

    def _wait(self, future):
        began = time.perf_counter()
        out = future.result()
        self.timings["waiting_for_polygons"] += time.perf_counter() - began
        return out

    def _tile_polygons(self, start: int, chunk, outputs) -> list:
        """(polygon in scene pixels, score, tile index) of the buildings each tile owns."""
        out = []
        for k, (tile, instances) in enumerate(zip(chunk, outputs)):
            if instances is None:  # not run: no data in the tile
                continue
            found = instances_to_polygons(instances, **self.post)
            shifted = [affinity.translate(p, tile.window.col_off, tile.window.row_off)
                       for p, _ in found]
            for keep, poly, (_, score) in zip(in_core(shifted, tile.core), shifted, found):
                if keep:
                    out.append((poly, score, start + k))
        return out


def gap_parts(tile, valid: np.ndarray) -> np.ndarray:
    """(K,) polygons (scene pixels) of the pixels of ``tile``'s core that hold no data, clipped
    to the core (cores partition the scene, so the parts of all tiles never overlap).

    valid: (h, w) bool over ``tile.window``: which pixels hold data."""
    parts = np.asarray(mask_to_polygons(~valid), dtype=object)
    if not len(parts):
        return parts
    offset = np.array([tile.window.col_off, tile.window.row_off], dtype=np.float64)
    parts = shapely.intersection(shapely.transform(parts, lambda xy: xy + offset),
                                 shapely.box(*tile.core))
    return parts[shapely.area(parts) > 0]


class _Lane:
    """One worker thread (``workers`` 1) or none (0: ``submit`` runs the call at once);
    ``submit`` returns an object with ``result()`` either way."""

    def __init__(self, workers: int):
        self.pool = ThreadPoolExecutor(max_workers=1) if workers else None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, fn, *args):
        if self.pool is not None:
            return self.pool.submit(fn, *args)
        done = Future()
        try:
            done.set_result(fn(*args))
        except BaseException as exc:  # re-raised by result(), as a thread's would be
            done.set_exception(exc)
        return done


def write_scene_formats(pred: ScenePrediction, paths: dict[str, Path], feature_id: dict,
                        rgb_bands: list[int] | None = None) -> list:
    """Write the formats ``paths`` names (``geojson``: map coordinates in the source CRS, each
    feature with ``feature_id``, building_id and score; ``csv``: SpaceNet proposals in the
    scene file's own pixels, also where the model saw it resampled, as truth CSVs of that file
    are; ``png``: overlay), each atomically. Returns the polygons in map coordinates."""
    geo = [pixel_to_map(p, pred.transform) for p in pred.polygons]
    if "geojson" in paths:
        props = [{**feature_id, "building_id": i, "score": round(s, 4)}
                 for i, s in enumerate(pred.scores)]
        write_geojson(paths["geojson"], geo, pred.crs, props)
    if "csv" in paths:
        pixels = (pred.polygons if pred.file_transform is None else
                  [map_to_pixel(g, pred.file_transform) for g in geo])
        write_proposal_csv(paths["csv"], {pred.image_id: list(zip(pixels, pred.scores))})
    if "png" in paths:
        _write_overlay(pred, Path(paths["png"]), rgb_bands)
    return geo


def _write_overlay(pred: ScenePrediction, path: Path, rgb_bands: list[int] | None) -> None:
    scale = min(1.0, MAX_OVERLAY_SIDE / max(pred.width, pred.height))
    h, w = max(1, int(pred.height * scale)), max(1, int(pred.width * scale))
    with rasterio.open(pred.path) as src:
        if rgb_bands and max(rgb_bands) > src.count:  # a mixed folder: the overlay is no reason
            # to lose the scene's buildings
            logger.warning("%s has %d band(s): its overlay shows bands 1-%d, not --rgb-bands %s",
                           redact(pred.path), src.count, min(src.count, 3),
                           " ".join(map(str, rgb_bands)))
            rgb_bands = None
        bands = rgb_bands or list(range(1, min(src.count, 3) + 1))
        image = stretch_to_uint8(src.read(bands, out_shape=(len(bands), h, w),
                                          resampling=Resampling.average),
                                 valid=src.dataset_mask(out_shape=(h, w)) > 0)
    for poly in pred.polygons:  # holes (a courtyard) drawn too
        draw_outline(image, shapely.transform(poly, lambda xy: xy * scale), (255, 255, 0), 1)
    write_png(path, image)
