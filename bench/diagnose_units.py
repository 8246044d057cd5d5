#!/usr/bin/env python
"""Why a trained MNC classifier stays at the class prior: its fully connected units, alive or dead.

For every trained run of bench_accuracy.py asked for (cached under --work; nothing is trained
here), the model runs over the first ``--tiles`` held-out test tiles of its data setting at test
time, and every ReLU fc layer of the stage-3/5 classification head is watched on all the RoIs it
sees: ``fc_box`` and ``fc_masked`` (the two pathways) and ``fc_joint`` (their joint layer, absent
with ``MODEL.MNC.CLS_JOINT False``). Per layer:

* ``alive``: the fraction of its units that are positive for at least one RoI (a unit that is
  never positive passes nothing and, being zero for every input, gets no gradient: dead);
* ``active``: the mean fraction of units positive per RoI.

With ``max_score`` (the highest detection score over those tiles): a classifier whose joint
layer is mostly dead outputs nearly the same logits for every RoI, the class prior, and no
score reaches the configs' 0.5 threshold.

    python -m bench.diagnose_units --variants mnc5_8band_native_small_anchors_conv_mask \
        --settings default --model-seeds 0 1 2 > bench/results/diagnose_units.json
    python -m bench.diagnose_units ... --add-to earlier.json   # runs accumulate

Prints one JSON object (logs on stderr).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
from pathlib import Path

import mnc_d2

mnc_d2.setup()
import torch  # noqa: E402

from mnc_d2.engine.trainer import Trainer  # noqa: E402
from mnc_d2.modeling.checkpoint import build_checkpointer  # noqa: E402

from . import bench_accuracy as acc  # noqa: E402

LAYERS = ("fc_box", "fc_masked", "fc_joint")
logger = logging.getLogger("diagnose_units")


@torch.no_grad()
def unit_activity(cfg, weights: str, names: list[str], tiles: int) -> dict:
    """Per classifier layer, ``alive`` and ``active`` over the RoIs of the first ``tiles`` test
    tiles (module docstring), and the highest detection score."""
    model = Trainer.build_model(cfg)
    build_checkpointer(cfg, model).load(weights)
    model.eval()
    seen: dict[str, list[torch.Tensor]] = {}
    hooks = []
    for index, head in enumerate(model.roi_heads.cls_heads):
        for layer in LAYERS:
            module = getattr(head, layer, None)
            if module is not None:
                key = f"cls_heads.{index}.{layer}"
                hooks.append(module.register_forward_hook(
                    lambda mod, inp, out, key=key: seen.setdefault(key, []).append(out > 0)))
    max_score, done = 0.0, 0
    for name in names:
        for inputs in Trainer.build_test_loader(cfg, name):
            for out in model(inputs):
                scores = out["instances"].scores
                max_score = max(max_score, float(scores.max()) if len(scores) else 0.0)
            done += len(inputs)
            if done >= tiles:
                break
        if done >= tiles:
            break
    for hook in hooks:
        hook.remove()
    layers = {}
    for key, parts in seen.items():
        positive = torch.cat(parts)  # (RoIs, units)
        layers[key] = {"units": positive.shape[1], "rois": positive.shape[0],
                       "alive": round(float(positive.any(0).float().mean()), 3),
                       "active": round(float(positive.float().mean()), 4)}
    return {"tiles": done, "max_score": round(max_score, 4), "layers": layers}


def diagnose_run(name: str, seed: int, setting: str, work: Path, iters: int, images: int,
                 tiles: int) -> dict:
    out_dir, cfg, test_root, product = acc.cached_run(name, seed, setting, work, iters, images)
    names, _ = acc.benchmark_datasets(test_root, product)
    return unit_activity(cfg, str(out_dir / "model_final.pth"), names, tiles)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", required=True, choices=list(acc.VARIANTS))
    parser.add_argument("--settings", nargs="+", default=["default"],
                        choices=["default", "hard"])
    parser.add_argument("--model-seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--iters", type=int, default=600)
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--tiles", type=int, default=8, help="test tiles per run")
    parser.add_argument("--work", default=".cache/bench/accuracy")
    parser.add_argument("--add-to", metavar="REPORT.json",
                        help="an earlier report whose runs this one keeps (same key: replaced)")
    args = parser.parse_args()
    logging.basicConfig(stream=sys.stderr, level=logging.INFO)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    work = Path(args.work).resolve()
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
              "iterations": args.iters, "tiles": args.tiles, "runs": {}}
    if args.add_to:
        earlier = json.loads(Path(args.add_to).read_text())
        if (earlier.get("iterations"), earlier.get("tiles")) != (args.iters, args.tiles):
            raise SystemExit(f"{args.add_to} has iterations {earlier.get('iterations')} and "
                             f"tiles {earlier.get('tiles')}; pass the same --iters and --tiles")
        report["runs"].update(earlier["runs"])
    for setting in args.settings:
        for name in args.variants:
            for seed in args.model_seeds:
                key = f"{name}/{setting}/seed{seed}"
                report["runs"][key] = diagnose_run(name, seed, setting, work, args.iters,
                                                   args.images, args.tiles)
                logger.info("%s: %s", key, report["runs"][key])
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
