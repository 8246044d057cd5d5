#!/usr/bin/env python
"""Why MNC's scores stayed under 0.5: one-change ablations on a short schedule (diagnostic).

Each variant is the head as the original trains it (all of the original's training rules,
box-level auxiliary classifiers on) with one rule changed, trained 300 iterations at 256 px from
scratch on the default synthetic data (generator seed 0, 60 tiles per city) and scored on the held-out benchmark
(seed 1) with bench_accuracy.py's evaluation: mean city F1 at the config's threshold (0.5), the
best threshold of the sweep and its F1, the score calibration error (ECE) and the last logged
stage-3 classification loss. One model seed and a short schedule: this locates a cause, it does
not rank variants (bench_accuracy.py does, over seeds and data settings).

    python -m bench.diagnose_scores [--variants all_rules no_box_cls ...] [--iters 300]

Prints one JSON line per variant on stdout (logs on stderr). Uses bench_accuracy.py's data under
--work (generated when missing).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from . import bench_accuracy as acc
ALL_RULES = ["MODEL.MNC.LOSS_WEIGHTS.CLS3_BOX", "1.0", "MODEL.MNC.LOSS_WEIGHTS.CLS5_BOX", "1.0"]
V01 = ["MODEL.MNC.MASK_GRAD_FG_ONLY", "False", "MODEL.MNC.BOX_GRAD", "coord",
       "MODEL.MNC.LOSS_WEIGHTS.CLS3_BOX", "0.0", "MODEL.MNC.LOSS_WEIGHTS.CLS5_BOX", "0.0",
       "MODEL.MNC.LOSS_WEIGHTS.BOX5", "0.0", "MODEL.MNC.CLS_POOL", "", "MODEL.MNC.WARP_SIZE", "7",
       "MODEL.MNC.MASK_VOTING_SPACE", "box"]
VARIANTS = {
    "all_rules": ALL_RULES,
    "no_pool": [*ALL_RULES, "MODEL.MNC.CLS_POOL", "", "MODEL.MNC.WARP_SIZE", "7"],
    "no_aux": [*ALL_RULES, "MODEL.MNC.LOSS_WEIGHTS.CLS3_BOX", "0.0",
               "MODEL.MNC.LOSS_WEIGHTS.CLS5_BOX", "0.0", "MODEL.MNC.LOSS_WEIGHTS.BOX5", "0.0"],
    "no_box5": [*ALL_RULES, "MODEL.MNC.LOSS_WEIGHTS.BOX5", "0.0"],
    "no_box_cls": [],  # = today's defaults
    "mask_grad_all_rois": [*ALL_RULES, "MODEL.MNC.MASK_GRAD_FG_ONLY", "False"],
    "box_grad_coord": [*ALL_RULES, "MODEL.MNC.BOX_GRAD", "coord"],
    "v01": V01,
}
SMALL = ["INPUT.MIN_SIZE_TRAIN", "(256,)", "INPUT.MAX_SIZE_TRAIN", "256",
         "INPUT.MIN_SIZE_TEST", "256", "INPUT.MAX_SIZE_TEST", "256"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--work", default=".cache/bench/accuracy")
    parser.add_argument("--out", default=".cache/bench/diagnose")
    args = parser.parse_args()
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    work = Path(args.work).resolve()
    train_root = acc.prepare_data(acc.data_dir(work, "train", 0, 60, "default"), 0, 60,
                                  "default")
    test_root = acc.prepare_data(acc.data_dir(work, "test", 1, 30, "default"), 1, 30, "default")
    os.environ["DETECTRON2_DATASETS"] = str(train_root)
    attrs = acc.slice_flags(test_root / "spacenet")
    for name in args.variants:
        acc.VARIANTS[name] = ("configs/quick_schedules/mnc_R_18_FPN_demo_synthetic.yaml",
                              VARIANTS[name] + SMALL)
        out_dir = Path(args.out).resolve() / name
        res = acc.run_variant(name, out_dir, args.iters, 0, test_root, attrs)
        last = [json.loads(line) for line in (out_dir / "metrics.json").open()][-1]
        print(json.dumps({"variant": name, "iterations": args.iters,
                          "mean_city_f1_at_0.5": round(res["mean_city_f1"], 3),
                          "best_threshold": res["best_threshold"]["threshold"],
                          "best_mean_city_f1": round(res["best_threshold"]["mean_city_F1"], 3),
                          "ECE": round(res["calibration"]["ECE"], 3),
                          "loss_cls3_last": round(last["loss_cls3"], 3),
                          "train_wall_s": res["train_wall_s"]}), flush=True)


if __name__ == "__main__":
    main()
