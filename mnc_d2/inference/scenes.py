"""Many scenes, one output folder: inputs, the run record, per-scene GeoParquet, the manifest.

Layout of an output folder (``tools/predict.py --output OUTPUT``)::

    OUTPUT/run.json                   what produced the folder (config and weights hashes, ...)
    OUTPUT/manifest.parquet           one row per scene and run: scene, path, status, buildings,
                                      seconds, worker, error, run_started, peak_rss_mb
    OUTPUT/buildings/<scene>.parquet  GeoParquet 1.1, EPSG:4326, bbox covering column; one row
                                      per building: scene, building_id, score, area_m2,
                                      datetime (UTC, null when unknown), view_angle, geometry;
                                      file metadata ``mnc_d2``: run hashes, threshold, version
    OUTPUT/<format>/<scene>.*         optional GeoJSON (source CRS), SpaceNet CSV, PNG overlay

Every file is written under a temporary name and renamed, so a file that exists is complete; a
scene whose GeoParquet exists is done. Torch-free (the engines in :mod:`.engines` run the model).
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..utils.atomic import atomic_path, atomic_write
from .sources import SceneInfo, expand_stac, is_remote, is_stac, without_query

logger = logging.getLogger(__name__)

FORMATS = ("parquet", "geojson", "csv", "png")
STATUSES = ("ok", "failed", "skipped")
RUN_FILE = "run.json"
MANIFEST = "manifest.parquet"
# run.json keys that must match for a re-run to reuse (skip) finished scenes
IDENTITY_KEYS = ("config_sha256", "weights_sha256", "score_thresh", "tile_size", "overlap",
                 "formats", "backend", "scene_bands", "match_radiometry")
# What a run.json written before a key existed means by it.
IDENTITY_DEFAULTS = {"backend": "torch", "scene_bands": None, "match_radiometry": False}


class UsageError(ValueError):
    """A command-line problem (exit status 2): bad list file, mixed runs without --overwrite."""


@dataclass
class SceneRow:
    """One scene's outcome in one run (a manifest row)."""

    scene: str
    path: str
    status: str
    buildings: int = 0
    seconds: float = 0.0
    worker: str = ""
    error: str = ""
    run_started: str = ""
    peak_rss_mb: float = 0.0  # the worker process' peak resident memory after this scene
    scene_gsd_m: float = float("nan")  # metres per pixel of the scene as read (NaN: unknown)
    model_gsd_m: float = float("nan")  # the model's (INPUT.GSD; NaN: not recorded)
    # what the prediction warned about (radiometry far from training, bands read by index), "; "
    warnings: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Scene:
    """An input: its path (as given, may not exist; a local file, a URL or a /vsi path), its
    unique output name and what else is known of it (:class:`SceneInfo`: STAC id, datetime,
    view angle, GSD, band names)."""

    path: str
    name: str = field(default="")
    info: SceneInfo = field(default_factory=SceneInfo)


# What a folder given as --input contributes (its files with these suffixes, any case).
IMAGERY_SUFFIXES = (".tif", ".tiff", ".vrt")


def expand_inputs(items: list[str], stac_asset: str | None = None,
                  band_count: int | None = None, min_bands: int | None = None) -> list[Scene]:
    """Files, folders (their ``*.tif``, ``*.tiff`` and ``*.vrt``, not recursive), globs,
    ``@list.txt`` (one path or glob per line; blank and ``#`` lines skipped), URLs
    (``https://``, ``s3://``, ``gs://``, ``/vsi...``) and STAC documents (a ``.json`` path or
    URL: item, item collection, catalog or collection; one scene per item, its asset chosen by
    ``stac_asset`` or by ``band_count`` / ``min_bands``, :func:`.sources.choose_asset`), mixed
    freely -> scenes in order, duplicates dropped.

    A path that does not exist is kept (it gets a ``failed`` row); a glob matching nothing is
    kept as given, for the same reason. A missing list file, a folder without imagery or an
    unreadable STAC document is a :class:`UsageError`.
    """
    paths: list[str] = []
    infos: dict[str, SceneInfo] = {}

    def add(item: str) -> None:
        if item.startswith("@"):
            listing = Path(item[1:])
            if not listing.is_file():
                raise UsageError(f"input list {listing} does not exist (an @file lists one "
                                 "GeoTIFF path or glob per line)")
            for line in listing.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    add(line)
            return
        if is_stac(item):
            try:
                found = expand_stac(item, stac_asset, band_count, min_bands)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            for href, info in found:
                paths.append(href)
                infos[href] = info
            return
        if is_remote(item):
            paths.append(item)
            return
        if glob.has_magic(item):
            found = sorted(glob.glob(item, recursive=True))
            paths.extend(found if found else [item])
            return
        if Path(item).is_dir():
            found = sorted(str(p) for p in Path(item).iterdir()
                           if p.is_file() and p.suffix.lower() in IMAGERY_SUFFIXES)
            if not found:
                raise UsageError(f"input folder {item} holds no {'/'.join(IMAGERY_SUFFIXES)} "
                                 f"file; for files deeper in it pass a glob: '{item}/**/*.tif'")
            paths.extend(found)
            return
        paths.append(str(Path(item)))

    for item in items:
        add(item)
    unique = list(dict.fromkeys(paths))
    return name_scenes(unique, infos)


def scene_stem(path: str, info: SceneInfo | None = None) -> str:
    """A scene's name in outputs and image ids: its STAC item id (made file-name safe) when
    known, else its file name's stem (a URL's without its query string)."""
    if info is not None and info.stac_id:
        return re.sub(r"[^A-Za-z0-9._-]+", "_", info.stac_id)
    if is_remote(path):
        return Path(without_query(path).rstrip("/")).stem or "scene"
    return Path(path).stem


def name_scenes(paths: list[str], infos: dict | None = None) -> list[Scene]:
    """Output names: the STAC item id, else the file stem (a URL's without its query), or
    name-<8 hex of the absolute path or URL> where names collide."""
    infos = infos or {}
    stems: dict[str, int] = {}
    for p in paths:
        stem = scene_stem(p, infos.get(p))
        stems[stem] = stems.get(stem, 0) + 1
    scenes = []
    for p in paths:
        stem = scene_stem(p, infos.get(p))
        if stems[stem] > 1:
            key = without_query(p) if is_remote(p) else str(Path(p).resolve())
            stem = f"{stem}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"
        scenes.append(Scene(p, stem, infos.get(p, SceneInfo())))
    return scenes


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def run_record(cfg_text: str, weights: str, score_thresh: float, tile_size: int, overlap: int,
               formats: list[str], model_gsd_m: float | None = None,
               backend: str = "torch", scene_bands: list[int] | None = None,
               match_radiometry: bool = False) -> dict:
    """The run's identity (IDENTITY_KEYS) plus descriptive fields, for ``run.json``."""
    from .. import __version__

    return {
        "config_sha256": hashlib.sha256(cfg_text.encode()).hexdigest(),
        "weights_sha256": sha256_of(weights),
        "score_thresh": float(score_thresh),
        "tile_size": int(tile_size),
        "overlap": int(overlap),
        "formats": sorted(formats),
        "backend": backend,
        "weights": str(weights),
        "mnc_d2_version": __version__,
        "model_gsd_m": model_gsd_m,
        "scene_bands": list(scene_bands) if scene_bands else None,  # predict.py --scene-bands
        "match_radiometry": bool(match_radiometry),  # predict.py --match-radiometry
        "config": cfg_text,
    }


def prepare_output(out_dir: str | Path, record: dict, overwrite: bool) -> bool:
    """Check or write ``run.json``; returns True when finished scenes may be skipped.

    A folder holding another run (different identity) is refused unless ``overwrite``, in which
    case its outputs are removed first.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / RUN_FILE
    if path.is_file():
        old = json.loads(path.read_text())
        changed = [k for k in IDENTITY_KEYS if old.get(k, IDENTITY_DEFAULTS.get(k)) != record[k]]
        same = not changed
        if same and not overwrite:
            return True
        if not same and not overwrite:
            raise UsageError(f"{out_dir} holds the outputs of another run ({', '.join(changed)} "
                             "differ); use a new --output folder, or --overwrite to replace them")
        for fmt in ("buildings", *FORMATS[1:]):
            for old_file in (out_dir / fmt).glob("*"):  # nothing when the folder is absent
                old_file.unlink()
        (out_dir / MANIFEST).unlink(missing_ok=True)
    with atomic_write(path, "w") as handle:
        json.dump(record, handle, indent=2)
    return False


def parquet_path(out_dir: str | Path, scene: Scene) -> Path:
    return Path(out_dir) / "buildings" / f"{scene.name}.parquet"


def unreadable_reason(path: str | Path) -> str | None:
    """Why the per-scene GeoParquet ``path`` cannot be used (its footer unreadable, e.g. cut
    short by an interrupted copy, or no GeoParquet metadata), else None. Reads the footer only."""
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_schema(path).metadata or {}
    except Exception as exc:  # noqa: BLE001 - any reader error means the same here
        return f"{type(exc).__name__}: {exc}"
    return None if b"geo" in metadata else "no GeoParquet metadata (not written by predict.py)"


def damaged_file_message(path: str | Path, reason: str) -> str:
    """What a tool that leaves out a scene's unreadable GeoParquet says about it, with the fix."""
    return (f"{path} cannot be read ({reason}); run tools/predict.py again with the same "
            "--output to predict the scene again")


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def peak_rss_mb() -> float:
    """This process' peak resident set size in MB (Linux reports KB, macOS bytes)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1 << 20) if sys.platform == "darwin" else peak / 1024, 1)


# the per-scene GeoParquet's key-value metadata holding the scene's pixel grid
GRID_KEY = b"mnc_d2_grid"


def write_buildings_parquet(path: str | Path, scene_name: str, polygons_map: list,
                            scores: list[float], crs, info: SceneInfo | None = None,
                            run: dict | None = None, grid: dict | None = None) -> int:
    """GeoParquet 1.1 (EPSG:4326, bbox covering) of one scene's buildings; atomic.

    ``polygons_map``: polygons in the scene's CRS ``crs``. ``area_m2`` is computed in the UTM
    zone of the scene (an equal-distance local metric CRS) before reprojection. Every row
    carries the imagery's ``datetime`` (UTC; null when unknown) and ``view_angle`` (degrees;
    null when unknown) from ``info``; the file's key-value metadata ``mnc_d2`` holds ``run``
    (the run's identity: config and weights hashes, threshold, version) as JSON, and
    ``mnc_d2_grid`` the scene's pixel grid (``grid``: ``ScenePrediction.file_grid()``), which
    scoring the folder reads instead of opening the scene (a signed URL's token is not kept).
    """
    import geopandas as gpd
    import pandas as pd
    import pyarrow.parquet as pq

    info = info or SceneInfo()
    n = len(polygons_map)
    frame = gpd.GeoDataFrame(
        {"scene": [scene_name] * n,
         "building_id": np.arange(n, dtype=np.int64),
         "score": np.asarray(scores, dtype=np.float64),
         "datetime": pd.Series(pd.to_datetime([info.datetime] * n, utc=True),
                               dtype="datetime64[us, UTC]"),
         "view_angle": np.full(n, np.nan if info.view_angle is None else info.view_angle)},
        geometry=list(polygons_map), crs=crs)
    frame["area_m2"] = area_m2(frame)
    frame = frame[["scene", "building_id", "score", "area_m2", "datetime", "view_angle",
                   "geometry"]].to_crs("EPSG:4326")
    with atomic_path(path) as tmp:  # creates the parent folder
        frame.to_parquet(tmp, index=False, write_covering_bbox=True, schema_version="1.1.0")
        if run is not None or grid is not None:
            table = pq.read_table(tmp)
            meta = dict(table.schema.metadata or {})
            if run is not None:
                meta[b"mnc_d2"] = json.dumps(run).encode()
            if grid is not None:
                meta[GRID_KEY] = json.dumps(grid).encode()
            pq.write_table(table.replace_schema_metadata(meta), tmp)
    return n


def recorded_grid(schema_metadata: dict | None) -> tuple | None:
    """(crs WKT or None, Affine transform, width, height) that a per-scene GeoParquet's
    ``mnc_d2_grid`` metadata (:data:`GRID_KEY`, the file's schema metadata) records; None for
    a file without it (written before predict.py recorded it)."""
    from affine import Affine

    raw = (schema_metadata or {}).get(GRID_KEY)
    if not raw:
        return None
    grid = json.loads(raw)
    return (grid["crs"] or None, Affine(*grid["transform"]), int(grid["width"]),
            int(grid["height"]))


def recorded_data_region(schema_metadata: dict | None):
    """Where the scene holds data (a polygon in the grid's CRS), as a per-scene GeoParquet's
    ``mnc_d2_grid`` metadata records it for a scene with pixels outside its data; None when
    none is recorded (the whole grid holds data, or the file predates the record)."""
    import shapely

    raw = (schema_metadata or {}).get(GRID_KEY)
    text = json.loads(raw).get("data") if raw else None
    return shapely.from_wkt(text) if text else None


def run_provenance(record: dict) -> dict:
    """The part of ``run.json`` each GeoParquet file carries: what made its buildings."""
    return {k: record.get(k) for k in ("config_sha256", "weights_sha256", "score_thresh",
                                       "mnc_d2_version", "model_gsd_m")}


def area_m2(frame) -> np.ndarray:
    """(N,) areas in m^2 of a GeoDataFrame's polygons: in its own CRS when that is projected in
    metres (not Mercator, whose areas grow with latitude: :mod:`mnc_d2.geometry.crs`), else in
    the UTM zone of the polygons."""
    from ..geometry.crs import metre_units, needs_utm, utm_crs_of

    if not len(frame):
        return np.zeros(0)
    metric = frame.crs if frame.crs.is_projected and metre_units(frame.crs) and \
        not needs_utm(frame.crs) else utm_crs_of(frame)
    return frame.to_crs(metric).area.to_numpy()


def append_manifest(out_dir: str | Path, rows: list[SceneRow], csv: bool = False) -> Path:
    """Add this run's rows to ``manifest.parquet`` (and ``manifest.csv`` when asked); atomic."""
    import pandas as pd

    out_dir = Path(out_dir)
    path = out_dir / MANIFEST
    new = pd.DataFrame([r.as_dict() for r in rows], columns=list(SceneRow.__dataclass_fields__))
    frame = pd.concat([pd.read_parquet(path), new], ignore_index=True) if path.is_file() else new
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)
    if csv:
        with atomic_write(out_dir / "manifest.csv", "w", newline="") as handle:
            frame.to_csv(handle, index=False)
    return path


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
