#!/usr/bin/env python
"""Exported models measured against eager PyTorch: accuracy, speed, efficiency, time per stage.

1. **Accuracy** (``--runs``, the trained bench_accuracy.py models, both settings): each run is
   exported (tools/export_model.py) and its benchmark test tiles are predicted by
   tools/predict.py on every backend (torch = eager Detectron2, onnxruntime, openvino,
   torchscript) and scored with the SpaceNet metric: mean city F1 per backend and its difference
   from eager, with the buildings found.
2. **Speed per tile** (``--speed-tiles`` test tiles held in memory, ``--rounds`` rounds whose
   backend order alternates): seconds per 650 x 650 px tile from pixels to pasted masks
   (Detectron2 pastes inside the eager model; the exported backends paste in numpy), median over
   tiles and rounds, for the MNC model at the config's 416 px input and at native 650 px, and
   Mask R-CNN (the same benchmark schedule) on the same backends beside it; plus the R-50
   SpaceNet 2 MNC config from random initialisation (no trained R-50 exists on this machine:
   it detects nothing, so its heads' and pasting's share is smaller than in real use).
   ``--parts detections``: the
   detections each model keeps per timed tile (the heads' and pasting's work grows with them,
   so MNC / Mask R-CNN is only fair between models that keep similar numbers).
3. **Efficiency**: FLOPs per tile by part of each model (fvcore's count on the exported graph;
   it counts a multiply-add as one, reported here as 2 FLOPs; grid sampling, NMS and other
   uncounted operators are listed), this CPU's peak (float32 matmuls of three sizes, PyTorch
   and onnxruntime, the same threads, the best) and each backend's achieved FLOP/s as a
   fraction of it.
4. **A large scene** (``--scene-size`` px, a mosaic of the test tiles, deflate-compressed tiled
   GeoTIFF): tools/predict.py's per-scene path (process_scene) on eager, on the fastest
   float exported backend and on its int8 graph (as in 5.), each pipelined (reading and
   polygonising beside the model) and not: seconds in
   each stage (read, model, polygons, merge, writing and the rest), what the model loop waited
   for, and km2 per core-hour at the scene's 0.3 m pixels.

5. **INT8** (``--parts int8_accuracy int8_speed``; ``--add-to`` merges them into an
   earlier report): each run
   exported again with ``--formats onnx,onnx-int8`` (32 calibration tiles from its own training
   data, never the benchmark's) and its test tiles predicted on eager, onnxruntime and
   onnxruntime-int8 (accuracy as in 1.), then seconds per tile of the three side by side (as in
   2.; MNC and Mask R-CNN at 416 and 650 px, and the random-init R-50 MNC config).
   ``--parts int8_recipes``: the int8 recipes of :data:`RECIPES` compared on training tiles.
6. **MNC / Mask R-CNN, paired** (``--parts paired_ratio``): the two models' times on the same
   tile back to back, per backend (eager, onnxruntime, OpenVINO, both runtimes' INT8) and
   input, as a ratio per tile (median and quartiles), steadier than the ratio of two medians
   timed apart; MNC as configured and with the cascade NMS shortcut (``CASCADE_NMS``).

Prints one JSON object on stdout (logs go to stderr).

    python -m bench.bench_export [--quick]
"""

from __future__ import annotations

import argparse
import glob
import itertools
import json
import logging
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from bench.layout import data_dir, data_name

REPO = Path(__file__).resolve().parents[1]
RUNS = REPO / ".cache" / "bench" / "accuracy" / "runs"
TEST = {s: data_dir(REPO / ".cache/bench/accuracy", "test", 1, 30, s) / "spacenet"
        for s in ("default", "hard")}
MNC = {"default": "mnc5_60img_600it", "hard": "mnc5_60img_600it_hard"}
MRCNN = "mask_rcnn_60img_600it"
SPEED_SEED = 0  # the model seed of the speed, FLOP, INT8-speed and scene parts (--speed-seed)


def _speed_runs() -> tuple[Path, Path]:
    """The `default` MNC and Mask R-CNN runs of seed SPEED_SEED (the speed-side parts' models)."""
    return RUNS / MNC["default"] / f"seed{SPEED_SEED}", RUNS / MRCNN / f"seed{SPEED_SEED}"


EXPORTED = ("onnxruntime", "openvino", "torchscript")
TILE = 650
# The models' inputs timed: the config's own (416 px) and the tiles' native 650 px.
NATIVE = ("INPUT.MIN_SIZE_TEST", "650", "INPUT.MAX_SIZE_TEST", "650")
INPUTS = (("416", ()), ("650", NATIVE))
logger = logging.getLogger("bench_export")


def _tiles(root: Path, bands: int = 3) -> list[str]:
    """The benchmark's test tiles of the product a model of ``bands`` bands reads (as
    bench_accuracy.py: 8 bands MUL-PanSharpen, else RGB-PanSharpen)."""
    product = "MUL-PanSharpen" if bands == 8 else "RGB-PanSharpen"
    return sorted(glob.glob(str(root / "*" / product / "*.tif")))


def _truth(root: Path) -> list[str]:
    return sorted(glob.glob(str(root / "*" / "summaryData" / "*_Building_Solutions.csv")))


def _cfg(run: Path, *opts: str):
    from mnc_d2.engine.setup import setup_cfg

    return setup_cfg(str(run / "config.yaml"), ["MODEL.WEIGHTS", str(run / "model_final.pth"),
                                                *opts], for_training=False)


def _exported(run: Path, out: Path, warp_layout: str = "stacked", formats=()) -> bool:
    """``out`` holds an export of ``run``'s current weights by the current export code, with
    the MNC graph's ``warp_layout`` and (at least) the graph files of ``formats`` (a retrained
    run, another seed's, or a graph written before the code changed is exported again instead
    of timing the stale graph)."""
    from mnc_d2.export.exporter import graph_code_sha256
    from mnc_d2.inference.scenes import sha256_of

    meta = out / "export.json"
    if not meta.is_file():
        return False
    meta = json.loads(meta.read_text())
    source = meta.get("source", {})
    return (source.get("weights_sha256") == sha256_of(run / "model_final.pth")
            and source.get("graph_code_sha256") == graph_code_sha256()
            and meta.get("warp_layout") in (None, warp_layout)  # None: a Mask R-CNN
            and set(formats) <= set(meta.get("files", {})))


def _export(run: Path, out: Path, *opts: str) -> Path:
    from mnc_d2.export.exporter import export_model

    if not _exported(run, out):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_model(_cfg(run, *opts), out, ("onnx", "torchscript"), TILE)
    return out


# --- 1. accuracy ----------------------------------------------------------------------------

def _predict_and_score(run: Path, export: Path, backend: str, test_root: Path, out: Path,
                       threads: int) -> dict:
    import shutil

    import pandas as pd

    from mnc_d2.evaluation.spacenet_metric import read_proposal_csv, read_truth_csv, score
    from mnc_d2.inference.run import main as predict_main
    from mnc_d2.inference.sources import scene_image_id

    tiles = _tiles(test_root)
    source = (["--config-file", str(run / "config.yaml")] if backend == "torch"
              else ["--backend", backend, "--model", str(export)])
    extra = ["MODEL.WEIGHTS", str(run / "model_final.pth")] if backend == "torch" else []
    shutil.rmtree(out, ignore_errors=True)
    began = time.perf_counter()
    code = predict_main(["--input", *tiles, "--output", str(out), "--formats", "csv",
                         "--torch-threads", str(threads), *source, *extra])
    wall = time.perf_counter() - began
    if code != 0:
        raise RuntimeError(f"predict.py --backend {backend} exited {code}")
    proposals = out / "proposals.csv"
    parts = sorted((out / "csv").glob("*.csv"))
    with open(proposals, "w") as handle:
        for k, part in enumerate(parts):
            lines = part.read_text().splitlines(keepends=True)
            handle.writelines(lines if k == 0 else lines[1:])
    # Scored as bench_accuracy.py scores (truth polygons read with their holes, whatever the
    # CSV's ring separator), so the numbers compare with section 1's.
    truth = pd.concat([read_truth_csv(t) for t in _truth(test_root)], ignore_index=True)
    props = read_proposal_csv(proposals)
    result = score(truth, props, images=[scene_image_id(t) for t in tiles])
    o = result.overall
    return {"mean_city_f1": round(result.mean_city_f1, 4), "tp": o.tp, "fp": o.fp, "fn": o.fn,
            "predict_wall_s": round(wall, 2), "tiles": len(tiles)}


def accuracy(settings: list[str], seeds: list[int], work: Path, threads: int) -> list[dict]:
    rows = []
    for setting in settings:
        for seed in seeds:
            run = RUNS / MNC[setting] / f"seed{seed}"
            if not (run / "model_final.pth").is_file():
                logger.warning("no trained model %s (run bench_accuracy.py first)", run)
                continue
            export = _export(run, work / f"{MNC[setting]}_seed{seed}" / "export")
            row = {"setting": setting, "seed": seed, "run": f"{MNC[setting]}/seed{seed}"}
            for backend in ("torch", *EXPORTED):
                row[backend] = _predict_and_score(run, export, backend, TEST[setting],
                                                  work / "pred" / backend, threads)
                logger.info("%s seed %d %s: %s", setting, seed, backend, row[backend])
            for backend in EXPORTED:
                row[backend]["f1_minus_eager"] = round(
                    row[backend]["mean_city_f1"] - row["torch"]["mean_city_f1"], 4)
            rows.append(row)
    return rows


# --- 5. int8 ----------------------------------------------------------------------------------

# bench_accuracy.py's training data folders (set from --tag in main)
TRAIN = {s: data_name("train", 0, 60, s) for s in ("default", "hard")}
INT8 = ("torch", "onnxruntime", "onnxruntime-int8")
CASCADE_MIN_SCORE = "0.05"  # MODEL.MNC.TEST_CASCADE_MIN_SCORE of the shortcut rows
# MODEL.MNC.TEST_CASCADE_NMS of paired_ratio's shortcut rows: the value bench/
# select_cascade_shortcut.py chose on the models' training tiles (cascade_shortcut_nms.json)
CASCADE_NMS = "0.8"
CALIBRATION_IMAGES = 32  # training tiles of each int8 calibration (--calibration-images)
PAIR_GAP_S = 0.1  # idle seconds before each timed run of paired_ratio


def _export_int8(run: Path, out: Path, train_root: Path, *opts: str,
                 calibration_images: int | None = None, warp_layout: str = "stacked",
                 formats: tuple[str, ...] = ("onnx", "onnx-int8")) -> Path:
    """``run`` exported with its int8 graph, calibrated on ``calibration_images`` (default
    ``--calibration-images``) of its own training tiles under ``train_root``; kept when ``out``
    already holds an export of the run's current weights by the current code.
    ``warp_layout``: the MNC graph's (mnc_d2.export.exporter.build_graph); ``formats``: the
    graph files (e.g. OpenVINO's own too, onnx-openvino and onnx-int8-openvino)."""
    from mnc_d2.export.exporter import export_model

    if not _exported(run, out, warp_layout, formats):
        os.environ["DETECTRON2_DATASETS"] = str(train_root)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_model(_cfg(run, *opts), out, formats, TILE,
                         calibration_images=calibration_images or CALIBRATION_IMAGES,
                         warp_layout=warp_layout)
    return out


def _speed_int8_export(accuracy_work: Path):
    """``export(run, out, *opts)`` of the speed-side int8 parts (int8 speed, paired ratio,
    stage time, scene): :func:`_export_int8` calibrated on the `default` setting's training
    tiles, the speed models' own."""
    return lambda run, out, *opts: _export_int8(run, out, accuracy_work / TRAIN["default"],
                                                *opts)


def _int8_models(settings: list[str], seeds: list[int], work: Path, accuracy_work: Path):
    """(setting, seed, run, export folder) of every trained MNC model, exported with its int8
    graph."""
    for setting in settings:
        for seed in seeds:
            run = RUNS / MNC[setting] / f"seed{seed}"
            if (run / "model_final.pth").is_file():
                yield setting, seed, run, _export_int8(
                    run, work / "int8" / f"{MNC[setting]}_seed{seed}",
                    accuracy_work / TRAIN[setting])


def int8_accuracy(settings: list[str], seeds: list[int], work: Path,
                  accuracy_work: Path, threads: int) -> list[dict]:
    """Accuracy of onnxruntime-int8 beside eager and float onnxruntime (every trained model)."""
    rows = []
    for setting, seed, run, export in _int8_models(settings, seeds, work, accuracy_work):
        row = {"setting": setting, "seed": seed, "run": f"{MNC[setting]}/seed{seed}",
               "export_check": json.loads((export / "export.json").read_text())["check"]}
        for backend in INT8:
            row[backend] = _predict_and_score(run, export, backend, TEST[setting],
                                              work / "pred" / backend, threads)
            row[backend]["f1_minus_eager"] = round(
                row[backend]["mean_city_f1"] - row["torch"]["mean_city_f1"], 4)
            logger.info("int8 %s seed %d %s: %s", setting, seed, backend, row[backend])
        rows.append(row)
    return rows


# The int8 recipes compared by int8_recipes (name -> quantize_onnx's keywords); the first is
# the export's own.
RECIPES = {"output layers float, percentile ranges (the export's)": {},
           "output layers float, min-max ranges": {"calibration": "minmax"},
           "every layer, percentile ranges": {"keep_outputs_float": False},
           "every layer, min-max ranges (0.2.0's first recipe)": {
               "keep_outputs_float": False, "calibration": "minmax"},
           "convolutions only, min-max ranges": {"keep_outputs_float": False, "ops": ("Conv",),
                                                 "calibration": "minmax"}}


def _follow(reference: list, outputs: list) -> dict:
    """How closely one graph's detections follow another's on the same tiles: each reference
    detection (by decreasing score) matched to an unmatched one of ``outputs`` with box IoU >=
    0.5; ``changed`` = unmatched on either side."""
    import torch
    from torchvision.ops import box_iou

    changed, diffs, ious, count = 0, [], [], 0
    for (ref_boxes, ref_scores, *_), (boxes, scores, *_) in zip(reference, outputs):
        ref_boxes, boxes = ref_boxes.reshape(-1, 4), boxes.reshape(-1, 4)
        count += len(ref_boxes)
        iou = box_iou(torch.from_numpy(ref_boxes), torch.from_numpy(boxes)).numpy()
        matched = 0
        for i in np.argsort(-ref_scores, kind="stable"):
            if not iou.shape[1]:
                break
            j = int(np.argmax(iou[i]))
            if iou[i, j] >= 0.5:
                matched += 1
                diffs.append(abs(float(ref_scores[i]) - float(scores[j])))
                ious.append(float(iou[i, j]))
                iou[:, j] = -1.0  # each output detection matches once
        changed += len(ref_boxes) + len(boxes) - 2 * matched
    return {"float_detections": count, "changed": changed,
            "mean_abs_score_diff": round(float(np.mean(diffs)), 4) if diffs else None,
            "mean_box_iou": round(float(np.mean(ious)), 4) if ious else None}


def int8_recipes(settings: list[str], seeds: list[int], work: Path, accuracy_work: Path,
                 threads: int) -> dict:
    """Which int8 recipe follows the float graph best, judged on training tiles only: each
    model's float ONNX graph quantised by each of :data:`RECIPES` (the export's calibration
    tiles, as its export.json records them), then both run on the model's other training tiles
    (never the calibration's, never the test data); detections changed, score and box moves
    (:func:`_follow`) per model and summed."""
    import onnxruntime as ort

    from mnc_d2.data.bands import input_bands
    from mnc_d2.export.quantize import calibration_tiles, quantize_onnx

    def session(path: Path):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return lambda x: sess.run(None, {"image": x})

    from detectron2.data import DatasetCatalog

    rows = []
    for setting, seed, run, export in _int8_models(settings, seeds, work, accuracy_work):
        cfg = _cfg(run)
        os.environ["DETECTRON2_DATASETS"] = str(accuracy_work / TRAIN[setting])
        calibration = json.loads((export / "export.json").read_text())["int8"][
            "calibration_files"]
        held = [d["file_name"] for name in cfg.DATASETS.TRAIN
                for d in DatasetCatalog.get(name) if d["file_name"] not in calibration]
        bands, fill = input_bands(cfg), list(cfg.MODEL.PIXEL_MEAN)
        calib_tiles = calibration_tiles(calibration, bands, fill, TILE)
        tiles = calibration_tiles(held, bands, fill, TILE)
        float_graph = session(export / "model.onnx")
        reference = [float_graph(t) for t in tiles]
        row = {"setting": setting, "seed": seed, "run": f"{MNC[setting]}/seed{seed}",
               "calibration_tiles": len(calibration), "tiles": len(tiles)}
        with tempfile.TemporaryDirectory(dir=work) as tmp:
            for k, (name, options) in enumerate(RECIPES.items()):
                path = Path(tmp) / f"recipe{k}.onnx"
                quantize_onnx(export / "model.onnx", path, calib_tiles, **options)
                graph = session(path)
                row[name] = _follow(reference, [graph(t) for t in tiles])
                logger.info("int8 recipe %s seed %d %s: %s", setting, seed, name, row[name])
        rows.append(row)
    total = {}
    for name in RECIPES if rows else ():
        ious = [r[name]["mean_box_iou"] for r in rows if r[name]["mean_box_iou"] is not None]
        total[name] = {"changed": sum(r[name]["changed"] for r in rows),
                       "float_detections": sum(r[name]["float_detections"] for r in rows),
                       "mean_box_iou": round(statistics.mean(ious), 4) if ious else None}
    return {"models": rows, "total": total}


def paired_ratio(work: Path, accuracy_work: Path, tiles, rounds: int, threads: int) -> dict:
    """MNC / Mask R-CNN per tile, paired: each tile through both models back to back on the
    same backend (their order alternating), the ratio of the two times per tile; median and
    quartiles over tiles x rounds. Drift of the machine between the two models' timings,
    which moves the ratio of two separately timed medians, mostly cancels in a pair. Each run
    starts PAIR_GAP_S after the previous one ended: without the gap, onnxruntime's threads,
    still spinning after one model's run, slowed the other's (quartiles 0.78-1.92 at 416 px
    on 2 cores)."""
    backends = ("torch", "onnxruntime", "openvino", "onnxruntime-int8", "openvino-int8")
    # MNC as the config has it, and with the cascade NMS shortcut (MNC only; Mask R-CNN has no
    # stages 4-5)
    shortcuts = (("", (), ""), (f", cascade NMS {CASCADE_NMS}",
                                ("MODEL.MNC.TEST_CASCADE_NMS", CASCADE_NMS), "_cascade_nms"))

    export = _speed_int8_export(accuracy_work)

    out = {}
    mnc_run, mrcnn_run = _speed_runs()
    if not ((mnc_run / "model_final.pth").is_file()
            and (mrcnn_run / "model_final.pth").is_file()):
        return out
    for label, opts in INPUTS:
        mrcnn = _runners(mrcnn_run, work / "int8" / f"speed_mask_rcnn_{label}", opts, backends,
                         threads, export)  # loaded once, paired with each MNC below
        for shortcut, extra, tag in shortcuts:
            mnc = _runners(mnc_run, work / "int8" / f"speed_mnc5_{label}{tag}", (*opts, *extra),
                           backends, threads, export)
            out.update(_paired_rows(mnc, mrcnn, backends, tiles, rounds,
                                    f"{label} px{shortcut}"))
    return out


def _paired_rows(mnc: dict, mrcnn: dict, backends, tiles, rounds: int, label: str,
                 names: tuple[str, str] = ("mnc", "mask_rcnn")) -> dict:
    """:func:`paired_ratio`'s rows of one input (and MNC shortcut): ``mnc`` and ``mrcnn`` map
    each backend to fn(list of tiles) (:func:`_runners`); rows keyed "<label> / <backend>": the
    ratio's median and quartiles, and each model's median seconds per tile over the same runs
    (``<name>_s_median`` for the two ``names``: any two models timed so)."""
    out = {}
    for backend in backends:
        pair = (mnc[backend], mrcnn[backend])
        for fn in pair:
            fn(tiles[:1])  # warm-up
        ratios, times = [], ([], [])
        for r in range(rounds):
            for k, tile in enumerate(tiles):
                seconds = [0.0, 0.0]
                for i in ((0, 1) if (r + k) % 2 == 0 else (1, 0)):
                    # the other model's runtime threads spin-wait after a run (onnxruntime's
                    # do, for milliseconds) and would take these 2 cores from this one
                    time.sleep(PAIR_GAP_S)
                    began = time.perf_counter()
                    pair[i]([tile])
                    seconds[i] = time.perf_counter() - began
                ratios.append(seconds[0] / seconds[1])
                times[0].append(seconds[0])
                times[1].append(seconds[1])
        # inclusive: quartiles within the measured ratios (the default, exclusive method
        # extrapolates beyond them for few samples, below 0 for two far apart)
        q1, _, q3 = (statistics.quantiles(ratios, n=4, method="inclusive")
                     if len(ratios) > 1 else [ratios[0]] * 3)
        key = f"{label} / {backend}"
        out[key] = {"median": round(statistics.median(ratios), 3), "q1": round(q1, 3),
                    "q3": round(q3, 3), "n": len(ratios), "quartiles": "inclusive",
                    f"{names[0]}_s_median": round(statistics.median(times[0]), 4),
                    f"{names[1]}_s_median": round(statistics.median(times[1]), 4)}
        logger.info("paired %s / %s %s: %s", *names, key, out[key])
    return out


def int8_speed(work: Path, accuracy_work: Path, tiles, rounds: int, threads: int) -> dict:
    """Seconds per tile of eager, onnxruntime and onnxruntime-int8, side by side."""
    fewer = ("MODEL.RPN.POST_NMS_TOPK_TEST", "100")  # the test proposals' lever on the heads
    inputs = (("416 px", "416", ()), ("416 px, 100 proposals", "416_100", fewer),
              ("650 px", "650", NATIVE))
    # MNC only: stages 4-5 for the proposals scored >= 0.05 at stage 3 (no effect on Mask R-CNN)
    shortcut = ("MODEL.MNC.TEST_CASCADE_MIN_SCORE", CASCADE_MIN_SCORE)
    mnc_only = (("416 px, cascade shortcut", "416_cascade", shortcut),
                ("650 px, cascade shortcut", "650_cascade", NATIVE + shortcut))
    sources = list(zip(("mnc5", "mask_rcnn"), _speed_runs()))
    r50 = work / "r50"  # speed_r50's random-init model and config
    jobs = [(f"{name} {label}", run, f"speed_{name}_{tag}", opts)
            for (name, run), (label, tag, opts) in itertools.product(sources, inputs)]
    jobs += [(f"mnc5 {label}", sources[0][1], f"speed_mnc5_{tag}", opts)
             for label, tag, opts in mnc_only]
    jobs.append(("mnc5 R-50 650 px (random init)", r50, "speed_r50", ()))

    export = _speed_int8_export(accuracy_work)

    models = {}
    for label, run, folder, opts in jobs:
        if (run / "model_final.pth").is_file():
            for backend, fn in _runners(run, work / "int8" / folder, opts, INT8, threads,
                                        export).items():
                models[f"{label} / {backend}"] = fn
    times = _timed_rounds(models, rounds, lambda name: tiles[: max(1, len(tiles) // 3)]
                          if "R-50" in name else tiles, "int8 speed")
    speed_rows = {name: {"s_per_tile_median": round(statistics.median(t), 4), "n": len(t)}
                  for name, t in times.items()}
    for name, entry in speed_rows.items():
        model, backend = name.rsplit(" / ", 1)
        entry["speedup_vs_eager"] = round(
            speed_rows[f"{model} / torch"]["s_per_tile_median"] / entry["s_per_tile_median"], 3)
        other = model.replace("mnc5", "mask_rcnn").replace(", cascade shortcut", "")
        if model.startswith("mnc5") and f"{other} / {backend}" in speed_rows:
            entry["ratio_vs_mask_rcnn_same_backend"] = round(
                entry["s_per_tile_median"] / speed_rows[f"{other} / {backend}"]
                ["s_per_tile_median"], 3)
    return speed_rows


# --- 2. speed per tile ----------------------------------------------------------------------

def _read_tiles(paths: list[str], bands: list[int], fill) -> list[np.ndarray]:
    from mnc_d2.data.bands import read_bands

    return [read_bands(p, bands, fill) for p in paths]


def _runners(run: Path, export_dir: Path, opts: tuple, backends, threads: int,
             export=None) -> dict:
    """backend -> fn(list of tiles): eager (``torch``) and each exported backend of ``run``,
    exported once into ``export_dir`` by ``export`` (default: :func:`_export`)."""
    import torch

    from mnc_d2.export.bundle import read_bundle
    from mnc_d2.export.runtime import ExportedModel
    from mnc_d2.inference.eager import EagerModel

    torch.set_num_threads(threads)
    out = {}
    if "torch" in backends:
        out["torch"] = EagerModel(_cfg(run, *opts))
    exported = [b for b in backends if b != "torch"]
    if exported:
        bundle = read_bundle((export or _export)(run, export_dir, *opts))
        for backend in exported:
            model = ExportedModel(bundle, backend, threads)
            out[backend] = lambda images, m=model: [m(i) for i in images]
    return out


def _timed_rounds(models: dict, rounds: int, tiles_of, label: str) -> dict:
    """Seconds per tile of each model (name -> fn(list of tiles)): ``rounds`` rounds, the
    models' order reversed every other round, one warm-up call per model and round;
    ``tiles_of(name)``: the tiles a model is timed on. Returns name -> list of seconds."""
    times = {name: [] for name in models}
    names = list(models)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            fn, tiles = models[name], tiles_of(name)
            fn(tiles[:1])  # warm-up
            for tile in tiles:
                began = time.perf_counter()
                fn([tile])
                times[name].append(time.perf_counter() - began)
        logger.info("%s round %d done", label, r + 1)
    return times


def speed(work: Path, tiles: list[np.ndarray], rounds: int, threads: int) -> dict:
    """Seconds per tile, median over tiles and rounds, per model and backend."""
    run, mrcnn = _speed_runs()
    models = {}
    for label, opts in INPUTS:
        for backend, fn in _runners(run, work / f"export_mnc5_{label}", opts,
                                    ("torch", *EXPORTED), threads).items():
            models[f"mnc5 {label} px / {backend}"] = fn
        if (mrcnn / "model_final.pth").is_file():
            for backend, fn in _runners(mrcnn, work / f"export_mask_rcnn_{label}", opts,
                                        ("torch", *EXPORTED), threads).items():
                models[f"mask_rcnn {label} px / {backend}"] = fn
    times = _timed_rounds(models, rounds, lambda name: tiles, "speed")
    out = {name: {"s_per_tile_median": round(statistics.median(t), 4), "n": len(t)}
           for name, t in times.items()}
    for label in ("416", "650"):
        eager = out[f"mnc5 {label} px / torch"]["s_per_tile_median"]
        for backend in EXPORTED:
            entry = out[f"mnc5 {label} px / {backend}"]
            entry["speedup_vs_eager"] = round(eager / entry["s_per_tile_median"], 3)
        for backend in ("torch", *EXPORTED):
            key = f"mask_rcnn {label} px / {backend}"
            if key not in out:
                continue
            entry = out[f"mnc5 {label} px / {backend}"]
            entry["ratio_vs_mask_rcnn_same_backend"] = round(
                entry["s_per_tile_median"] / out[key]["s_per_tile_median"], 3)
            if backend != "torch":
                out[key]["speedup_vs_eager"] = round(
                    out[f"mask_rcnn {label} px / torch"]["s_per_tile_median"]
                    / out[key]["s_per_tile_median"], 3)
    return out


def detections(work: Path, tiles: list[np.ndarray], threads: int) -> dict:
    """Median detections per timed tile of the speed part's models (onnxruntime, both inputs):
    all that the graph keeps (Detectron2's test score threshold) and those at or above the
    config's polygon threshold. The heads' and pasting's work grows with the first, so a
    Mask R-CNN that keeps more detections than MNC makes MNC / Mask R-CNN look better."""
    out = {}
    for name, run in zip(("mnc5", "mask_rcnn"), _speed_runs()):
        if not (run / "model_final.pth").is_file():
            continue
        thresh = _cfg(run).TEST.SPACENET.SCORE_THRESH
        for label, opts in INPUTS:
            fn = _runners(run, work / f"export_{name}_{label}", opts, ("onnxruntime",),
                          threads)["onnxruntime"]
            out[f"{name} {label} px"] = detection_counts(fn(tiles), thresh)
    return out


def detection_counts(found: list, thresh: float) -> dict:
    """Median detections per tile of ``found`` (one Detections per tile): all kept, and those
    at or above the polygon threshold ``thresh``."""
    return {"kept": float(np.median([len(d.scores) for d in found])),
            "at_threshold": float(np.median([int((d.scores >= thresh).sum()) for d in found])),
            "threshold": thresh, "tiles": len(found)}


def speed_r50(work: Path, tiles: list[np.ndarray], rounds: int, threads: int) -> dict:
    """The R-50 SpaceNet 2 MNC config, random initialisation, eager vs exported."""
    import torch
    from detectron2.modeling import build_model

    from mnc_d2.engine.setup import setup_cfg

    folder = work / "r50"
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / "model_final.pth"
    base = _cfg(_speed_runs()[0])  # its bands and band statistics
    cfg = setup_cfg(str(REPO / "configs/SpaceNet2/mnc_R_50_FPN_3x_all.yaml"),
                    ["MODEL.WEIGHTS", "", "INPUT.BAND_STATS", "",
                     "INPUT.BANDS", str(list(base.INPUT.BANDS)),
                     "MODEL.PIXEL_MEAN", str(list(base.MODEL.PIXEL_MEAN)),
                     "MODEL.PIXEL_STD", str(list(base.MODEL.PIXEL_STD))], for_training=False)
    if not weights.is_file():
        torch.manual_seed(0)
        torch.save({"model": build_model(cfg).state_dict()}, weights)
    (folder / "config.yaml").write_text(cfg.dump())
    runners = _runners(folder, folder / "export", (), ("torch", *EXPORTED), threads)
    times = _timed_rounds(runners, rounds, lambda name: tiles, "r50 speed")
    eager = statistics.median(times["torch"])
    return {name: {"s_per_tile_median": round(statistics.median(t), 4), "n": len(t),
                   "speedup_vs_eager": round(eager / statistics.median(t), 3)}
            for name, t in times.items()}


# --- 3. efficiency --------------------------------------------------------------------------

def matmul_peak(threads: int, sizes: tuple[int, ...] = (1024, 2048, 3072),
                repeats: int = 10) -> dict:
    """GFLOP/s of float32 n x n matmuls in PyTorch and in onnxruntime (its own kernels), the
    same threads: for each runtime the best over ``sizes`` of the median of ``repeats`` runs
    (``by_size`` keeps every size's). The machine's measured peak is the larger runtime's.

    One size is not enough: on some CPUs (a 2-core AMD EPYC under KVM) a single 2048 x 2048
    matmul runs below what the models' convolutions reach, and the size that runs fastest
    differs between CPUs and runtimes. This is still a measurement, not the vendor's figure:
    a model can exceed it (e.g. by fused kernels), which the reports show as over 100%."""
    import torch

    torch.set_num_threads(threads)
    out, by_size = {}, {}

    def timed(fn, size: int) -> float:
        fn()
        times = []
        for _ in range(repeats):
            began = time.perf_counter()
            fn()
            times.append(time.perf_counter() - began)
        return round(2 * size ** 3 / statistics.median(times) / 1e9, 1)

    def sweep(name: str, make_fn) -> None:
        by_size[name] = {str(n): timed(make_fn(n), n) for n in sizes}
        out[name] = max(by_size[name].values())

    def torch_mm(n: int):
        a, b = torch.randn(n, n), torch.randn(n, n)
        return lambda: torch.mm(a, b)

    sweep("torch", torch_mm)
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return {**out, "by_size": by_size}

    def ort_mm(n: int):
        spec = [helper.make_tensor_value_info(v, TensorProto.FLOAT, [n, n]) for v in "ABC"]
        graph = helper.make_graph([helper.make_node("MatMul", ["A", "B"], ["C"])], "matmul",
                                  spec[:2], spec[2:])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(model.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        feed = {"A": torch.randn(n, n).numpy(), "B": torch.randn(n, n).numpy()}
        return lambda: session.run(None, feed)

    sweep("onnxruntime", ort_mm)
    return {**out, "by_size": by_size}


def graph_flops(graph, x) -> dict:
    """FLOPs of one call of an export graph on ``x`` (1, C, H, W), by part: fvcore's count (a
    multiply-add counted once) times 2, and the operators it does not count."""
    import torch
    from fvcore.nn import FlopCountAnalysis

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        count = FlopCountAnalysis(graph, (x,))
        count.unsupported_ops_warnings(False)
        count.uncalled_modules_warnings(False)
        by_module = count.by_module()
        total = 2 * count.total()
        parts = {"backbone": 2 * by_module.get("model.backbone", 0),
                 "rpn": 2 * by_module.get("model.proposal_generator", 0),
                 "roi_heads": 2 * by_module.get("model.roi_heads", 0)}
        parts["other (resize, normalise, voting)"] = total - sum(parts.values())
        return {"gflops": round(total / 1e9, 3),
                "gflops_by_part": {k: round(v / 1e9, 3) for k, v in parts.items()},
                "uncounted_ops": sorted(count.unsupported_ops())}


def flops(work: Path, tile: np.ndarray) -> dict:
    """FLOPs of one tile through the exported graph (416 and 650 px input), by part."""
    import torch

    from mnc_d2.export.exporter import build_graph

    x = torch.from_numpy(tile.transpose(2, 0, 1).copy())[None]
    models = list(zip(("mnc5", "mask_rcnn"), _speed_runs()))
    return {f"{name} {px}": graph_flops(build_graph(_cfg(run, *opts), TILE), x)
            for (name, run), (px, opts) in itertools.product(
                [m for m in models if (m[1] / "model_final.pth").is_file()], INPUTS)}


# --- 3b. time per part of the graph, from the runtimes' own profilers -------------------------

# Parts of the exported graphs (mnc_d2.export.graph.PARTS) grouped as the FLOP table's parts.
PART_GROUPS = {"preprocess": "other", "backbone": "backbone", "rpn": "rpn",
               "stages_2_3": "roi_heads", "stages_4_5": "roi_heads", "box_head": "roi_heads",
               "mask_head": "roi_heads", "selection": "selection", "output": "other"}


def _scope(name: str) -> str | None:
    """The graph part an operator's name begins with ('/rpn/TopK' -> 'rpn'), else None."""
    for prefix in ("fused ", ""):  # onnxruntime names fused nodes 'fused <first node>'
        if name.startswith(prefix + "/"):
            first = name[len(prefix) + 1:].split("/", 1)[0]
            if first in PART_GROUPS:
                return first
    return None


def attribute_parts(producers: dict[str, list[str]]) -> dict[str, str]:
    """Each node's graph part: its own name's part, else (operators the runtime inserted or
    renamed: layout reorders, an exporter's unscoped helpers) the part of the nearest producer
    that has one, breadth first; 'unattributed' when none has. producers: node name -> names
    of the nodes whose outputs it reads."""
    import collections

    out = {}
    for node in producers:
        part, seen, queue = _scope(node), {node}, collections.deque(producers[node])
        while part is None and queue:
            other = queue.popleft()
            if other in seen:
                continue
            seen.add(other)
            part = out.get(other) or _scope(other)
            queue.extend(producers.get(other, ()))
        out[node] = part or "unattributed"
    return out


def _onnx_producers(path: Path) -> dict[str, list[str]]:
    """node -> producer nodes of an ONNX graph; a subgraph's nodes (If branches) read their
    parent node, so they take its part."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    made_by = {out: n.name for n in graph.node for out in n.output}
    producers = {}
    for n in graph.node:
        producers[n.name] = [made_by[i] for i in n.input if i in made_by]
        for attr in n.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                for inner in sub.node:
                    producers.setdefault(inner.name, [n.name])
    return producers


def _profile_ort(path: Path, inputs: list[np.ndarray], threads: int, tmp: Path,
                 backend: str = "onnxruntime"):
    """Per-node milliseconds per tile on onnxruntime (its profiler), node -> (op, ms), and the
    optimised graph's producers. ``inputs[0]`` is a warm-up: its run is profiled too (the
    profiler covers the whole session) and its operators' events, those inside the first
    ``model_run`` event, are dropped, so the mean is over ``inputs[1:]``. A control-flow node
    (If) is left out: onnxruntime times its subgraph's operators as well as the node around
    them. The session is ``backend``'s (mnc_d2.export.runtime.ort_session: its optimisers
    left off as tools/predict.py leaves them)."""
    import onnxruntime as ort

    from mnc_d2.export.runtime import ort_session

    if len(inputs) < 2:
        raise RuntimeError(f"{len(inputs)} input(s) to profile: a warm-up and at least one "
                           "tile expected")
    opts = ort.SessionOptions()  # threads: set by ort_session
    opts.enable_profiling, opts.profile_file_prefix = True, str(tmp / "ort")
    opts.optimized_model_filepath = str(tmp / "optimized.onnx")
    session = ort_session(path, backend, threads, opts)
    name = session.get_inputs()[0].name
    for x in inputs:
        session.run(None, {name: x})
    events = json.loads(Path(session.end_profiling()).read_text())
    runs = sorted((ev["ts"], ev["ts"] + ev["dur"]) for ev in events if ev["name"] == "model_run")
    if len(runs) != len(inputs):
        raise RuntimeError(f"onnxruntime's profile has {len(runs)} model runs for "
                           f"{len(inputs)} inputs")
    warm_up_end = runs[0][1]
    nodes = {}
    for ev in events:
        if ev.get("cat") == "Node" and ev["name"].endswith("_kernel_time") \
                and ev["ts"] > warm_up_end:
            node, op = ev["name"][: -len("_kernel_time")], ev["args"].get("op_name", "?")
            if op in ("If", "Loop", "Scan"):  # their subgraphs' operators are timed themselves
                continue
            op, ms = nodes.get(node, (op, 0.0))
            nodes[node] = (op, ms + ev["dur"] / 1e3 / (len(inputs) - 1))
    producers = _onnx_producers(tmp / "optimized.onnx")
    for node in nodes:
        producers.setdefault(node.removeprefix("fused "), [])
    return {n.removeprefix("fused "): v for n, v in nodes.items()}, producers


def _profile_ov(path: Path, inputs: list[np.ndarray], threads: int):
    """As :func:`_profile_ort` for OpenVINO (PERF_COUNT), on its compiled (runtime) graph."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {
        "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": threads, "PERF_COUNT": True})
    request = compiled.create_infer_request()
    nodes = {}
    for x in inputs:
        request.infer({0: x})
        for info in request.get_profiling_info():
            op, ms = nodes.get(info.node_name, (info.node_type, 0.0))
            nodes[info.node_name] = (op, ms + info.real_time.total_seconds() * 1e3 / len(inputs))
    producers = {op.get_friendly_name(): [i.get_source_output().get_node().get_friendly_name()
                                          for i in op.inputs()]
                 for op in compiled.get_runtime_model().get_ordered_ops()}
    for node in nodes:
        producers.setdefault(node, [])
    return nodes, producers


def stage_time(work: Path, accuracy_work: Path, tiles: list[np.ndarray], threads: int) -> dict:
    """Milliseconds per tile in each part of the exported graphs (MNC and Mask R-CNN, 416 and
    650 px; onnxruntime, onnxruntime-int8, OpenVINO, openvino-int8) as the runtimes' profilers
    time their operators, with each part's main operator types: the mean over ``tiles`` after a
    warm-up run of the first tile whose times are discarded (OpenVINO: a compile and run of its
    own; onnxruntime: the session's first run, its events dropped from the profile). The
    profilers' sums are a little above the unprofiled time per tile (their own overhead) and
    leave out time between operators."""
    from mnc_d2.export.bundle import read_bundle
    from mnc_d2.export.runtime import graph_input

    out = {}
    for (name, run), (label, opts) in itertools.product(zip(("mnc5", "mask_rcnn"),
                                                            _speed_runs()), INPUTS):
        if not (run / "model_final.pth").is_file():
            continue
        # the int8 speed part's exports (both graphs of one export, same folder names)
        bundle = read_bundle(_speed_int8_export(accuracy_work)(
            run, work / "int8" / f"speed_{name}_{label}", *opts))
        fill = np.asarray(bundle.pixel_mean, dtype=np.float32)
        inputs = [graph_input(t, bundle.tile_shape, fill) for t in tiles]
        for backend in ("onnxruntime", "onnxruntime-int8", "openvino", "openvino-int8"):
            with tempfile.TemporaryDirectory(dir=work) as tmp:
                path = bundle.graph_path(backend)
                if backend.startswith("openvino"):
                    _profile_ov(path, inputs[:1], threads)  # warm-up (a fresh compile)
                    nodes, producers = _profile_ov(path, inputs, threads)
                else:
                    nodes, producers = _profile_ort(path, inputs[:1] + inputs, threads,
                                                    Path(tmp), backend)
            parts = attribute_parts(producers)
            by_part, ops = {}, {}
            for node, (op, ms) in nodes.items():
                part = parts.get(node, "unattributed")
                by_part[part] = by_part.get(part, 0.0) + ms
                ops.setdefault(part, {})
                ops[part][op] = ops[part].get(op, 0.0) + ms
            key = f"{name} {label} px / {backend}"
            out[key] = {"ms_profiled": round(sum(by_part.values()), 2), "tiles": len(tiles),
                        "warm_up": "discarded",
                        "ms_by_part": {k: round(v, 2) for k, v in sorted(
                            by_part.items(), key=lambda kv: -kv[1])},
                        "top_ops_ms_by_part": {k: {o: round(t, 2) for o, t in sorted(
                            v.items(), key=lambda kv: -kv[1])[:5]} for k, v in ops.items()}}
            logger.info("stage time %s: %s", key, out[key]["ms_by_part"])
    return out


def _stage_fractions(report: dict) -> None:
    """Adds to each stage_time entry its parts grouped as the FLOP table's (backbone, rpn,
    roi_heads, selection, other): milliseconds, share of the profiled time and, where FLOPs are
    counted (report["flops"], same model and input) and the peak measured, GFLOP/s and the
    fraction of peak (float32 backends only: the peak is a float32 matmul's, which int8
    kernels are not bound by)."""
    flops, peak = report.get("flops") or {}, report.get("peak_gflops")
    for key, entry in report["stage_time"].items():
        model = key.split(" / ")[0].removesuffix(" px")
        counted = flops.get(model, {}).get("gflops_by_part", {})
        groups = {}
        for part, ms in entry["ms_by_part"].items():
            group = PART_GROUPS.get(part, part)
            groups[group] = groups.get(group, 0.0) + ms
        entry["by_group"] = {}
        for group, ms in sorted(groups.items(), key=lambda kv: -kv[1]):
            row = {"ms": round(ms, 2), "share": round(ms / entry["ms_profiled"], 4)}
            if group in counted and ms > 0:
                row["gflops_per_s"] = round(counted[group] / (ms / 1e3), 1)
            if "gflops_per_s" in row and peak and not key.endswith("-int8"):
                row["fraction_of_peak"] = round(row["gflops_per_s"] / peak, 4)
            entry["by_group"][group] = row


# --- 4. a large scene -----------------------------------------------------------------------

def write_mosaic(paths: list[str], size: int, dest: Path) -> Path:
    """A size x size px scene tiled from the test tiles (cycled), georeferenced at the first
    tile's origin and pixel size, deflate-compressed and internally tiled."""
    import rasterio
    from rasterio.windows import Window

    if dest.is_file():
        return dest
    with rasterio.open(paths[0]) as first:
        profile = first.profile
    profile.update(width=size, height=size, driver="GTiff", compress="deflate", tiled=True,
                   blockxsize=512, blockysize=512, BIGTIFF="IF_SAFER")
    part = dest.with_suffix(".part.tif")
    k = 0
    with rasterio.open(part, "w", **profile) as dst:
        for row in range(0, size, TILE):
            for col in range(0, size, TILE):
                with rasterio.open(paths[k % len(paths)]) as src:
                    h, w = min(TILE, size - row), min(TILE, size - col)
                    dst.write(src.read(window=Window(0, 0, w, h)), window=Window(col, row, w, h))
                k += 1
    os.replace(part, dest)
    return dest


def scene(work: Path, scene_path: Path, backends: list[tuple[str, bool]], threads: int,
          accuracy_work: Path) -> list[dict]:
    import rasterio

    from mnc_d2.inference.engines import process_scene
    from mnc_d2.inference.predictor import ScenePredictor
    from mnc_d2.inference.scenes import Scene, SceneInfo, now_iso

    run = _speed_runs()[0]
    export = _export(run, work / "export_mnc5_416")
    # the int8 graph as section 5 exports it (calibrated on the model's own training tiles)
    export_int8 = _speed_int8_export(accuracy_work)(run, work / "int8" / "speed_mnc5_416")
    with rasterio.open(scene_path) as src:
        area_km2 = src.width * src.height * abs(src.transform.a * src.transform.e) / 1e6
        if src.crs.is_geographic:  # the synthetic tiles are in degrees: 0.3 m pixels
            area_km2 = src.width * src.height * 0.09 / 1e6
    rows = []
    for backend, pipeline in backends:
        if backend == "torch":
            import torch

            torch.set_num_threads(threads)
            predictor = ScenePredictor(_cfg(run), TILE, 128, 2)
        else:
            predictor = ScenePredictor(
                None, TILE, 128, 1, backend=backend, threads=threads,
                model_dir=str(export_int8 if backend.endswith("-int8") else export))
        predictor.pipeline = pipeline
        out = work / "scene_out" / f"{backend}_{pipeline}"
        began = time.perf_counter()
        row = process_scene(predictor, Scene(str(scene_path), scene_path.stem, SceneInfo()),
                            out, ["parquet"], now_iso())
        wall = time.perf_counter() - began
        if row.status != "ok":
            raise RuntimeError(row.error)
        t = {k: round(v, 2) for k, v in predictor.timings.items()}
        inline = (t.get("waiting_for_read", 0) + t.get("waiting_for_polygons", 0) if pipeline
                  else t.get("read", 0) + t.get("polygons", 0))
        rest = wall - (t.get("model", 0) + inline + t.get("merge", 0))
        rows.append({"backend": backend, "pipelined": pipeline, "wall_s": round(wall, 2),
                     "stages_s": t, "writing_and_rest_s": round(rest, 2),
                     "buildings": row.buildings, "threads": threads,
                     "km2_per_core_hour": round(area_km2 / (wall / 3600) / threads, 2)})
        logger.info("scene %s pipelined=%s: %s", backend, pipeline, rows[-1])
    return rows


def main() -> None:
    global RUNS, MNC, MRCNN, TRAIN, SPEED_SEED, CALIBRATION_IMAGES
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=["default", "hard"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--speed-seed", type=int, default=0,
                        help="model seed of the `default` MNC and Mask R-CNN runs that the speed, "
                             "detections, FLOP, INT8-speed and scene parts use")
    parser.add_argument("--speed-tiles", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scene-size", type=int, default=9750)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--work", type=Path, default=REPO / ".cache" / "bench" / "export")
    parser.add_argument("--parts", nargs="+",
                        default=["accuracy", "speed", "detections", "r50", "flops",
                                 "int8_recipes", "int8_accuracy", "int8_speed", "paired_ratio",
                                 "stage_time", "scene"])
    parser.add_argument("--accuracy-work", type=Path,
                        default=REPO / ".cache" / "bench" / "accuracy",
                        help="bench_accuracy.py's --work (its runs/ and test tiles)")
    parser.add_argument("--tag", default="60img_600it",
                        help="bench_accuracy.py's run tag: runs/mnc5_TAG[_hard]/seedN")
    parser.add_argument("--test-images", type=int, default=30,
                        help="bench_accuracy.py's test tiles per city (its test_seed1_N folder)")
    parser.add_argument("--calibration-images", type=int, default=CALIBRATION_IMAGES,
                        help="training tiles each int8 graph is calibrated on (export_model.py's "
                             "--calibration-images)")
    parser.add_argument("--add-to", type=Path,
                        help="an earlier report: the parts run now replace its parts")
    parser.add_argument("--quick", action="store_true",
                        help="1 seed, default setting, 2 speed tiles, 1 round, 1,300 px scene")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.quick:
        args.settings, args.seeds, args.speed_tiles, args.rounds = ["default"], [0], 2, 1
        args.scene_size = 1300
    RUNS, SPEED_SEED = args.accuracy_work / "runs", args.speed_seed
    CALIBRATION_IMAGES = args.calibration_images
    images = int(args.tag.split("img")[0])  # bench_accuracy.py's training tiles per city
    TRAIN = {s: data_name("train", 0, images, s) for s in ("default", "hard")}
    MNC = {"default": f"mnc5_{args.tag}", "hard": f"mnc5_{args.tag}_hard"}
    MRCNN = f"mask_rcnn_{args.tag}"
    for setting in ("default", "hard"):
        TEST[setting] = data_dir(args.accuracy_work, "test", 1, args.test_images, setting) \
            / "spacenet"
    import mnc_d2
    from bench.bench_demo import cpu_model

    mnc_d2.setup()
    args.work.mkdir(parents=True, exist_ok=True)
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU",
              "cpu": cpu_model(), "threads": args.threads, "tile_px": TILE,
              "speed_seed": args.speed_seed}
    if args.add_to:
        report = {**json.loads(args.add_to.read_text()), **report}
    paths = _tiles(TEST["default"])
    cfg = _cfg(_speed_runs()[0])
    from mnc_d2.data.bands import input_bands

    tiles = _read_tiles(paths[: args.speed_tiles], input_bands(cfg), cfg.MODEL.PIXEL_MEAN)
    if "accuracy" in args.parts:
        report["accuracy"] = accuracy(args.settings, args.seeds, args.work, args.threads)
    if "speed" in args.parts:
        report["speed"] = speed(args.work, tiles, args.rounds, args.threads)
    if "detections" in args.parts:
        report["detections_per_tile"] = detections(args.work, tiles, args.threads)
    if "r50" in args.parts:
        report["speed_r50_random_init"] = speed_r50(args.work, tiles[: max(1, len(tiles) // 3)],
                                                    args.rounds, args.threads)
    if "flops" in args.parts:
        report["matmul_gflops"] = matmul_peak(args.threads)
        report["peak_gflops"] = max(v for k, v in report["matmul_gflops"].items()
                                    if k != "by_size")
        report["flops"] = flops(args.work, tiles[0])
        if "speed" in report:
            for (model, px), backend in itertools.product(
                    (("mnc5", "416"), ("mnc5", "650"), ("mask_rcnn", "416"),
                     ("mask_rcnn", "650")), ("torch", *EXPORTED)):
                entry = report["speed"].get(f"{model} {px} px / {backend}")
                label = f"{model} {px}"
                if entry is None or label not in report["flops"]:
                    continue
                achieved = report["flops"][label]["gflops"] / entry["s_per_tile_median"]
                entry["achieved_gflops"] = round(achieved, 2)
                entry["fraction_of_peak"] = round(achieved / report["peak_gflops"], 4)
    if "int8_recipes" in args.parts:
        report.setdefault("int8", {})["recipes"] = int8_recipes(
            args.settings, args.seeds, args.work, args.accuracy_work, args.threads)
    if "int8_accuracy" in args.parts:
        report.setdefault("int8", {})["accuracy"] = int8_accuracy(
            args.settings, args.seeds, args.work, args.accuracy_work, args.threads)
        report["int8"]["calibration"] = (f"{CALIBRATION_IMAGES} tiles of each model's own "
                                         "training data (generator seed 0), never the "
                                         "benchmark's")
    if "int8_speed" in args.parts:
        report.setdefault("int8", {})["speed"] = int8_speed(
            args.work, args.accuracy_work, tiles, args.rounds, args.threads)
    if "paired_ratio" in args.parts:
        report["paired_ratio"] = paired_ratio(args.work, args.accuracy_work, tiles, args.rounds,
                                              args.threads)
    if "stage_time" in args.parts:
        report["stage_time"] = stage_time(args.work, args.accuracy_work, tiles, args.threads)
        _stage_fractions(report)
    if "scene" in args.parts:
        with tempfile.TemporaryDirectory(dir=args.work) as tmp:
            mosaic = write_mosaic(paths, args.scene_size, Path(tmp) / "mosaic.tif")
            report["scene"] = {"px": args.scene_size, "runs": scene(
                args.work, mosaic, [(backend, pipelined)
                                    for backend in ("torch", "onnxruntime", "onnxruntime-int8")
                                    for pipelined in (True, False)],
                args.threads, args.accuracy_work)}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
