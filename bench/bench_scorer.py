#!/usr/bin/env python
"""Scorer speed: mnc_d2's vectorised SpaceNet scorer vs solaris 0.4.0, side by side.

Builds a synthetic truth/proposal CSV pair (default 2,000 tiles x ~60 buildings, ~117k
proposals), times mnc_d2 on it (median of --repeats runs), then times both scorers on the same
subset of --solaris-tiles tiles (solaris needs minutes per few hundred tiles) and checks that they
give identical per-image TP/FP/FN. Prints one JSON object.

    python bench/bench_scorer.py [--tiles 2000] [--solaris-tiles 100] [--repeats 3]
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import shapely
from shapely import affinity
from shapely.geometry import box

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mnc_d2.evaluation.spacenet_metric import score_csv  # noqa: E402

CITIES = ("AOI_2_Vegas", "AOI_3_Paris", "AOI_4_Shanghai", "AOI_5_Khartoum")


def make_pair(tiles: int, per_tile: int, seed: int, out: Path) -> tuple[Path, Path, int]:
    """Write truth.csv and proposals.csv; returns their paths and the proposal count."""
    rng = np.random.default_rng(seed)
    truth_rows, prop_rows = [], []
    for t in range(tiles):
        image_id = f"{CITIES[t % 4]}_img{t}"
        n = int(rng.integers(per_tile // 2, per_tile * 3 // 2 + 1))
        if n == 0 or t % 97 == 0:
            truth_rows.append((image_id, -1, "POLYGON EMPTY", "POLYGON EMPTY"))
            n = 0
        cols = int(np.ceil(np.sqrt(max(n, 1))))
        cell = 650 / cols
        for b in range(n):
            cx, cy = (b % cols + 0.5) * cell, (b // cols + 0.5) * cell
            w, h = rng.uniform(4, cell * 0.8, size=2)
            poly = affinity.rotate(box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2),
                                   rng.uniform(0, 90), origin="centroid")
            truth_rows.append((image_id, b, shapely.to_wkt(poly, 2), "POLYGON EMPTY"))
            if rng.random() < 0.85:  # detected, with localisation error
                jitter = affinity.translate(affinity.scale(poly, *rng.uniform(0.8, 1.2, 2)),
                                            *rng.normal(0, w * 0.08, 2))
                prop_rows.append((image_id, b, shapely.to_wkt(jitter, 2), rng.random()))
        for f in range(int(rng.poisson(per_tile * 0.12))):  # false positives
            x, y = rng.uniform(0, 640, 2)
            prop_rows.append((image_id, 1000 + f, shapely.to_wkt(box(x, y, x + 9, y + 7), 2),
                              rng.random()))
    truth, props = out / "truth.csv", out / "proposals.csv"
    with truth.open("w", newline="") as f:
        csv.writer(f).writerows([("ImageId", "BuildingId", "PolygonWKT_Pix", "PolygonWKT_Geo"),
                                 *truth_rows])
    with props.open("w", newline="") as f:
        csv.writer(f).writerows([("ImageId", "BuildingId", "PolygonWKT_Pix", "Confidence"),
                                 *prop_rows])
    return truth, props, len(prop_rows)


def subset(path: Path, tiles: int, out: Path) -> Path:
    keep = {f"{CITIES[t % 4]}_img{t}" for t in range(tiles)}
    lines = path.read_text().splitlines(keepends=True)
    out.write_text(lines[0] + "".join(l for l in lines[1:] if l.split(",", 1)[0] in keep))
    return out


def time_ours(truth: Path, props: Path, rules: str, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = score_csv(truth, props, rules=rules)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=2000)
    parser.add_argument("--per-tile", type=int, default=60)
    parser.add_argument("--solaris-tiles", type=int, default=100,
                        help="tiles scored by both (0 skips solaris)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    report = {"machine": f"{platform.processor() or platform.machine()}, "
                         f"{__import__('os').cpu_count()} CPUs", "tiles": args.tiles}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        truth, props, n_props = make_pair(args.tiles, args.per_tile, args.seed, tmp)
        report["proposals"] = n_props
        t_full, res = time_ours(truth, props, "spacenet", args.repeats)
        report["mnc_d2_full_s_median"] = round(t_full, 3)
        report["mnc_d2_full_f1"] = round(res.overall.f1, 4)
        t_sol_rules, _ = time_ours(truth, props, "solaris", args.repeats)
        report["mnc_d2_full_solaris_rules_s_median"] = round(t_sol_rules, 3)
        if args.solaris_tiles:
            solaris_eval = load_solaris()
            st, sp = subset(truth, args.solaris_tiles, tmp / "t_sub.csv"), subset(
                props, args.solaris_tiles, tmp / "p_sub.csv")
            ours_t, ours = time_ours(st, sp, "solaris", args.repeats)
            start = time.perf_counter()
            rows = solaris_per_image(solaris_eval, st, sp)
            sol_t = time.perf_counter() - start
            theirs = {r["imageID"]: (int(r["TruePos"]), int(r["FalsePos"]), int(r["FalseNeg"]))
                      for r in rows}
            mine = {r.ImageId: (int(r.tp), int(r.fp), int(r.fn))
                    for r in ours.per_image.itertuples()}
            report.update({
                "subset_tiles": args.solaris_tiles,
                "subset_proposals": sum(1 for _ in sp.open()) - 1,
                "subset_mnc_d2_s_median": round(ours_t, 3),
                "subset_solaris_0.4.0_s": round(sol_t, 3),
                "subset_speedup_vs_solaris": round(sol_t / ours_t, 1),
                "subset_identical_per_image_counts": theirs == mine,
            })
    print(json.dumps(report, indent=2))


def load_solaris():
    from solaris_ref import load_solaris_challenges

    return load_solaris_challenges()


def solaris_per_image(challenges, truth: Path, props: Path) -> list[dict]:
    """The per-image part of solaris' ``spacenet_buildings_2``, with its exact calls.

    Its per-city aggregation (``float(Series)``) fails on pandas >= 3; the per-image counts it
    sums are what we compare, so we stop before it.
    """
    evaluator = challenges.Evaluator(ground_truth_vector_file=str(truth))
    evaluator.load_proposal(str(props), conf_field_list=["Confidence"], proposalCSV=True)
    return evaluator.eval_iou_spacenet_csv(miniou=0.5, iou_field_prefix="iou_score",
                                           imageIDField="ImageId", min_area=20)


if __name__ == "__main__":
    main()
