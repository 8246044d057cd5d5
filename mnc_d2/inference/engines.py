"""Run a trained model over many scenes: in this process (``local``) or on Ray Data (``ray``).

Both engines call :func:`process_scene` for every scene, so they write identical outputs. A scene
that fails (missing, not a GeoTIFF, truncated, too few bands, no CRS, anything the model raises)
becomes a ``failed`` manifest row naming the file; the other scenes go on.

``ray``: the scenes become a Ray Dataset with one scene per block, mapped by a pool of actors
(``map_batches`` with ``ActorPoolStrategy``) that each load the model once. Without an address
(``--ray-address`` or ``RAY_ADDRESS``) Ray starts in this process on this machine; with one,
the job joins that cluster (every node must see the weights, the scenes and the output folder
at the same paths; a scene whose GeoParquet the driver cannot see afterwards is failed).
An actor that dies mid-scene is restarted and its scene retried (``max_restarts`` /
``max_task_retries``); since every output file is renamed into place only when complete, a retry
rewrites the same files and no row is duplicated.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import time
from pathlib import Path

import rasterio
import rasterio.errors

from ..data.bands import SCENE_BANDS_HINT, check_band_count, check_scene_bands
from ..data.georef import georeferencing_problem
from .predictor import write_scene_formats
from .scenes import (Scene, SceneRow, parquet_path, peak_rss_mb, worker_name,
                     write_buildings_parquet)
from .sources import SceneInfo, is_remote, redact, without_query

logger = logging.getLogger(__name__)

# Test hook: when set to a path that does not exist yet, the first Ray actor call creates it and
# kills its own process (os._exit), to show that a dead worker loses no scene.
FAULT_ENV = "MNC_D2_FAULT_DIE_ONCE"


# A remote scene is tried this many times, waiting 1, 2, 4 ... s between tries (GDAL retries
# single HTTP requests on its own: GDAL_HTTP_MAX_RETRY / GDAL_HTTP_RETRY_DELAY below).
REMOTE_ATTEMPTS = 3
# GDAL options for remote reads, used unless the environment sets them: no directory listing
# on open (one request fewer per file), bounded retries with back-off for each request.
REMOTE_GDAL_DEFAULTS = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "GDAL_HTTP_MAX_RETRY": "2",
                        "GDAL_HTTP_RETRY_DELAY": "0.5", "GDAL_HTTP_TIMEOUT": "60",
                        "CPL_VSIL_CURL_USE_HEAD": "NO"}


def remote_env(uncached: str | None = None) -> rasterio.Env:
    """GDAL options for remote reads; ``uncached``: a URL GDAL must fetch afresh (a retry: GDAL
    remembers a failed URL for the life of the process otherwise)."""
    options = {k: v for k, v in REMOTE_GDAL_DEFAULTS.items() if k not in os.environ}
    if uncached:
        options["CPL_VSIL_CURL_NON_CACHED"] = gdal_vsi_prefix(uncached)
    return rasterio.Env(**options)


def gdal_vsi_prefix(url: str) -> str:
    """GDAL's virtual file name of ``url`` without its query (what its caches are keyed by)."""
    bare = without_query(url)
    for scheme, vsi in (("s3://", "/vsis3/"), ("gs://", "/vsigs/"), ("az://", "/vsiaz/")):
        if bare.startswith(scheme):
            return vsi + bare[len(scheme):]
    return bare if bare.startswith("/vsi") else "/vsicurl/" + bare


def _check_scene(path: str, bands: list[int], scene_bands: list[int] | None = None) -> None:
    """Fail early, naming the file, for inputs that cannot give georeferenced buildings
    (``scene_bands``: predict.py --scene-bands, read instead of the model's ``bands``)."""
    shown = redact(path)
    if not is_remote(path) and not Path(path).exists():
        raise FileNotFoundError(f"{shown} does not exist")
    try:
        with rasterio.open(path) as src:
            problem = georeferencing_problem(src, shown)
            if problem:
                raise ValueError(problem)
            if scene_bands:
                check_scene_bands(src, scene_bands)
            else:
                check_band_count(src, bands, SCENE_BANDS_HINT)
    except rasterio.errors.RasterioIOError as exc:
        if is_remote(path):  # the network's failure, perhaps passing: tried again
            raise OSError(f"{shown} could not be read ({redact(str(exc))})") from None
        raise ValueError(f"{shown} is not a readable GeoTIFF ({exc})") from None


def process_scene(predictor, scene: Scene, out_dir: str | Path, formats: list[str],
                  run_started: str, rgb_bands: list[int] | None = None,
                  provenance: dict | None = None) -> SceneRow:
    """Predict one scene and write its outputs (GeoParquet last: it marks the scene done).

    A remote scene that fails is tried again (``REMOTE_ATTEMPTS``, with back-off) before it
    gets its ``failed`` row; the row and the logs show the URL without its query string."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    shown = redact(scene.path)
    attempts = REMOTE_ATTEMPTS if is_remote(scene.path) else 1
    for attempt in range(1, attempts + 1):
        try:
            with (remote_env(scene.path if attempt > 1 else None) if is_remote(scene.path)
                  else rasterio.Env()):
                _check_scene(scene.path, predictor.bands, predictor.scene_bands)
                pred = predictor.predict(scene.path, progress=False, info=scene.info)
                extra = {fmt: out_dir / fmt / f"{scene.name}.{fmt}" for fmt in formats
                         if fmt != "parquet"}
                geo = write_scene_formats(pred, extra, {"scene": scene.name}, rgb_bands)
            info = dataclasses.replace(scene.info, datetime=pred.datetime)
            count = write_buildings_parquet(parquet_path(out_dir, scene), scene.name, geo,
                                            pred.scores, pred.crs, info, provenance,
                                            pred.file_grid())
            return SceneRow(scene.name, shown, "ok", count, time.perf_counter() - start,
                            worker_name(), "", run_started, peak_rss_mb(), pred.gsd_m,
                            pred.model_gsd_m, "; ".join(pred.warnings))
        except Exception as exc:  # one bad scene never stops the others
            text = redact(str(exc))
            message = f"{type(exc).__name__}: " + (text if shown in text else f"{shown}: {text}")
            if attempt < attempts and isinstance(exc, OSError):  # I/O: may pass; else final
                logger.warning("scene %s, try %d of %d failed (%s); trying again", scene.name,
                               attempt, attempts, message)
                time.sleep(2 ** (attempt - 1))
                continue
            if attempt > 1:
                message += f" (after {attempt} tries)"
            logger.error("scene %s failed: %s", scene.name, message)
            return SceneRow(scene.name, shown, "failed", 0, time.perf_counter() - start,
                            worker_name(), message, run_started, peak_rss_mb())


def run_local(predictor, scenes: list[Scene], out_dir, formats: list[str],
              run_started: str, rgb_bands=None, provenance: dict | None = None
              ) -> list[SceneRow]:
    """Every scene in this process, one after the other, with one loaded ``predictor``."""
    from tqdm import tqdm

    return [process_scene(predictor, scene, out_dir, formats, run_started, rgb_bands,
                          provenance)
            for scene in tqdm(scenes, desc="scenes", unit="scene")]


def actor_device(config_device: str, gpus_per_worker: float, cuda_available: bool) -> str:
    """The eager model's device in a Ray actor: CUDA when the actor holds a GPU
    (``--gpus-per-worker``) and sees one, whatever the run's config.yaml says (a model trained
    on CPUs records MODEL.DEVICE cpu); else the config's."""
    if gpus_per_worker > 0 and cuda_available and not config_device.startswith("cuda"):
        return "cuda"
    return config_device


class RayResourceError(ValueError):
    """One Ray actor asks for more than the cluster Ray runs in this process has."""


class RayAddressError(ValueError):
    """Nothing answers at the Ray address given (--ray-address or RAY_ADDRESS)."""


def check_ray_address(address: str, timeout: float = 5.0) -> None:
    """Fail at once, naming the address and the fix, when nothing accepts a connection at a
    ``HOST:PORT`` or ``ray://HOST:PORT`` address: ``ray.init`` would retry it for minutes before
    failing. Other forms (``auto``, ``local``) are left to Ray."""
    bare = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = bare.rpartition(":")
    if not sep or not host or not port.isdigit() or "/" in bare:
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise RayAddressError(
            f"no Ray cluster answers at {address} ({exc.strerror or exc}): start one there "
            "(ray start --head --port PORT), fix --ray-address / RAY_ADDRESS, or leave both "
            "unset to run Ray on this machine") from None


def check_ray_resources(resources: dict, cpus_per_worker: float, gpus_per_worker: float,
                        own_cluster: bool) -> None:
    """What one actor asks for against what the Ray cluster has (``ray.cluster_resources()``).
    Ray would wait for the missing resources forever, so: RayResourceError when Ray runs in this
    process (nothing will ever add them); a warning when joining a cluster (its autoscaler may
    add such nodes)."""
    short = [f"--{flag}-per-worker {asked:g} but it has {resources.get(key, 0):g} {key}(s)"
             for flag, key, asked in (("cpus", "CPU", cpus_per_worker),
                                      ("gpus", "GPU", gpus_per_worker))
             if asked > resources.get(key, 0)]
    if not short:
        return
    where = "Ray on this machine" if own_cluster else "the Ray cluster joined"
    message = (f"{where}: {'; '.join(short)}, so no worker could ever start. Ask for less "
               "(--gpus-per-worker 0 runs the model on the CPU) or join a cluster that has them "
               "(--ray-address)")
    if own_cluster:
        raise RayResourceError(message)
    logger.warning("%s; waiting in case the cluster adds such nodes", message)


class _SceneActor:
    """A Ray Data actor: builds the model once, then predicts the scenes of each batch."""

    def __init__(self, cfg_text: str | None, predictor_kwargs: dict, out_dir: str,
                 formats: list[str], run_started: str, rgb_bands, threads: int,
                 provenance: dict | None = None, gpus: float = 0.0):
        from .predictor import ScenePredictor

        threads = max(1, threads)
        if cfg_text is None:  # an exported model: no torch, no Detectron2 in the actor
            self.predictor = ScenePredictor(None, threads=threads, **predictor_kwargs)
        else:
            import torch

            torch.set_num_threads(threads)
            cfg = load_cfg_text(cfg_text)
            device = actor_device(cfg.MODEL.DEVICE, gpus, torch.cuda.is_available())
            if device != cfg.MODEL.DEVICE:
                cfg.defrost()
                cfg.MODEL.DEVICE = device
                cfg.freeze()
            self.predictor = ScenePredictor(cfg, **predictor_kwargs)
        self.args = (out_dir, formats, run_started, rgb_bands, provenance)

    def __call__(self, batch: dict) -> dict:
        marker = os.environ.get(FAULT_ENV)
        if marker and not Path(marker).exists():
            Path(marker).write_text(worker_name())
            os._exit(1)
        rows = [process_scene(self.predictor, Scene(str(p), str(n),
                                                    SceneInfo(**json.loads(str(i)))),
                              *self.args).as_dict()
                for p, n, i in zip(batch["path"], batch["name"], batch["info"])]
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
            max_retries: int = 3, threads: int | None = None,
            provenance: dict | None = None) -> list[SceneRow]:
    """Every scene on a Ray actor pool (module docstring); returns the rows in scene order.
    ``cfg`` None: an exported model (``predictor_kwargs`` name its backend and folder)."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    if not ray.is_initialized():
        if address:
            check_ray_address(address)
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=max(int(workers * cpus_per_worker), 1), include_dashboard=False,
                     log_to_driver=False)
    if not scenes:
        return []
    check_ray_resources(ray.cluster_resources(), cpus_per_worker, gpus_per_worker,
                        own_cluster=not address)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    items = [{"path": s.path, "name": s.name, "info": json.dumps(s.info.as_dict())}
             for s in scenes]
    dataset = ray.data.from_items(items, override_num_blocks=len(items))
    results = dataset.map_batches(
        _SceneActor, batch_size=1, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers),
        fn_constructor_kwargs={"cfg_text": cfg.dump() if cfg is not None else None,
                               "predictor_kwargs": predictor_kwargs,
                               "out_dir": os.path.abspath(out_dir), "formats": list(formats),
                               "run_started": run_started, "rgb_bands": rgb_bands,
                               "threads": threads or max(1, int(cpus_per_worker)),
                               "provenance": provenance, "gpus": gpus_per_worker},
        num_cpus=cpus_per_worker, num_gpus=gpus_per_worker or None,
        max_restarts=max_retries, max_task_retries=max_retries)
    by_name = {}
    for row in results.take_all():
        by_name[str(row["scene"])] = SceneRow(
            **{k: _plain(row[k]) for k in SceneRow.__dataclass_fields__})
    missing = [s for s in scenes if s.name not in by_name]
    for s in missing:  # should not happen: Ray retried the scene; say so if it did
        by_name[s.name] = SceneRow(s.name, redact(s.path), "failed", 0, 0.0, "",
                                   "no result came back "
                                   "from Ray (worker lost after its retries)", run_started)
    return outputs_seen_here([by_name[s.name] for s in scenes], scenes, out_dir)


def outputs_seen_here(rows: list[SceneRow], scenes: list[Scene], out_dir) -> list[SceneRow]:
    """``rows`` with each ``ok`` scene whose GeoParquet this process cannot see under
    ``out_dir`` turned ``failed``: a Ray worker on another node wrote it into that node's own
    folder (``--output`` not on a file system every node shares), so the run would report the
    scene done while its buildings sit on another machine. Re-running predict.py predicts the
    failed scenes again."""
    out = []
    for row, scene in zip(rows, scenes):
        if row.status == "ok" and not parquet_path(out_dir, scene).is_file():
            host = row.worker.rsplit(":", 1)[0] or "a worker"
            row = dataclasses.replace(
                row, status="failed", buildings=0,
                error=f"{row.path}: predicted on {host}, but its outputs are not in "
                      f"{Path(out_dir).resolve()} here: the Ray workers wrote them into their "
                      "node's own folder; give --output a folder every node sees at the same "
                      "path (a shared file system) and run again")
        out.append(row)
    return out


def _plain(value):
    return value.item() if hasattr(value, "item") else value
