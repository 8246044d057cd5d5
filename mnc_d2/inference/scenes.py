"""Many scenes, one output folder: inputs, the run record, per-scene GeoParquet, the manifest.

Layout of an output folder (``tools/predict.py --output OUTPUT``)::

    OUTPUT/run.json                   what produced the folder (config and weights hashes, ...)
    OUTPUT/manifest.parquet           one row per scene and run: scene, path, status, buildings,
                                      seconds, worker, error, run_started, peak_rss_mb
    OUTPUT/buildings/<scene>.parquet  GeoParquet 1.1, EPSG:4326, bbox covering column; one row
                                      per building: scene, building_id, score, area_m2, geometry
    OUTPUT/<format>/<scene>.*         optional GeoJSON (source CRS), SpaceNet CSV, PNG overlay

Every file is written under a temporary name and renamed, so a file that exists is complete; a
scene whose GeoParquet exists is done. Torch-free (the engines in :mod:`.engines` run the model).
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import socket
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..utils.atomic import atomic_path, atomic_write

logger = logging.getLogger(__name__)

FORMATS = ("parquet", "geojson", "csv", "png")
STATUSES = ("ok", "failed", "skipped")
RUN_FILE = "run.json"
MANIFEST = "manifest.parquet"
# run.json keys that must match for a re-run to reuse (skip) finished scenes
IDENTITY_KEYS = ("config_sha256", "weights_sha256", "score_thresh", "tile_size", "overlap",
                 "formats")


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

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Scene:
    """An input: its path (as given, may not exist) and its unique output name."""

    path: str
    name: str = field(default="")


def expand_inputs(items: list[str]) -> list[Scene]:
    """Files, globs and ``@list.txt`` (one path or glob per line; blank and ``#`` lines
    skipped), mixed freely -> scenes in order, duplicates dropped.

    A path that does not exist is kept (it gets a ``failed`` row); a glob matching nothing is
    kept as given, for the same reason. A missing list file is a :class:`UsageError`.
    """
    paths: list[str] = []

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
        if glob.has_magic(item):
            found = sorted(glob.glob(item, recursive=True))
            paths.extend(found if found else [item])
            return
        paths.append(item)

    for item in items:
        add(item)
    unique = list(dict.fromkeys(str(Path(p)) for p in paths))
    return name_scenes(unique)


def name_scenes(paths: list[str]) -> list[Scene]:
    """Output names: the file stem, or stem-<8 hex of the absolute path> where stems collide."""
    stems: dict[str, int] = {}
    for p in paths:
        stems[Path(p).stem] = stems.get(Path(p).stem, 0) + 1
    scenes = []
    for p in paths:
        stem = Path(p).stem
        if stems[stem] > 1:
            stem = f"{stem}-{hashlib.sha1(str(Path(p).resolve()).encode()).hexdigest()[:8]}"
        scenes.append(Scene(p, stem))
    return scenes


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def run_record(cfg_text: str, weights: str, score_thresh: float, tile_size: int, overlap: int,
               formats: list[str]) -> dict:
    """The run's identity (IDENTITY_KEYS) plus descriptive fields, for ``run.json``."""
    from .. import __version__

    return {
        "config_sha256": hashlib.sha256(cfg_text.encode()).hexdigest(),
        "weights_sha256": sha256_of(weights),
        "score_thresh": float(score_thresh),
        "tile_size": int(tile_size),
        "overlap": int(overlap),
        "formats": sorted(formats),
        "weights": str(weights),
        "mnc_d2_version": __version__,
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
        same = all(old.get(k) == record[k] for k in IDENTITY_KEYS)
        if same and not overwrite:
            return True
        if not same and not overwrite:
            changed = [k for k in IDENTITY_KEYS if old.get(k) != record[k]]
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


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def peak_rss_mb() -> float:
    """This process' peak resident set size in MB (Linux reports KB, macOS bytes)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1 << 20) if sys.platform == "darwin" else peak / 1024, 1)


def write_buildings_parquet(path: str | Path, scene_name: str, polygons_map: list,
                            scores: list[float], crs) -> int:
    """GeoParquet 1.1 (EPSG:4326, bbox covering) of one scene's buildings; atomic.

    ``polygons_map``: polygons in the scene's CRS ``crs``. ``area_m2`` is computed in the UTM
    zone of the scene (an equal-distance local metric CRS) before reprojection.
    """
    import geopandas as gpd

    frame = gpd.GeoDataFrame(
        {"scene": [scene_name] * len(polygons_map),
         "building_id": np.arange(len(polygons_map), dtype=np.int64),
         "score": np.asarray(scores, dtype=np.float64)},
        geometry=list(polygons_map), crs=crs)
    frame["area_m2"] = area_m2(frame)
    frame = frame[["scene", "building_id", "score", "area_m2", "geometry"]].to_crs("EPSG:4326")
    with atomic_path(path) as tmp:  # creates the parent folder
        frame.to_parquet(tmp, index=False, write_covering_bbox=True, schema_version="1.1.0")
    return len(frame)


def area_m2(frame) -> np.ndarray:
    """(N,) areas in m^2 of a GeoDataFrame's polygons: in its own CRS when that is projected in
    metres, else in the UTM zone of the polygons."""
    if not len(frame):
        return np.zeros(0)
    metric = frame.crs if frame.crs.is_projected and _metre_units(frame.crs) else \
        frame.estimate_utm_crs()
    return frame.to_crs(metric).area.to_numpy()


def _metre_units(crs) -> bool:
    return all((axis.unit_name or "").lower() in ("metre", "meter") for axis in crs.axis_info)


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
