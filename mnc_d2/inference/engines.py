"""Run a trained model over many scenes: in this process (``local``) or on Ray Data (``ray``).

Both engines call :func:`process_scene` for every scene, so they write identical outputs. A scene
that fails (missing, not a GeoTIFF, truncated, too few bands, no CRS, anything the model raises)
becomes a ``failed`` manifest row naming the file; the other scenes go on.

``ray``: the scenes become a Ray Dataset with one scene per block, mapped by a pool of actors
(``map_batches`` with ``ActorPoolStrategy``) that each load the model once. Without an address
(``--ray-address`` or ``RAY_ADDRESS``) Ray starts in this process on this machine; with one,
the job joins that cluster (every node must see the weights and the scenes at the same paths).
An actor that dies mid-scene is restarted and its scene retried (``max_restarts`` /
``max_task_retries``); since every output file is renamed into place only when complete, a retry
rewrites the same files and no row is duplicated.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import rasterio
import rasterio.errors

from ..data.bands import check_band_count
from .predictor import write_scene_formats
from .scenes import (Scene, SceneRow, parquet_path, peak_rss_mb, worker_name,
                     write_buildings_parquet)

logger = logging.getLogger(__name__)

# Test hook: when set to a path that does not exist yet, the first Ray actor call creates it and
# kills its own process (os._exit), to show that a dead worker loses no scene.
FAULT_ENV = "MNC_D2_FAULT_DIE_ONCE"


def _check_scene(path: Path, bands: list[int]) -> None:
    """Fail early, naming the file, for inputs that cannot give georeferenced buildings."""
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        with rasterio.open(path) as src:
            if src.crs is None:
                raise ValueError(f"{path} has no CRS, so its buildings cannot be placed on a map; "
                                 "georeference it (e.g. gdal_edit.py -a_srs EPSG:32611 ...)")
            check_band_count(src, bands)
    except rasterio.errors.RasterioIOError as exc:
        raise ValueError(f"{path} is not a readable GeoTIFF ({exc})") from None


def process_scene(predictor, scene: Scene, out_dir: str | Path, formats: list[str],
                  run_started: str, rgb_bands: list[int] | None = None) -> SceneRow:
    """Predict one scene and write its outputs (GeoParquet last: it marks the scene done)."""
    start = time.perf_counter()
    path = Path(scene.path)
    out_dir = Path(out_dir)
    try:
        _check_scene(path, predictor.bands)
        pred = predictor.predict(path, progress=False)
        extra = {fmt: out_dir / fmt / f"{scene.name}.{fmt}" for fmt in formats if fmt != "parquet"}
        geo = write_scene_formats(pred, extra, {"scene": scene.name}, rgb_bands)
        count = write_buildings_parquet(parquet_path(out_dir, scene), scene.name, geo,
                                        pred.scores, pred.crs)
        return SceneRow(scene.name, scene.path, "ok", count, time.perf_counter() - start,
                        worker_name(), "", run_started, peak_rss_mb())
    except Exception as exc:  # one bad scene never stops the others
        message = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
        message = f"{type(exc).__name__}: {message}"
        logger.error("scene %s failed: %s", scene.name, message)
        return SceneRow(scene.name, scene.path, "failed", 0, time.perf_counter() - start,
                        worker_name(), message, run_started, peak_rss_mb())


def run_local(predictor, scenes: list[Scene], out_dir, formats: list[str],
              run_started: str, rgb_bands=None) -> list[SceneRow]:
    """Every scene in this process, one after the other, with one loaded ``predictor``."""
    from tqdm import tqdm

    return [process_scene(predictor, scene, out_dir, formats, run_started, rgb_bands)
            for scene in tqdm(scenes, desc="scenes", unit="scene")]


class _SceneActor:
    """A Ray Data actor: builds the model once, then predicts the scenes of each batch."""

    def __init__(self, cfg_text: str, predictor_kwargs: dict, out_dir: str, formats: list[str],
                 run_started: str, rgb_bands, threads: int):
        import torch

        from .predictor import ScenePredictor

        torch.set_num_threads(max(1, threads))
        self.predictor = ScenePredictor(load_cfg_text(cfg_text), **predictor_kwargs)
        self.args = (out_dir, formats, run_started, rgb_bands)

    def __call__(self, batch: dict) -> dict:
        marker = os.environ.get(FAULT_ENV)
        if marker and not Path(marker).exists():
            Path(marker).write_text(worker_name())
            os._exit(1)
        rows = [process_scene(self.predictor, Scene(str(p), str(n)), *self.args).as_dict()
                for p, n in zip(batch["path"], batch["name"])]
        return {key: [r[key] for r in rows] for key in SceneRow.__dataclass_fields__}


def load_cfg_text(cfg_text: str):
    """A frozen config from the YAML text ``cfg.dump()`` wrote (mnc_d2 keys included)."""
    from detectron2.config import CfgNode, get_cfg

    from ..config import add_mnc_config

    cfg = get_cfg()
    add_mnc_config(cfg)
    cfg.merge_from_other_cfg(CfgNode.load_cfg(cfg_text))
    cfg.freeze()
    return cfg


def run_ray(cfg, scenes: list[Scene], out_dir, formats: list[str], run_started: str,
            predictor_kwargs: dict, workers: int = 2, cpus_per_worker: float = 1.0,
            gpus_per_worker: float = 0.0, address: str | None = None, rgb_bands=None,
            max_retries: int = 3, threads: int | None = None) -> list[SceneRow]:
    """Every scene on a Ray actor pool (module docstring); returns the rows in scene order."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=max(int(workers * cpus_per_worker), 1), include_dashboard=False,
                     log_to_driver=False)
    if not scenes:
        return []
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    items = [{"path": s.path, "name": s.name} for s in scenes]
    dataset = ray.data.from_items(items, override_num_blocks=len(items))
    results = dataset.map_batches(
        _SceneActor, batch_size=1, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers),
        fn_constructor_kwargs={"cfg_text": cfg.dump(), "predictor_kwargs": predictor_kwargs,
                               "out_dir": str(out_dir), "formats": list(formats),
                               "run_started": run_started, "rgb_bands": rgb_bands,
                               "threads": threads or max(1, int(cpus_per_worker))},
        num_cpus=cpus_per_worker, num_gpus=gpus_per_worker or None,
        max_restarts=max_retries, max_task_retries=max_retries)
    by_name = {}
    for row in results.take_all():
        by_name[str(row["scene"])] = SceneRow(
            **{k: _plain(row[k]) for k in SceneRow.__dataclass_fields__})
    missing = [s for s in scenes if s.name not in by_name]
    for s in missing:  # should not happen: Ray retried the scene; say so if it did
        by_name[s.name] = SceneRow(s.name, s.path, "failed", 0, 0.0, "", "no result came back "
                                   "from Ray (worker lost after its retries)", run_started)
    return [by_name[s.name] for s in scenes]


def _plain(value):
    return value.item() if hasattr(value, "item") else value
