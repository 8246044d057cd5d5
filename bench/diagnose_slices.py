#!/usr/bin/env python
"""Why buildings of a slice are missed: the stage at which each truth building is lost.

For every trained run of bench_accuracy.py (cached under --work; nothing is trained here) and
every truth building the SpaceNet rules keep, on the held-out benchmark of the run's data setting:

* ``rpn``: the RPN proposes it: one of the proposals the heads see at test time
  (MODEL.RPN.POST_NMS_TOPK_TEST, boxes scaled back to the tile's pixels) has box IoU >= 0.5;
* ``rpn_07``: the same at box IoU >= 0.7 (a box good enough to warp a mask from);
* ``detected``: some detection kept down to score 0.05 overlaps it at polygon IoU >= 0.5
  (one-to-one matching as the scorer does: recall at the lowest threshold);
* ``found``: matched at the config's own threshold (TEST.SPACENET.SCORE_THRESH): the recall the
  accuracy tables report;
* ``poor_mask``: its best polygon IoU with any detection is in [0.3, 0.5): found, but the mask
  or polygon is too poor to count;
* ``best_score``: median score of the detection with the highest polygon IoU (of those with
  IoU >= 0.3).

A building lost between ``rpn`` and ``detected`` is lost by the heads (classification, box or
mask); one lost between ``detected`` and ``found`` has a score under the threshold; one never
proposed is lost by the RPN (anchors, resolution, features). Each slice (small, concave, dark,
other; flags as bench_accuracy.py defines them; and the dark roofs split into small and large
ones, ``dark_small`` and ``dark_large``, as the small slice's 100 m2 cuts them) gets the fraction
at every stage.

    python -m bench.diagnose_slices --variants mnc5 mask_rcnn --settings default hard \
        --model-seeds 0 1 2 > bench/results/diagnose_slices.json
    python -m bench.diagnose_slices ... --add-to earlier.json   # runs accumulate

Prints one JSON object (logs on stderr). Reads the detections bench_accuracy.py's evaluation
with the config's own inference settings wrote (``bench_eval_<benchmark>/*/spacenet_proposals.csv``
in each run folder, ``bench_accuracy.eval_dir``; never a --test-opts evaluation's folder); runs
the backbone and RPN once over the test tiles per run (about half a minute per run on a 2-core
CPU).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import shapely

import mnc_d2

mnc_d2.setup()
import torch  # noqa: E402

from mnc_d2.engine.trainer import Trainer  # noqa: E402
from mnc_d2.evaluation.spacenet_metric import score  # noqa: E402
from mnc_d2.modeling.checkpoint import build_checkpointer  # noqa: E402

from . import bench_accuracy as acc  # noqa: E402

# The benchmark's four slices, then the dark roofs split by size: small (under 100 m2, the
# small slice's cut) and the rest.
SLICES = ("small", "concave", "dark", "other", "dark_small", "dark_large")
STAGES = ("rpn", "rpn_07", "detected", "found", "poor_mask")


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(A, B) IoU of boxes ``a`` (A, 4) and ``b`` (B, 4), x0 y0 x1 y1."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = (a[:, 2:] - a[:, :2]).prod(axis=1)
    area_b = (b[:, 2:] - b[:, :2]).prod(axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


@torch.no_grad()
def rpn_best_iou(cfg, weights: str, names: list[str], truth: pd.DataFrame) -> np.ndarray:
    """(T,) best box IoU of each truth row with the RPN's test-time proposals of its tile."""
    model = Trainer.build_model(cfg)
    build_checkpointer(cfg, model).load(weights)
    model.eval()
    t_boxes = shapely.bounds(truth.geometry.to_numpy())  # (T, 4)
    rows_of = truth.groupby("ImageId").indices
    best = np.zeros(len(truth))
    for name in names:
        for inputs in Trainer.build_test_loader(cfg, name):
            images = model.preprocess_image(inputs)
            features = model.backbone(images.tensor)
            proposals, _ = model.proposal_generator(images, features, None)
            for inp, size, props in zip(inputs, images.image_sizes, proposals):
                rows = rows_of.get(inp["image_id"])
                if rows is None or len(props) == 0:
                    continue
                scale = np.array([inp["width"] / size[1], inp["height"] / size[0]] * 2)
                boxes = props.proposal_boxes.tensor.cpu().numpy() * scale
                best[rows] = box_iou(t_boxes[rows], boxes).max(axis=1)
    return best


def best_polygon_match(truth: pd.DataFrame, props: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(T,) best polygon IoU of each truth row with any detection of its tile, and (T,) the
    score of that detection (NaN where none overlaps)."""
    t_geom = truth.geometry.to_numpy()
    p_geom = props.geometry.to_numpy()
    tree = shapely.STRtree(p_geom)
    ti, pi = tree.query(t_geom, predicate="intersects")
    same = truth.ImageId.to_numpy()[ti] == props.ImageId.to_numpy()[pi]
    ti, pi = ti[same], pi[same]
    inter = shapely.area(shapely.intersection(t_geom[ti], p_geom[pi]))
    iou = inter / (shapely.area(t_geom[ti]) + shapely.area(p_geom[pi]) - inter)
    best, best_score = np.zeros(len(truth)), np.full(len(truth), np.nan)
    order = np.argsort(iou)  # ascending: the last write per truth row is its best
    best[ti[order]] = iou[order]
    best_score[ti[order]] = props.Confidence.to_numpy()[pi[order]]
    return best, best_score


def diagnose_run(name: str, seed: int, setting: str, work: Path, iters: int,
                 images: int, test_setting: str | None = None) -> dict:
    """One run's stage fractions per slice, on the benchmark of ``test_setting`` (default: the
    run's own setting; another one needs bench_accuracy.py's --test-setting evaluation)."""
    out_dir, cfg, test_root, product = acc.cached_run(name, seed, setting, work, iters, images,
                                                      test_setting)
    weights = out_dir / "model_final.pth"
    names, truth = acc.benchmark_datasets(test_root, product)
    evaluated = acc.eval_dir(out_dir, test_root)
    csvs = sorted(evaluated.glob("*/spacenet_proposals.csv"))
    if len(csvs) != len(names):
        other = f" --test-setting {test_setting}" if test_setting not in (None, setting) else ""
        raise SystemExit(f"{out_dir}: expected {len(names)} evaluated cities under "
                         f"{evaluated.name}/, found {len(csvs)}; run "
                         f"bench.bench_accuracy{other} for this run first")
    props = pd.concat([pd.read_csv(p) for p in csvs], ignore_index=True)
    props["geometry"] = shapely.from_wkt(props.PolygonWKT_Pix.to_numpy())
    floor = score(truth, props)
    thresh = cfg.TEST.SPACENET.SCORE_THRESH
    headline = score(truth, props[props.Confidence >= thresh].reset_index(drop=True))
    rpn = rpn_best_iou(cfg, str(weights), names, truth)
    best, best_score = best_polygon_match(truth, props)
    attrs = acc.slice_flags(test_root / "spacenet")
    frame = truth[["ImageId", "BuildingId"]].assign(
        kept=floor.truth_kept, rpn=rpn >= 0.5, rpn_07=rpn >= 0.7, detected=floor.truth_matched,
        found=headline.truth_matched, poor_mask=(best >= 0.3) & (best < 0.5),
        best_iou=best, best_score=np.where(best >= 0.3, best_score, np.nan))
    frame = frame[frame.kept].merge(attrs, on=["ImageId", "BuildingId"], how="left")
    frame["other"] = ~(frame.small | frame.concave | frame.dark)
    frame["dark_small"] = frame.dark & frame.small
    frame["dark_large"] = frame.dark & ~frame.small
    out = {"score_thresh": thresh, "slices": {}}
    for flag in SLICES:
        sel = frame[frame[flag].astype(bool)]
        out["slices"][flag] = {
            "n": int(len(sel)),
            **{stage: round(float(sel[stage].mean()), 4) for stage in STAGES},
            "median_best_iou": round(float(sel.best_iou.median()), 4),
            "median_best_score": round(float(sel.best_score.median()), 4),
        }
    return out


def summarize(runs: dict) -> dict:
    """Mean and spread over seeds of every stage fraction, per variant/setting and slice."""
    out = {}
    for key, seeds in runs.items():
        out[key] = {}
        for flag in SLICES:
            if any(flag not in r["slices"] for r in seeds.values()):  # an earlier version's run
                continue
            out[key][flag] = {stage: acc._spread([r["slices"][flag][stage]
                                                  for r in seeds.values()])
                              for stage in (*STAGES, "median_best_score")}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["mnc5", "mask_rcnn"],
                        choices=list(acc.VARIANTS))
    parser.add_argument("--settings", nargs="+", default=["default", "hard"],
                        choices=["default", "hard"])
    parser.add_argument("--test-setting", choices=["default", "hard"],
                        help="diagnose on this setting's benchmark instead of each run's own "
                             "(transfer; keys become VARIANT/SETTING -> TEST_SETTING)")
    parser.add_argument("--model-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work", default=".cache/bench/accuracy")
    parser.add_argument("--iters", type=int, default=600)
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--add-to", metavar="REPORT",
                        help="a report of an earlier invocation whose runs are kept (runs of "
                             "this one replace those of the same variant, setting and seed)")
    args = parser.parse_args()
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")
    work = Path(args.work).resolve()
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU",
              "iterations": args.iters, "train_images_per_city": args.images, "runs": {}}
    if args.add_to:
        report["runs"] = json.loads(Path(args.add_to).read_text())["runs"]
    for setting in args.settings:
        for name in args.variants:
            test = args.test_setting or setting
            key = f"{name}/{setting}" + (f" -> {test}" if test != setting else "")
            for seed in args.model_seeds:
                logging.info("diagnosing %s seed %d", key, seed)
                report["runs"].setdefault(key, {})[str(seed)] = diagnose_run(
                    name, seed, setting, work, args.iters, args.images, test)
    report["summary"] = summarize(report["runs"])
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
