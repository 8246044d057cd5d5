"""``tools/predict.py``: predict many GeoTIFF scenes into one output folder (see
:mod:`.scenes` for the folder's layout and :mod:`.engines` for the engines).

Exit status: 0 when every scene succeeded (or was skipped as already done), 1 when any failed,
2 for a usage error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..export.bundle import BACKEND_FILES
from ..utils.argv import split_config_overrides
from ..utils.logs import configure_cli_logging
from .scenes import (FORMATS, RUN_FILE, UsageError, SceneRow, append_manifest, expand_inputs,
                     now_iso, parquet_path, prepare_output, run_provenance, run_record,
                     unreadable_reason)
from .sources import MAX_UPSAMPLE, check_max_upsample, redact
from .threshold import check_score_threshold

logger = logging.getLogger(__name__)


def build_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config-file",
                        help="backend torch: the training run's config.yaml (band selection, "
                             "normalisation); required with it")
    parser.add_argument("--backend", default="torch", choices=("torch", *BACKEND_FILES),
                        help="torch: eager Detectron2 (default); the others run an exported "
                             "model (--model) without Detectron2, on the CPU (torchscript: "
                             "where it was exported, export_model.py --device; openvino and "
                             "openvino-int8: the folder's OpenVINO graphs where it has them, "
                             "export_model.py --formats onnx-openvino,onnx-int8-openvino)")
    parser.add_argument("--model", metavar="EXPORTED_DIR",
                        help="the folder tools/export_model.py wrote (backends other than "
                             "torch); it carries the bands, threshold and polygon settings")
    parser.add_argument("--input", nargs="+", required=True,
                        help="GeoTIFF or VRT files, folders (their .tif/.tiff/.vrt files), "
                             "globs ('scenes/**/*.tif'), @list.txt files, "
                             "URLs (https://, s3://, gs://: read window by window) and STAC "
                             "documents (a .json path or URL: item, item collection, catalog), "
                             "mixed")
    parser.add_argument("--stac-asset", metavar="KEY",
                        help="STAC inputs: the asset to read (default: the item's one GeoTIFF "
                             "data asset, or the one with the model's band count)")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="local: this process (default); ray: a Ray Data actor pool")
    parser.add_argument("--workers", type=int, default=2, help="ray: actors (model copies)")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--gpus-per-worker", type=float, default=0.0,
                        help="ray: GPUs per actor (backend torch, or torchscript exported with "
                             "--device cuda, which requires it)")
    parser.add_argument("--torch-threads", type=int,
                        help="CPU threads of the model per process: torch's, or the "
                             "exported backend's (local: this process, default the runtime's; "
                             "ray: per actor, default --cpus-per-worker). Outputs are "
                             "bit-identical across engines for equal thread counts")
    parser.add_argument("--ray-address", help="ray: join this cluster (default: RAY_ADDRESS, "
                                              "else start Ray in this process)")
    parser.add_argument("--formats", default="parquet",
                        help=f"comma-separated subset of {','.join(FORMATS)}; the GeoParquet is "
                             "always written (it marks a scene done)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the outputs of a different run in --output")
    parser.add_argument("--manifest-csv", action="store_true",
                        help="also write OUTPUT/manifest.csv")
    parser.add_argument("--tile-size", type=int, default=650)
    parser.add_argument("--overlap", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--score-thresh", type=float,
                        help="detection score threshold (default: the run's recorded best)")
    parser.add_argument("--max-upsample", type=float, default=MAX_UPSAMPLE, metavar="FACTOR",
                        help="fail a scene whose pixels are more than FACTOR times the model's "
                             "INPUT.GSD instead of resampling it (default %(default)g: e.g. "
                             "1.2 m imagery for a 0.3 m model; 0 = no limit)")
    parser.add_argument("--scene-bands", nargs="+", metavar="BAND",
                        help="the scenes' 1-based bands that hold the model's input channels, "
                             "in the model's order, when they sit elsewhere than in the "
                             "training files (e.g. 5 3 2: red, green, blue of a WorldView-3 "
                             "8-band file such as SpaceNet's MUL-PanSharpen, for an RGB model); "
                             "default: the run's INPUT.BANDS, or its INPUT.BAND_NAMES where a "
                             "scene names its bands")
    parser.add_argument("--match-radiometry", action="store_true",
                        help="map each scene's bands onto the training imagery's mean and "
                             "spread before predicting (a linear stretch per band and scene, "
                             "from the whole scene up to 1024 px a side, else 64 windows of "
                             "it): for imagery "
                             "on another scale than the training data, e.g. an 8-bit export "
                             "of 11-bit imagery; costs a little accuracy on imagery like the "
                             "training data (BENCHMARKS.md section 10)")
    parser.add_argument("--rgb-bands", type=int, nargs=3,
                        help="1-based bands for the PNG (default: --scene-bands when 3, else "
                             "the file's first three)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser


def parse_formats(text: str) -> list[str]:
    formats = [f.strip() for f in text.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise UsageError(f"--formats {text!r}: unknown {unknown}; choose from {FORMATS}")
    return sorted(set(formats) | {"parquet"}, key=FORMATS.index)


def _load_error(source, exc: Exception) -> UsageError:
    """The usage error for a model that cannot be loaded from ``source``: mnc_d2's own errors
    are written to be read whole; others (torch's state-dict dumps) are cut."""
    ours = type(exc).__module__.startswith("mnc_d2.")
    return UsageError(f"cannot load the model from {source}: {type(exc).__name__}: "
                      f"{str(exc) if ours else str(exc)[:300]}")


def _still_readable(path) -> bool:
    """A finished scene's GeoParquet that can no longer be read (damaged since, e.g. by an
    interrupted copy of the folder) is predicted again rather than skipped (logged)."""
    reason = unreadable_reason(path)
    if reason:
        logger.warning("%s cannot be read (%s): predicting its scene again", path, reason)
    return reason is None


def check_numbers(args) -> None:
    """Tiling, batching and pool sizes that cannot work are usage errors before any scene (they
    failed every scene alike, or with a bare Python error)."""
    problems = []
    if args.tile_size < 1:
        problems.append(f"--tile-size {args.tile_size} must be at least 1")
    elif not 0 <= args.overlap < args.tile_size:
        problems.append(f"--overlap {args.overlap} must be in [0, --tile-size {args.tile_size})")
    if args.batch_size < 1:
        problems.append(f"--batch-size {args.batch_size} must be at least 1")
    try:
        check_score_threshold(args.score_thresh)
    except ValueError as exc:
        problems.append(str(exc))
    if args.torch_threads is not None and args.torch_threads < 1:
        problems.append(f"--torch-threads {args.torch_threads} must be at least 1")
    if args.engine == "ray":
        if args.workers < 1:
            problems.append(f"--workers {args.workers} must be at least 1")
        if args.cpus_per_worker <= 0:
            problems.append(f"--cpus-per-worker {args.cpus_per_worker:g} must be above 0")
        if args.gpus_per_worker < 0:
            problems.append(f"--gpus-per-worker {args.gpus_per_worker:g} must be 0 or more")
    if problems:
        raise UsageError("; ".join(problems))


def _band_numbers(words: list[str] | None) -> list[int] | None:
    """--scene-bands as integers (a list option read as words, so that KEY VALUE overrides
    after it are told apart: see split_config_overrides)."""
    if not words:
        return None
    try:
        return [int(w) for w in words]
    except ValueError:
        raise UsageError(f"--scene-bands {' '.join(words)}: give 1-based band numbers "
                         "(e.g. 5 3 2)") from None


def main(argv=None, description: str = "Predict building footprints on GeoTIFF scenes") -> int:
    args = build_parser(description).parse_args(argv)
    args.input, args.opts = split_config_overrides(args.input, args.opts)
    args.scene_bands, args.opts = split_config_overrides(args.scene_bands, args.opts)
    configure_cli_logging()
    try:
        if not args.input:
            raise UsageError("--input: give the scenes before the KEY VALUE overrides")
        args.scene_bands = _band_numbers(args.scene_bands)
        return _run(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _model_source(args):
    """(cfg or None, exported bundle or None) of the command line; UsageError when wrong."""
    if args.backend == "torch":
        if args.model:
            raise UsageError("--model is an exported folder: pass --backend with it (one of "
                             f"{', '.join(BACKEND_FILES)})")
        if not args.config_file:
            raise UsageError("--config-file is required with --backend torch")
        from ..engine.setup import setup_cfg

        try:
            cfg = setup_cfg(args.config_file, args.opts, for_training=False, needs_datasets=False)
        except (ValueError, FileNotFoundError, OSError) as exc:
            raise UsageError(str(exc)) from None
        if not cfg.MODEL.WEIGHTS:
            raise UsageError("no weights: pass MODEL.WEIGHTS path/to/model_final.pth")
        return cfg, None
    from ..export.bundle import ExportError, read_bundle

    if not args.model:
        raise UsageError(f"--backend {args.backend} runs an exported model: pass --model "
                         "EXPORTED_DIR (tools/export_model.py writes one)")
    if args.config_file or [o for o in args.opts if o != "--"]:
        raise UsageError("--config-file and KEY VALUE overrides are for --backend torch; an "
                         "exported model carries its own settings (re-export to change them)")
    try:
        return None, read_bundle(args.model)
    except ExportError as exc:
        raise UsageError(str(exc)) from None


def _run(args) -> int:
    from .engines import RayAddressError, RayResourceError, run_local, run_ray
    from .predictor import ScenePredictor, resolve_score_threshold

    from ..data.bands import input_bands

    try:
        check_max_upsample(args.max_upsample)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    check_numbers(args)
    formats = parse_formats(args.formats)
    cfg, bundle = _model_source(args)
    bands = input_bands(cfg) if cfg is not None else bundle.bands
    if args.scene_bands:
        if len(args.scene_bands) != len(bands) or min(args.scene_bands) < 1:
            raise UsageError(f"--scene-bands {' '.join(map(str, args.scene_bands))}: the model "
                             f"reads {len(bands)} band(s) (trained on bands {list(bands)}); "
                             f"give {len(bands)} 1-based band number(s), one per input channel")
        if args.rgb_bands is None and len(args.scene_bands) == 3:
            args.rgb_bands = list(args.scene_bands)
    # STAC: an asset with the model's band count is preferred, or, where the user said where
    # the bands are, one that has them (--stac-asset picks among several)
    scenes = expand_inputs(args.input, args.stac_asset,
                           band_count=None if args.scene_bands else len(bands),
                           min_bands=max(args.scene_bands) if args.scene_bands else None)
    if not scenes:
        raise UsageError("no input scenes")
    try:
        if cfg is not None:
            score_thresh = resolve_score_threshold(cfg, args.score_thresh)
            record = run_record(cfg.dump(), cfg.MODEL.WEIGHTS, score_thresh, args.tile_size,
                                args.overlap, formats, float(cfg.INPUT.GSD) or None,
                                args.backend, args.scene_bands, args.match_radiometry)
        else:
            score_thresh = float(bundle.meta["score_thresh"] if args.score_thresh is None
                                 else args.score_thresh)
            gsd = bundle.gsd
            record = run_record(bundle.meta["config"], str(bundle.graph_path(args.backend)),
                                score_thresh, args.tile_size, args.overlap, formats,
                                gsd if gsd == gsd else None, args.backend, args.scene_bands,
                                args.match_radiometry)
    except (ValueError, OSError) as exc:
        raise UsageError(str(exc)) from None
    reuse = prepare_output(args.output, record, args.overwrite)
    started = now_iso()
    todo, rows = [], {}
    for scene in scenes:
        done = parquet_path(args.output, scene)
        if reuse and done.is_file() and _still_readable(done):
            rows[scene.name] = SceneRow(scene.name, redact(scene.path), "skipped",
                                        run_started=started,
                                        error=f"done by an earlier run ({RUN_FILE} matches)")
        else:
            todo.append(scene)
    logger.info("%d scene(s): %d to predict, %d already done", len(scenes), len(todo),
                len(scenes) - len(todo))
    kwargs = {"tile_size": args.tile_size, "overlap": args.overlap,
              "batch_size": args.batch_size, "score_thresh": score_thresh,
              "backend": args.backend, "max_upsample": args.max_upsample,
              "scene_bands": args.scene_bands, "match_radiometry": args.match_radiometry}
    if bundle is not None:
        kwargs["model_dir"] = str(bundle.root)
    if args.engine == "local":
        if args.torch_threads and args.backend == "torch":
            import torch

            torch.set_num_threads(args.torch_threads)
        predictor = None
        if todo:
            try:
                predictor = ScenePredictor(cfg, threads=args.torch_threads, **kwargs)
            except Exception as exc:  # unreadable weights, wrong architecture, ...
                raise _load_error(cfg.MODEL.WEIGHTS if cfg is not None else bundle.root,
                                  exc) from None
        done = run_local(predictor, todo, args.output, formats, started, args.rgb_bands,
                         run_provenance(record))
    else:
        runs_on = bundle.device(args.backend) if bundle is not None else "cpu"
        if args.gpus_per_worker > 0 and bundle is not None and runs_on == "cpu":
            raise UsageError(f"--gpus-per-worker is for --backend torch, or torchscript "
                             f"exported with --device cuda: the exported backend "
                             f"{args.backend} of {bundle.root} runs on the CPU")
        if runs_on != "cpu" and args.gpus_per_worker <= 0:
            raise UsageError(f"--model {bundle.root}: its TorchScript graph runs on {runs_on} "
                             "(exported with --device cuda); give the Ray workers a GPU with "
                             "--gpus-per-worker (e.g. 1)")
        if todo and bundle is None and Path(cfg.MODEL.WEIGHTS).is_file():  # weights that
            # cannot load would kill every actor, the reason buried in Ray's worker logs: checked
            # here once (the model built on the CPU) when this machine sees the file too
            from ..modeling.checkpoint import check_trained_weights

            try:
                check_trained_weights(cfg)
            except Exception as exc:
                raise _load_error(cfg.MODEL.WEIGHTS, exc) from None
        try:
            done = run_ray(cfg, todo, args.output, formats, started, kwargs, args.workers,
                           args.cpus_per_worker, args.gpus_per_worker, args.ray_address,
                           args.rgb_bands, threads=args.torch_threads,
                           provenance=run_provenance(record))
        except (RayAddressError, RayResourceError) as exc:
            raise UsageError(str(exc)) from None
        except Exception as exc:  # the pool itself failed (e.g. no node can load the model)
            logger.error("the Ray run failed: %s", exc)
            done = [SceneRow(s.name, redact(s.path), "failed", run_started=started,
                             error=f"the Ray run failed before this scene finished: "
                                   f"{type(exc).__name__}: {str(exc)[:500]}") for s in todo]
    rows.update({r.scene: r for r in done})
    ordered = [rows[s.name] for s in scenes]
    manifest = append_manifest(args.output, ordered, csv=args.manifest_csv)
    failed = [r for r in ordered if r.status == "failed"]
    counts = {s: sum(r.status == s for r in ordered) for s in ("ok", "skipped", "failed")}
    logger.info("%d ok, %d skipped, %d failed; %d buildings; manifest %s", counts["ok"],
                counts["skipped"], counts["failed"], sum(r.buildings for r in ordered), manifest)
    for r in ordered:  # in every engine's rows (a Ray worker's log lines stay on its node)
        if r.status == "ok" and r.warnings:
            print(f"warning: {r.warnings}", file=sys.stderr)
    for r in failed:
        print(f"failed: {r.error}", file=sys.stderr)
    return 1 if failed else 0
