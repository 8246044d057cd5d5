#!/usr/bin/env python
"""What test-time augmentation costs per tile: each pass set against one pass, paired.

Loads a trained run (``RUN/config.yaml``, ``RUN/model_final.pth``) once per pass set as
predict.py's torch backend does (:class:`mnc_d2.inference.eager.EagerModel`, which wraps the model
in :class:`mnc_d2.modeling.tta.MNCWithTTA` when ``TEST.AUG.ENABLED``), reads ``--count`` tiles,
and times every tile through every pass set back to back (the sets' order rotating from tile
to tile, ``--rounds`` rounds, one warm-up call per set first). Prints one JSON object: per pass
set its passes, seconds per tile (median and quartiles) and the ratio of its time to the
one-pass time on the same tile (median and quartiles over the pairs), which is what a user
pays for the set; the per-pass ratio tells whether the pooled voting adds to the passes'
forward time.

The pass sets are BENCHMARKS.md section 1i's (the `bench/run_all.sh` overrides):

    python -m bench.bench_tta --run output/demo \\
        --tiles 'datasets/synthetic/spacenet/*/RGB-PanSharpen/*.tif' [--count 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import platform
import statistics
import time
from pathlib import Path

# name -> KEY VALUE overrides of section 1i (``off``: the plain model, the baseline)
PASS_SETS = {
    "off": ("TEST.AUG.ENABLED", "False"),
    "flip": ("TEST.AUG.ENABLED", "True", "TEST.AUG.MIN_SIZES", "()", "TEST.AUG.FLIP", "True",
             "TEST.AUG.ROT90", "False"),
    "d4": ("TEST.AUG.ENABLED", "True", "TEST.AUG.MIN_SIZES", "()", "TEST.AUG.FLIP", "True",
           "TEST.AUG.ROT90", "True"),
    "scales": ("TEST.AUG.ENABLED", "True", "TEST.AUG.MIN_SIZES", "(416,555)",
               "TEST.AUG.FLIP", "False", "TEST.AUG.ROT90", "False"),
}
logger = logging.getLogger("bench_tta")


def quartiles(values: list[float], digits: int) -> dict:
    """Median and quartiles (inclusive method) of ``values``, rounded."""
    if len(values) < 2:
        raise ValueError(f"need at least 2 values for quartiles, got {len(values)}")
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return {"median": round(q2, digits), "q1": round(q1, digits), "q3": round(q3, digits)}


def paired_times(models: dict, tiles: list, rounds: int) -> dict:
    """Seconds of each model (name -> fn(list of tiles) -> outputs) on each tile: ``rounds``
    rounds over ``tiles``, every tile through every model back to back, the models' order
    rotated by one from tile to tile so none always runs first. Returns name -> list of
    (seconds, outputs' length) in the same tile order for every model (the pairs)."""
    names = list(models)
    for name in names:
        models[name](tiles[:1])  # warm-up
    out = {name: [] for name in names}
    turn = 0
    for r in range(rounds):
        for tile in tiles:
            order = names[turn % len(names):] + names[:turn % len(names)]
            turn += 1
            for name in order:
                began = time.perf_counter()
                found = models[name]([tile])[0]
                out[name].append((time.perf_counter() - began, len(found)))
        logger.info("round %d of %d done", r + 1, rounds)
    return out


def summarise(times: dict, passes: dict, base: str = "off") -> dict:
    """Per pass set: passes, s/tile quartiles, ratio to ``base`` on the same tile (quartiles),
    that ratio divided by the passes (median), buildings per tile (median)."""
    rows = {}
    for name, pairs in times.items():
        seconds = [s for s, _ in pairs]
        ratios = [s / b for (s, _), (b, _) in zip(pairs, times[base])]
        rows[name] = {"passes": passes[name], "s_per_tile": quartiles(seconds, 4),
                      "ratio_to_one_pass": quartiles(ratios, 3),
                      "ratio_per_pass_median": round(statistics.median(ratios) / passes[name], 3),
                      "buildings_per_tile_median": statistics.median(n for _, n in pairs)}
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, type=Path,
                        help="training output folder (config.yaml, model_final.pth)")
    parser.add_argument("--tiles", required=True, help="glob of GeoTIFF tiles (sorted)")
    parser.add_argument("--count", type=int, default=10, help="tiles timed (the first, sorted)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sets", nargs="+", choices=list(PASS_SETS), default=list(PASS_SETS))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--label", default="", help="what the model is, for the report")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import torch

    from bench.bench_demo import cpu_model
    from bench.bench_export import _cfg, _read_tiles
    from mnc_d2.data.bands import input_bands
    from mnc_d2.inference.eager import EagerModel

    if "off" not in args.sets:
        parser.error("--sets must include off (the one-pass baseline of the ratios)")
    paths = sorted(glob.glob(args.tiles))[: args.count]
    if len(paths) < 2:
        parser.error(f"--tiles {args.tiles!r}: {len(paths)} file(s); at least 2 are needed")
    for name in ("config.yaml", "model_final.pth"):
        if not (args.run / name).is_file():
            parser.error(f"--run {args.run}: no {name} (a finished training run's folder)")
    torch.set_num_threads(args.threads)
    models, passes = {}, {}
    for name in args.sets:
        model = EagerModel(_cfg(args.run, *PASS_SETS[name]))
        models[name] = model
        passes[name] = getattr(model.model, "num_passes", 1)
    cfg = _cfg(args.run)
    tiles = _read_tiles(paths, input_bands(cfg), cfg.MODEL.PIXEL_MEAN)
    times = paired_times(models, tiles, args.rounds)
    print(json.dumps({
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU", "cpu": cpu_model(),
        "threads": args.threads, "torch": torch.__version__, "label": args.label,
        "run": str(args.run), "tiles": [Path(p).name for p in paths],
        "tile_px": list(tiles[0].shape[:2]), "input_px": cfg.INPUT.MIN_SIZE_TEST,
        "rounds": args.rounds, "pairs_per_set": len(paths) * args.rounds,
        "overrides": {name: " ".join(PASS_SETS[name]) for name in args.sets},
        "sets": summarise(times, passes)}, indent=1))


if __name__ == "__main__":
    main()
