#!/usr/bin/env python
"""Speed and memory side by side: MNC variants vs Mask R-CNN, and polygonization throughput.

The default variants use the demo's backbone and input (R-18-FPN, configs/quick_schedules/
*_demo_synthetic.yaml); the ``*_R50`` variants are the ResNet-50-FPN SpaceNet 2 configs
(configs/SpaceNet2/, 650 px input) with 2 images per training step instead of 8 (CPU), compared
with ``mask_rcnn_R50``; ``mnc5_R50_sn1`` and ``mnc5_R50_sn4`` are the SpaceNet 1 (3band, 608 px)
and SpaceNet 4 (4-band Pan-Sharpen, 900 px) configs on synthetic data of their layouts, compared
with ``mnc5_R50`` (same model on SpaceNet 2 input); ``mnc5_R50_recipe`` and
``mnc5_R50_recipe_mask128`` are the recommended RGB recipe with its 256- and 128-channel mask
heads, compared with ``mask_rcnn_R50_recipe`` (Mask R-CNN with the recipe's anchors, input and
copy-paste). Each runs in its own child process so its peak RSS is its own, and reports
its parameter count (total and ROI heads) and the instances it kept per tile:

* training: seconds per iteration (forward, backward and optimizer step on a pre-loaded batch of
  IMS_PER_BATCH images; data loading excluded), after warm-up steps;
* inference: seconds per 650 x 650 px tile (model forward incl. mask pasting; reading and
  polygonization excluded), at the config's test size (416 px) and at native 650 px.

A variant starts from its bench_accuracy.py model when that exists (see --trained), else from
random initialisation (the report says which): a random model detects nothing, which makes its
inference cheaper than in real use, Mask R-CNN's most (its mask head runs on the kept detections
only, MNC's on every proposal). ``--detections N`` stands in for trained weights: every model
keeps N instances per tile (no score threshold, at most N after NMS), so both paste, and Mask
R-CNN runs its mask head on, as many instances as a trained model keeps.

Children run in rounds, the variants' order alternating between rounds, so every variant sees the
machine in the same states; medians are taken over all rounds and ratios against Mask R-CNN.
Polygonization throughput (instance masks -> SpaceNet polygons per second) is measured in the
parent on full-frame 650 px masks of synthetic ground-truth footprints.

Prints one JSON object on stdout (logs go to stderr).

    python -m bench.bench_speed [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

QUICK = "configs/quick_schedules/"
SN2 = "configs/SpaceNet2/"
R50_CPU = ["SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0"]
VARIANTS = {
    "mask_rcnn": (QUICK + "mask_rcnn_R_18_FPN_demo_synthetic.yaml", []),
    "mnc5": (QUICK + "mnc_R_18_FPN_demo_synthetic.yaml", []),
    "mnc3": (QUICK + "mnc_R_18_FPN_demo_synthetic.yaml", ["MODEL.MNC.NUM_STAGES", "3"]),
    "mnc5_roialign": (QUICK + "mnc_R_18_FPN_demo_synthetic.yaml",
                      ["MODEL.MNC.ROI_WARP", "roialign"]),
    # bench_accuracy.py's variant of that name: a convolutional mask head in the cascade.
    "mnc5_conv_mask": (QUICK + "mnc_R_18_FPN_demo_synthetic.yaml",
                       ["MODEL.MNC.MASK_HEAD", "conv", "MODEL.MNC.MASK_NUM_CONV", "2",
                        "MODEL.MNC.MASK_CONV_DIM", "64"]),
    # The R-50 SpaceNet 2 configs GPU users train (2 images per step here, not 8: CPU).
    "mask_rcnn_R50": (SN2 + "mask_rcnn_R_50_FPN_3x_all.yaml", R50_CPU),
    "mnc5_R50": (SN2 + "mnc_R_50_FPN_3x_all.yaml", R50_CPU),
    # The R-50 MNC without the pooling before the classifier's fc layers (mnc_d2 0.1's head).
    "mnc5_R50_nopool": (SN2 + "mnc_R_50_FPN_3x_all.yaml", [*R50_CPU, "MODEL.MNC.CLS_POOL", ""]),
    # The R-50 MNC with the convolutional mask head (MODEL.MNC.MASK_HEAD conv, 28 x 28 masks).
    "mnc5_R50_conv_mask": (SN2 + "mnc_R_50_FPN_3x_all_conv_mask.yaml", R50_CPU),
    # The recommended RGB recipe at R-50 (small anchors, log(1 + DN) input, copy-paste, the
    # 256-channel convolutional mask head), its 128-channel head, and Mask R-CNN with the same
    # anchors, input and copy-paste (their baseline).
    "mnc5_R50_recipe": (SN2 + "mnc_R_50_FPN_3x_all_small_anchors_logdn_copypaste_conv_mask.yaml",
                        R50_CPU),
    "mnc5_R50_recipe_mask128": (
        SN2 + "mnc_R_50_FPN_3x_all_small_anchors_logdn_copypaste_conv_mask128.yaml", R50_CPU),
    # ... and with 200 test proposals instead of the configs' 600 (inference only; at R-18 scale
    # the recipe's recall moved by at most 0.008 between 200 and 600, BENCHMARKS.md section 1e).
    "mnc5_R50_recipe_mask128_topk200": (
        SN2 + "mnc_R_50_FPN_3x_all_small_anchors_logdn_copypaste_conv_mask128.yaml",
        [*R50_CPU, "MODEL.RPN.POST_NMS_TOPK_TEST", "200"]),
    # The recipe with the paper's fc mask head.
    "mnc5_R50_recipe_fc": (SN2 + "mnc_R_50_FPN_3x_all_small_anchors_logdn_copypaste.yaml",
                           R50_CPU),
    "mask_rcnn_R50_recipe": (SN2 + "mask_rcnn_R_50_FPN_3x_all.yaml", [
        *R50_CPU, "MODEL.ANCHOR_GENERATOR.SIZES",
        "[[8, 16], [16, 32], [32, 64], [64, 128], [128, 256]]", "INPUT.DN_TRANSFORM", "log",
        "INPUT.AUGMENT.COPY_PASTE.PROB", "0.5"]),
}
# Other releases' R-50 configs, on synthetic data of their layouts (train dataset, release).
SN1, SN4 = "configs/SpaceNet1/", "configs/SpaceNet4/"
VARIANTS["mnc5_R50_sn1"] = (SN1 + "mnc_R_50_FPN_3x_rio.yaml", R50_CPU)
VARIANTS["mnc5_R50_sn4"] = (SN4 + "mnc_R_50_FPN_3x_atlanta_all.yaml", R50_CPU)
TRAIN_SET = {"mnc5_R50_sn1": ("spacenet1_rio_train", "spacenet1"),
             "mnc5_R50_sn4": ("spacenet4_atlanta_all_train", "spacenet4")}
BASELINE = {"mnc5_R50": "mask_rcnn_R50", "mnc5_R50_nopool": "mask_rcnn_R50",
            "mnc5_R50_conv_mask": "mask_rcnn_R50",
            "mask_rcnn_R50": "mask_rcnn_R50", "mnc5_R50_sn1": "mnc5_R50",
            "mnc5_R50_sn4": "mnc5_R50", "mnc5_R50_recipe": "mask_rcnn_R50_recipe",
            "mnc5_R50_recipe_mask128": "mask_rcnn_R50_recipe",
            "mnc5_R50_recipe_mask128_topk200": "mask_rcnn_R50_recipe",
            "mnc5_R50_recipe_fc": "mask_rcnn_R50_recipe",
            "mask_rcnn_R50_recipe": "mask_rcnn_R50_recipe"}  # everything else: vs mask_rcnn
TILE = 650
logger = logging.getLogger("bench_speed")


def _data(root: Path, images: int, releases=()) -> Path:
    from mnc_d2.synthetic.spacenet2 import ensure_synthetic, replace_generated
    from mnc_d2.synthetic.releases import generate

    ensure_synthetic(root, ["vegas"], images, seed=2)
    for release in releases:
        marker = root / "spacenet" / f".complete-{release}-{images}"
        if not marker.exists():
            # another image count (or an interrupted run): replace the release's folder whole
            for old in (root / "spacenet").glob(f".complete-{release}-*"):
                old.unlink()
            replace_generated(root / "spacenet",
                              lambda scratch, r=release: generate(r, scratch, images, seed=2))
            marker.write_text("generated by bench_speed\n")
    return root


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def detection_opts(detections: int) -> list[str]:
    """Config overrides that make a model keep ``detections`` instances per tile whatever its
    weights (no score threshold, at most that many after NMS): a stand-in for trained weights,
    so that a random-initialised Mask R-CNN runs its mask head, and both models paste masks,
    for as many instances as a trained model keeps (0: the configs' own threshold)."""
    if detections < 0:
        raise ValueError(f"--detections must be >= 0, got {detections}")
    return [] if detections == 0 else ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
                                       "TEST.DETECTIONS_PER_IMAGE", str(detections)]


def worker(name: str, data_root: Path, out_dir: Path, warmup: int, steps: int,
           tiles: int, weights: Path | None, detections: int = 0) -> dict:
    """One variant in this process: training s/iter, inference s/tile, peak RSS and the
    instances kept per tile. With ``weights`` (the variant's model from bench_accuracy.py) the
    model starts trained, so inference sees real detections (mask pasting and voting cost what
    they cost in use); ``detections`` > 0 fixes the instances kept instead
    (:func:`detection_opts`)."""
    os.environ["DETECTRON2_DATASETS"] = str(data_root)
    import torch

    import mnc_d2

    mnc_d2.setup()
    from detectron2.data import DatasetCatalog
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage
    from mnc_d2.data.mapper import SpaceNetDatasetMapper
    from mnc_d2.engine.setup import setup_cfg
    from mnc_d2.engine.trainer import Trainer
    from mnc_d2.modeling.checkpoint import build_checkpointer

    config, opts = VARIANTS[name]
    train_set = TRAIN_SET.get(name, ("spacenet2_vegas_train",))[0]
    cfg = setup_cfg(config, [*opts, "OUTPUT_DIR", str(out_dir / name), "SEED", "0",
                             "DATASETS.TRAIN", f"('{train_set}',)",
                             *detection_opts(detections)])
    torch.manual_seed(0)
    model = build_model(cfg)
    if weights is not None:
        build_checkpointer(cfg, model).load(str(weights))
    optimizer = Trainer.build_optimizer(cfg, model)
    loader = iter(Trainer.build_train_loader(cfg))
    batches = [next(loader) for _ in range(4)]

    def train_step(i: int) -> None:
        losses = sum(model(batches[i % len(batches)]).values())
        optimizer.zero_grad()
        losses.backward()
        optimizer.step()

    model.train()
    with EventStorage(0):
        for i in range(warmup):
            train_step(i)
        train_s = [_timed(lambda i=i: train_step(i)) for i in range(steps)]

    dicts = DatasetCatalog.get(train_set)[:tiles]
    model.eval()
    infer, kept = {}, {}
    # SpaceNet 2 tiles at the config's size and native 650 px (once where they are the same);
    # other releases at their config's.
    sizes = (tuple(dict.fromkeys((cfg.INPUT.MIN_SIZE_TEST, TILE))) if name not in TRAIN_SET
             else (cfg.INPUT.MIN_SIZE_TEST,))
    for size in sizes:
        test_cfg = cfg.clone()
        test_cfg.defrost()
        if name not in TRAIN_SET:  # square SpaceNet 2 tiles resized to size x size
            test_cfg.INPUT.MIN_SIZE_TEST = size
            test_cfg.INPUT.MAX_SIZE_TEST = size
        mapper = SpaceNetDatasetMapper(test_cfg, False)
        inputs = [mapper(d) for d in dicts]
        if name not in TRAIN_SET and any(tuple(x["image"].shape[1:]) != (size, size)
                                         for x in inputs):
            raise ValueError(f"expected {TILE} px tiles resized to {size} px, got "
                             f"{[tuple(x['image'].shape[1:]) for x in inputs]}")
        counts = kept[str(size)] = []

        def run(x: dict) -> None:
            counts.append(len(model([x])[0]["instances"]))

        with torch.no_grad():
            for x in inputs[:warmup]:
                model([x])
            infer[str(size)] = [_timed(lambda x=x: run(x)) for x in inputs]
    return {"train_step_s": train_s, "infer_s": infer, "kept_per_tile": kept,
            "weights": str(weights or "random init"),
            "config_size": cfg.INPUT.MIN_SIZE_TEST,
            "input_hw": list(inputs[0]["image"].shape[1:]),
            "bands": int(inputs[0]["image"].shape[0]),
            "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
            "roi_head_params_m": round(sum(p.numel() for p in model.roi_heads.parameters())
                                       / 1e6, 2),
            "ims_per_batch": cfg.SOLVER.IMS_PER_BATCH,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _polygon_masks(data_root: Path, count: int) -> list[np.ndarray]:
    """Full-frame (650, 650) bool masks of synthetic ground-truth buildings."""
    import rasterio.features
    from mnc_d2.evaluation.spacenet_metric import read_truth_csv

    aoi = next((data_root / "spacenet").glob("AOI_*_Train"))
    truth = read_truth_csv(aoi / "summaryData" / f"{aoi.name}_Building_Solutions.csv")
    geoms = [g for g in truth["geometry"] if not g.is_empty][:count]
    return [rasterio.features.rasterize([g], out_shape=(TILE, TILE)).astype(bool) for g in geoms]


def polygonize_throughput(data_root: Path, count: int, repeats: int) -> dict:
    from mnc_d2.geometry.polygons import mask_to_polygon

    masks = _polygon_masks(data_root, count)
    out = {"masks": len(masks), "mask_shape": [TILE, TILE]}
    for label, kwargs in (("simplify", {"simplify_tolerance": 0.5}),
                          ("simplify_regularize", {"simplify_tolerance": 0.5,
                                                   "regularize": True})):
        runs = [_timed(lambda: [mask_to_polygon(m, **kwargs) for m in masks])
                for _ in range(repeats)]
        out[label] = {"median_s": round(statistics.median(runs), 4),
                      "masks_per_s": round(len(masks) / statistics.median(runs), 1)}
    return out


def _summary(results: dict[str, list[dict]]) -> dict:
    out = {}
    for name, runs in results.items():
        train = [t for r in runs for t in r["train_step_s"]]
        entry = {"train_s_per_iter_median": round(statistics.median(train), 4),
                 "train_steps_timed": len(train),
                 "ims_per_batch": runs[0]["ims_per_batch"],
                 "peak_rss_mb_max": round(max(r["peak_rss_mb"] for r in runs), 1),
                 "weights": runs[0]["weights"], "params_m": runs[0]["params_m"],
                 "roi_head_params_m": runs[0]["roi_head_params_m"]}
        for size in runs[0]["infer_s"]:
            times = [t for r in runs for t in r["infer_s"][size]]
            entry[f"infer_s_per_tile_median_{size}px"] = round(statistics.median(times), 4)
        config_times = [t for r in runs for t in r["infer_s"][str(r["config_size"])]]
        entry["infer_s_per_tile_median_at_config_size"] = round(statistics.median(config_times), 4)
        entry["test_input"] = {"bands": runs[0]["bands"], "hw": runs[0]["input_hw"]}
        if all("kept_per_tile" in r for r in runs):
            entry["kept_per_tile_median_by_size"] = {
                size: statistics.median(k for r in runs for k in r["kept_per_tile"][size])
                for size in runs[0]["kept_per_tile"]}
        out[name] = entry
    for name, entry in out.items():
        base_name = BASELINE.get(name, "mask_rcnn")
        base = out.get(base_name)
        if base:
            entry["baseline"] = base_name
            entry["ratio_vs_baseline"] = {
                key.replace("_median", ""): round(entry[key] / base[key], 3)
                for key in entry if key.endswith(("_median", "px", "params_m", "_config_size"))
                and key in base and base[key] > 0}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round, few steps")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                        default=[n for n in VARIANTS if "R50" not in n],
                        help="default: the R-18 demo variants; the R-50 SpaceNet 2 configs: "
                        "mask_rcnn_R50 mnc5_R50 mnc5_R50_nopool; the R-50 recipe: "
                        "mask_rcnn_R50_recipe mnc5_R50_recipe mnc5_R50_recipe_mask128 "
                        "mnc5_R50_recipe_mask128_topk200 mnc5_R50_recipe_fc (best with "
                        "--detections); other releases' R-50 configs: "
                        "mnc5_R50_sn1 mnc5_R50_sn4 (ratios vs mnc5_R50)")
    parser.add_argument("--rounds", type=int, help="child runs per variant (default 3, quick 1)")
    parser.add_argument("--steps", type=int, help="timed training steps per child (default 8)")
    parser.add_argument("--tiles", type=int, default=10, help="timed tiles per child and size")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--masks", type=int, default=500, help="masks for polygonization")
    parser.add_argument("--work", default=".cache/bench/speed")
    parser.add_argument("--trained", default=".cache/bench/accuracy/runs",
                        help="bench_accuracy.py's runs: a variant's model_final.pth there "
                        "(<variant>_60img_600it/seed<S>, quick: _20img_200it/seed<S>) is used "
                        "when present")
    parser.add_argument("--trained-seed", type=int, default=0,
                        help="S above: the model seed of the trained variants (pick one whose "
                        "models all trained normally: a stalled model keeps few detections, "
                        "which makes its inference cheap)")
    parser.add_argument("--detections", type=int, default=0,
                        help="every model keeps this many instances per tile (no score "
                        "threshold): a stand-in for trained weights, so that a random "
                        "Mask R-CNN's mask head runs as often as a trained one's (0: the "
                        "configs' threshold)")
    parser.add_argument("--worker", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")
    work = Path(args.work).resolve()
    steps = args.steps or (3 if args.quick else 8)
    detection_opts(args.detections)  # refuse a negative count before any child starts
    releases = sorted({TRAIN_SET[n][1] for n in ([args.worker] if args.worker else args.variants)
                       if n in TRAIN_SET})
    data_root = _data(work / "data", max(args.tiles, 4) * 2, releases)
    if args.worker:
        tag = "20img_200it" if args.quick else "60img_600it"
        weights = (Path(args.trained).resolve() / f"{args.worker}_{tag}"
                   / f"seed{args.trained_seed}" / "model_final.pth")
        res = worker(args.worker, data_root, work / "runs", args.warmup, steps, args.tiles,
                     weights if weights.exists() else None, args.detections)
        print(json.dumps(res))
        return
    rounds = args.rounds or (1 if args.quick else 3)
    results: dict[str, list[dict]] = {name: [] for name in args.variants}
    for r in range(rounds):
        order = args.variants if r % 2 == 0 else list(reversed(args.variants))
        for name in order:
            logger.info("round %d/%d: %s", r + 1, rounds, name)
            cmd = [sys.executable, "-W", "ignore", __file__, "--worker", name,
                   "--steps", str(steps), "--tiles", str(args.tiles),
                   "--warmup", str(args.warmup), "--work", str(work),
                   "--trained", args.trained, "--trained-seed", str(args.trained_seed),
                   "--detections", str(args.detections),
                   *(["--quick"] if args.quick else [])]
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"worker for {name} failed (exit {proc.returncode}); "
                                   f"run {' '.join(cmd)} to see why")
            results[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    import torch

    from bench.bench_demo import cpu_model

    report = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU",
              "cpu": cpu_model(),
              "torch_threads": torch.get_num_threads(), "rounds": rounds,
              "trained_seed": args.trained_seed, "fixed_detections": args.detections,
              "timed_train_steps_per_round": steps, "timed_tiles_per_round": args.tiles,
              "models": _summary(results),
              "polygonize": polygonize_throughput(data_root, args.masks, 3)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
