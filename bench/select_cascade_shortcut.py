#!/usr/bin/env python
"""Choose a cascade shortcut's setting on training tiles, never on the benchmark's.

The shortcuts send fewer proposals on to stages 4-5 (inference only,
:func:`mnc_d2.modeling.mnc_roi_heads.cascade_gate`): ``--shortcut topk``
(MODEL.MNC.TEST_CASCADE_TOPK, each tile's K best by stage-3 score) or ``--shortcut nms``
(MODEL.MNC.TEST_CASCADE_NMS, NMS at a box IoU over the stage-3 refined boxes). Every trained MNC
run of bench_accuracy.py named here (cached under --work; nothing is trained) is evaluated on
its own training tiles (generator seed 0, the data it was trained on: the benchmark's held-out
tiles are never read) with each candidate value and without the shortcut (0), by
bench_accuracy.py's own evaluation (SpaceNet matching at the config's threshold, recall per
slice). The chosen value is the smallest candidate (the one that sends the fewest proposals on)
whose mean city F1 on every run is at most ``--tolerance`` below that run's F1 without the
shortcut; the rule and the candidates are fixed before the run (the defaults below), and the
benchmark then measures the chosen value once (bench_accuracy.py ``--test-opts KEY VALUE``).

    python -m bench.select_cascade_shortcut --shortcut topk --variants mnc5 \
        --settings default hard --model-seeds 0 1 2 > bench/results/cascade_shortcut_topk.json

Prints one JSON object (logs on stderr): per run and value, mean city F1, TP / FP / FN and
recall per slice, and the chosen value. About 30-40 s per evaluation of 120 training tiles on a
2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from bench.bench_accuracy import (cached_run, data_dir, evaluate_model, slice_flags,
                                  variant_cfg)

# shortcut -> (config key, candidates): K = an eighth, a quarter and half of the configs' 200
# test proposals; box IoUs from one that merges only near-copies down to the RPN's own 0.7 and
# below
SHORTCUTS = {"topk": ("MODEL.MNC.TEST_CASCADE_TOPK", (25, 50, 100)),
             "nms": ("MODEL.MNC.TEST_CASCADE_NMS", (0.5, 0.6, 0.7, 0.8, 0.9))}
TOLERANCE = 0.002  # the largest F1 loss on a run's own training tiles that a value may cost

logger = logging.getLogger("select_cascade_shortcut")


def evaluate_run(name: str, seed: int, setting: str, work: Path, iters: int, images: int,
                 key: str, values) -> dict:
    """One run on its own training tiles with ``key`` at each of ``values`` (0 = no
    shortcut): str(value) -> its scores."""
    out_dir, _, _, product = cached_run(name, seed, setting, work, iters, images)
    train_root = data_dir(work, "train", 0, images, setting)
    attrs = slice_flags(train_root / "spacenet")
    out = {}
    for value in values:
        opts = (key, str(value))
        cfg = variant_cfg(name, out_dir, iters, seed, opts)
        res = evaluate_model(cfg, str(out_dir / "model_final.pth"), train_root, product, attrs,
                             opts)
        overall = res["overall"]
        out["0" if not value else str(value)] = {
            "mean_city_f1": round(res["mean_city_f1"], 4), "tp": overall["tp"],
            "fp": overall["fp"], "fn": overall["fn"], "recall_slices": res["recall_slices"]}
    return out


def choose(runs: dict, candidates, tolerance: float):
    """The smallest candidate costing every run at most ``tolerance`` of mean city F1 against
    its evaluation without the shortcut ("0"); 0 (no shortcut) when none does."""
    for value in sorted(candidates):
        if all(r[str(value)]["mean_city_f1"] >= r["0"]["mean_city_f1"] - tolerance
               for r in runs.values()):
            return value
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shortcut", choices=list(SHORTCUTS), default="topk")
    parser.add_argument("--variants", nargs="+", default=["mnc5"])
    parser.add_argument("--settings", nargs="+", default=["default", "hard"])
    parser.add_argument("--model-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iters", type=int, default=600)
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--candidates", type=float, nargs="+",
                        help="the shortcut's values to try (default: SHORTCUTS)")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE)
    parser.add_argument("--work", default=".cache/bench/accuracy")
    args = parser.parse_args()
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")
    import mnc_d2

    mnc_d2.setup()
    work = Path(args.work).resolve()
    key, defaults = SHORTCUTS[args.shortcut]
    kind = type(defaults[0])  # the key's own type (yacs refuses 0 for a float key)
    candidates = [kind(v) for v in (args.candidates or defaults)]
    runs = {}
    for name in args.variants:
        for setting in args.settings:
            for seed in args.model_seeds:
                label = f"{name} {setting} seed {seed}"
                runs[label] = evaluate_run(name, seed, setting, work, args.iters, args.images,
                                           key, (kind(0), *candidates))
                logger.info("%s: %s", label, {k: v["mean_city_f1"]
                                              for k, v in runs[label].items()})
    report = {"key": key, "data": "each run's own training tiles (generator seed 0)",
              "iterations": args.iters, "candidates": candidates,
              "tolerance": args.tolerance, "runs": runs,
              "chosen": choose(runs, candidates, args.tolerance)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
