#!/usr/bin/env python
"""The R-50 recipe exported: MNC with its 256- and 128-channel mask heads against Mask R-CNN.

No R-50 model trains on these CPUs, so every model here has random weights (seed 0), and a
fixed number of instances kept per tile stands in for trained weights
(:func:`bench.bench_speed.detection_opts`: no score threshold, at most ``--detections`` after
NMS), so that Mask R-CNN runs its mask head, and both models paste masks, as often as trained
models would. What this measures is the cost of the graphs, never their accuracy.

For each of bench_speed.py's R-50 recipe variants (config + overrides; ``--variants``):

1. **A run folder** (``--work``/runs/<variant>): the config resolved on bench_speed.py's
   synthetic Vegas tiles (their band statistics, as a training run writes them), the random
   weights, ``config.yaml``.
2. **Its export** (tools/export_model.py's code: float ONNX and the int8 graph, the int8 graph
   calibrated on ``--calibration-images`` of those tiles: the values are noise, the kernels
   and their layout are a trained model's).
3. **FLOPs per part** of the export graph on one tile (bench_export's ``graph_flops``).
4. **MNC / Mask R-CNN, paired** on eager PyTorch, onnxruntime, OpenVINO and both runtimes' int8
   kernels (``--backends``: a subset): each MNC variant against Mask R-CNN with the recipe's
   anchors, input and copy-paste, tile by tile, back to back on one backend (bench_export's
   ``_paired_rows``: the ratio's median and quartiles, each model's median seconds per tile),
   and the instances each kept per tile.

Prints one JSON object on stdout (logs go to stderr).

    python -m bench.bench_export_r50 [--tiles 4 --rounds 2 --detections 30]
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import sys
from pathlib import Path

import numpy as np

from bench import bench_speed
from bench.bench_export import (REPO, TILE, _cfg, _export_int8, _paired_rows, _runners,
                                detection_counts, graph_flops)
from bench.bench_export_pair import model_tiles  # the tiles as tools/predict.py feeds them

BASELINE = "mask_rcnn_R50_recipe"
MNC_VARIANTS = ("mnc5_R50_recipe", "mnc5_R50_recipe_mask128",
                "mnc5_R50_recipe_mask128_topk200")
BACKENDS = ("torch", "onnxruntime", "openvino", "onnxruntime-int8", "openvino-int8")
TRAIN_SET = "spacenet2_vegas_train"  # bench_speed.py's synthetic tiles
logger = logging.getLogger("bench_export_r50")


def make_run(name: str, folder: Path, detections: int) -> Path:
    """``folder`` holding variant ``name``'s config (band statistics of the synthetic training
    tiles, the detection stand-in) and random weights (seed 0); kept when ``folder`` already
    holds this config (a changed config gets new weights, hence a new export)."""
    import torch
    from detectron2.modeling import build_model

    from mnc_d2.engine.setup import setup_cfg

    config, opts = bench_speed.VARIANTS[name]
    folder.mkdir(parents=True, exist_ok=True)
    cfg = setup_cfg(str(REPO / config),
                    [*opts, *bench_speed.detection_opts(detections), "OUTPUT_DIR", str(folder),
                     "DATASETS.TRAIN", f"('{TRAIN_SET}',)", "SEED", "0", "MODEL.WEIGHTS", ""])
    saved = folder / "config.yaml"
    if (folder / "model_final.pth").is_file() and saved.is_file() \
            and saved.read_text() == cfg.dump():
        return folder
    torch.manual_seed(0)
    model = build_model(cfg)
    torch.save({"model": model.state_dict()}, folder / "model_final.pth")
    (folder / "config.yaml").write_text(cfg.dump())
    return folder


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", choices=MNC_VARIANTS, default=list(MNC_VARIANTS))
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--tiles", type=int, default=4, help="timed tiles per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--detections", type=int, default=30,
                        help="instances every model keeps per tile (0: the configs' threshold, "
                        "which a random model keeps almost nothing at)")
    parser.add_argument("--calibration-images", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--work", type=Path, default=REPO / ".cache" / "bench" / "export_r50")
    args = parser.parse_args(argv)
    bench_speed.detection_opts(args.detections)  # a negative count fails before any work
    if args.tiles < 1 or args.rounds < 1 or args.calibration_images < 1:
        parser.error("--tiles, --rounds and --calibration-images must be >= 1")
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")
    import torch

    import mnc_d2
    from bench.bench_demo import cpu_model
    from mnc_d2.export.exporter import build_graph

    work = args.work.resolve()
    data_root = bench_speed._data(work / "data", max(args.tiles, args.calibration_images))
    os.environ["DETECTRON2_DATASETS"] = str(data_root)
    mnc_d2.setup()
    paths = sorted(str(p) for p in (data_root / "spacenet").glob("*/RGB-PanSharpen/*.tif"))
    if len(paths) < max(args.tiles, args.calibration_images):
        raise RuntimeError(f"expected at least {max(args.tiles, args.calibration_images)} tiles "
                           f"under {data_root}, found {len(paths)}")
    tag = f"det{args.detections}"
    sources, report_models = {}, {}  # name -> (run, export)
    for name in (BASELINE, *args.variants):
        run = make_run(name, work / "runs" / f"{name}_{tag}", args.detections)
        # int8 calibrated on the run's training tiles (DATASETS.TRAIN: the synthetic ones)
        export = (_export_int8(run, work / "export" / f"{name}_{tag}", data_root,
                               calibration_images=args.calibration_images)
                  if set(args.backends) - {"torch"} else None)  # eager only: no export
        sources[name] = run, export
        cfg = _cfg(run)
        x = torch.from_numpy(np.ascontiguousarray(
            model_tiles(paths[:1], cfg)[0].transpose(2, 0, 1)))[None]
        report_models[name] = {
            "config": bench_speed.VARIANTS[name][0],
            "opts": bench_speed.VARIANTS[name][1][len(bench_speed.R50_CPU):],
            "mask_conv_dim": int(cfg.MODEL.MNC.MASK_CONV_DIM) if "mnc" in name else None,
            "test_proposals": int(cfg.MODEL.RPN.POST_NMS_TOPK_TEST),
            "input": [list(cfg.INPUT.BANDS), cfg.INPUT.DN_TRANSFORM],
            "flops": graph_flops(build_graph(cfg, TILE), x), "kept_per_tile": {}}
        logger.info("%s: %s", name, report_models[name])
    inputs = {tuple(map(str, m.pop("input"))) for m in report_models.values()}
    if len(inputs) != 1:
        raise RuntimeError(f"the models read different bands or DN transforms: {inputs}")
    tiles = model_tiles(paths[: args.tiles], _cfg(sources[BASELINE][0]))

    def kept(fn) -> float:  # median instances kept per tile (detection_counts' "kept")
        return detection_counts(fn(tiles), 0.0)["kept"]

    def runner(name: str, backend: str):
        run, export = sources[name]
        return _runners(run, export, (), (backend,), args.threads,
                        lambda run_, out, *opts: export)[backend]

    # One backend at a time and two models in memory at a time (all of them at once outgrow
    # 24 GB with five backends of R-50 graphs).
    paired = {}
    for backend in args.backends:
        base = runner(BASELINE, backend)
        report_models[BASELINE]["kept_per_tile"][backend] = kept(base)
        for name in args.variants:
            mnc = runner(name, backend)
            report_models[name]["kept_per_tile"][backend] = kept(mnc)
            paired.update(_paired_rows({backend: mnc}, {backend: base}, (backend,), tiles,
                                       args.rounds, name, names=("mnc", "mask_rcnn")))
            del mnc
            gc.collect()
        del base
        gc.collect()
    paired = {f"{name} / {b}": dict(paired[f"{name} / {b}"], s_per_tile="median of the paired runs")
              for name in args.variants for b in args.backends}
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU",
              "cpu": cpu_model(), "threads": args.threads, "tile_px": TILE,
              "weights": "random init (seed 0)", "fixed_detections": args.detections,
              "calibration_images": args.calibration_images, "tiles": args.tiles,
              "rounds": args.rounds, "baseline": BASELINE, "models": report_models,
              "paired": paired,
              "eager_over_exported": {
                  name: {b: round(paired[f"{name} / torch"]["mnc_s_median"]
                                  / paired[f"{name} / {b}"]["mnc_s_median"], 3)
                         for b in args.backends if b != "torch"}
                  for name in args.variants if "torch" in args.backends}}
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
