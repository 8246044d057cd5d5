#!/usr/bin/env python
"""Polygon shape of two models on the same buildings: a paired comparison.

Section 1's shape tables (bench_accuracy's ``shape``) average each model over the truth
buildings *it* matched. A model that finds more of the hard buildings (small, concave, dark) is
averaged over harder shapes, so those means can hide a difference in shape quality or invent
one. Here two variants of one bench_accuracy report are compared building by building: for each
model seed, the truth buildings that both variants' seed-``s`` models matched (the SpaceNet
matching, each at its config's threshold, or with ``--thresholds best`` at the best threshold of
its sweep, where calibration does not count) get the shape metrics of
:mod:`mnc_d2.evaluation.polygon_metrics` from both, and the report gives, per slice of the truth
(all, small, concave, dark, other; the flags of bench_accuracy), the paired means, their
difference (first variant minus second) with a 95% bootstrap interval over the buildings, and
the share of buildings where the first variant's polygon is the better one. A seed with fewer
than ``--min-pairs`` common buildings in a slice (a model that kept almost no detection at its
threshold) stays in the per-seed part but not in that slice's summary.

Nothing is predicted again: the polygons are the ones the report's evaluation wrote
(``RUN/bench_eval_<benchmark>/*/spacenet_proposals.csv``, every detection down to 0.05). The
script re-scores them and stops, naming the run, when the counts differ from the report's (the
run was evaluated again later or retrained). An evaluation with --test-opts writes its own
folder (``bench_eval_<benchmark>_<KEY>-<VALUE>``), read for a report made with them.

``--regularize MIN_EDGE`` compares the polygons of the rectilinear option instead
(``TEST.SPACENET.REGULARIZE True``, ``TEST.SPACENET.REGULARIZE_MIN_EDGE MIN_EDGE``): the written
polygons, already simplified as the option's are, go through the same function
(:func:`mnc_d2.geometry.regularize_rectilinear`) and are scored again. An approximation of
evaluating with the option: for a mask of several parts the evaluator keeps the largest part
after regularising, here before (the two differ only if regularising changes which is largest).

    python -m bench.bench_paired_shape --report .cache/bench/accuracy/report_60img_600it.json \\
        --pair mnc5 mask_rcnn > bench/results/paired_shape_default.json

Models of one seed number are compared by default. ``--seed-pairs 0:0 1:1 2:3`` pairs A's seed 2
with B's seed 3 instead (the seeds are independent draws, so any one-to-one pairing is as fair;
used when one of B's seeds did not train and a further seed stands in for it); such a run is
keyed ``"2:3"`` in the output.

Prints one JSON object on stdout (logs go to stderr).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import shapely

from . import bench_accuracy as acc  # first: it sets mnc_d2 up before detectron2 is used
from mnc_d2.evaluation.polygon_metrics import matched_pair_metrics
from mnc_d2.evaluation.spacenet_metric import score
from mnc_d2.geometry import regularize_rectilinear

logger = logging.getLogger("bench.paired_shape")

# vertex_error: |vertices of the prediction - of the truth|, the count C-IoU weighs the IoU by
METRICS = ("iou", "ciou", "vertex_error", "polis", "mta", "boundary_f")
LOWER_IS_BETTER = frozenset({"vertex_error", "polis", "mta"})
SLICES = ("all", "small", "concave", "dark", "other")
BOOTSTRAP = 2000


def slice_table(test_root: Path, truth: pd.DataFrame) -> pd.DataFrame:
    """(len(truth), 4) booleans small/concave/dark/other per truth row (bench_accuracy's flags,
    from the generator's Building_Attributes CSV)."""
    attrs = acc.slice_flags(test_root / "spacenet")
    flags = truth[["ImageId", "BuildingId"]].merge(
        attrs[["ImageId", "BuildingId", "small", "concave", "dark"]],
        on=["ImageId", "BuildingId"], how="left")
    flags = flags[["small", "concave", "dark"]].fillna(False).astype(bool)
    flags["other"] = ~flags.any(axis=1)
    return flags.reset_index(drop=True)


def read_proposals(run_dir: Path, test_root: Path, cities: list[str],
                   test_opts=()) -> pd.DataFrame:
    """Every detection the run's evaluation on ``test_root`` (with ``test_opts``, the report's
    inference overrides) wrote, cities in scoring order."""
    eval_dir = acc.eval_dir(run_dir, test_root, test_opts)
    frames = []
    for city in cities:
        found = sorted(eval_dir.glob(f"_bench_{test_root.name}_{city}_*/spacenet_proposals.csv"))
        if len(found) != 1:
            raise SystemExit(f"{eval_dir}: expected one spacenet_proposals.csv for {city}, found "
                             f"{len(found)}; evaluate the run with bench_accuracy first")
        frames.append(pd.read_csv(found[0]))
    prop = pd.concat(frames, ignore_index=True)
    prop["geometry"] = shapely.from_wkt(prop["PolygonWKT_Pix"].to_numpy())
    return prop


def run_threshold(run: dict, source: str, override: float | None = None):
    """(score threshold, the report's (TP, FP, FN) there or None) of one run: its config's
    threshold (``source`` "config") or the best of its sweep ("best"); ``override``: that
    threshold instead, nothing to check."""
    if override is not None:
        return override, None
    if source == "best":
        best = run["best_threshold"]
        return best["threshold"], (best["TP"], best["FP"], best["FN"])
    return run["score_thresh"], tuple(run["overall"][k] for k in ("tp", "fp", "fn"))


def matched_by_truth(run: dict, name: str, seed: str, test_root: Path, cities: list[str],
                     truth: pd.DataFrame, thresholds: str = "config",
                     score_thresh: float | None = None,
                     regularize: float | None = None, test_opts=()) -> pd.DataFrame:
    """Shape metrics of one run's matched pairs, indexed by the truth row each pair matched.

    At the threshold of :func:`run_threshold` (``thresholds``, ``score_thresh``); a report
    threshold's counts must equal the report's (else SystemExit naming the run).
    ``regularize``: min edge (px) of the rectilinear regularisation applied to the kept
    polygons, which are then scored again (None: as written). ``test_opts``: the report's
    inference overrides (which evaluation's proposals to read)."""
    run_dir = Path(run["run_dir"])
    prop = read_proposals(run_dir, test_root, cities, test_opts)
    thresh, want = run_threshold(run, thresholds, score_thresh)
    kept = prop[prop.Confidence >= thresh].reset_index(drop=True)
    result = score(truth, kept)
    if want is not None:
        got = (result.overall.tp, result.overall.fp, result.overall.fn)
        if got != tuple(want):
            raise SystemExit(f"{name} seed {seed} ({run_dir}): its proposals on disk score "
                             f"TP/FP/FN {got} at {thresh}, the report says {tuple(want)}; the "
                             "run was evaluated again or retrained since. Run bench_accuracy "
                             "on it (with the report's --test-opts) and pass that report")
    if regularize is not None:
        kept["geometry"] = [regularize_rectilinear(g, min_edge=regularize)
                            if g is not None and g.geom_type == "Polygon" else g
                            for g in kept.geometry]
        result = score(truth, kept)
    frame, _ = matched_pair_metrics(result, truth, kept, metres_per_unit=acc.GSD_M)
    frame.index = result.proposal_match[result.proposal_match >= 0]
    return frame[list(METRICS)]


def paired_stats(a: pd.Series, b: pd.Series, lower_is_better: bool,
                 rng: np.random.Generator, draws: int = BOOTSTRAP) -> dict:
    """Means of ``a`` and ``b`` (the same buildings, index-aligned, no NaN), the mean difference
    a - b with its 95% bootstrap interval over buildings, and the share where ``a`` is better
    (ties counted half)."""
    diff = (a - b).to_numpy(dtype=float)
    n = len(diff)
    if n == 0:
        return {"n": 0}
    means = diff[rng.integers(0, n, size=(draws, n))].mean(axis=1)
    better = (diff < 0) if lower_is_better else (diff > 0)
    return {"n": n, "a": round(float(a.mean()), 4), "b": round(float(b.mean()), 4),
            "diff": round(float(diff.mean()), 4),
            "diff_ci95": [round(float(np.percentile(means, 2.5)), 4),
                          round(float(np.percentile(means, 97.5)), 4)],
            "a_better_share": round(float(better.mean() + 0.5 * (diff == 0).mean()), 4)}


def compare(frame_a: pd.DataFrame, frame_b: pd.DataFrame, flags: pd.DataFrame,
            seed: int = 0) -> dict:
    """Per slice and metric, :func:`paired_stats` over the truth rows both frames matched.

    ``frame_a``/``frame_b``: :data:`METRICS` columns indexed by truth row; ``flags``: the slice
    booleans of every truth row (:func:`slice_table`)."""
    rng = np.random.default_rng(seed)
    common = frame_a.index.intersection(frame_b.index)
    a, b = frame_a.loc[common], frame_b.loc[common]
    out = {"pairs_a": int(len(frame_a)), "pairs_b": int(len(frame_b)),
           "common": int(len(common)), "slices": {}}
    for name in SLICES:
        rows = common if name == "all" else common[flags.loc[common, name].to_numpy()]
        out["slices"][name] = {}
        for metric in METRICS:
            ok = a.loc[rows, metric].notna() & b.loc[rows, metric].notna()
            keep = rows[ok.to_numpy()]
            out["slices"][name][metric] = paired_stats(a.loc[keep, metric], b.loc[keep, metric],
                                                       metric in LOWER_IS_BETTER, rng)
    return out


def summarize(runs: dict, min_pairs: int = 1) -> dict:
    """Per slice and metric, over the seeds with at least ``min_pairs`` common buildings in the
    slice: spreads of both paired means and of the difference, and whether every such seed's
    interval lies on one side of 0 (``separated``: "a", "b" or None for the variant that is
    better on every seed)."""
    out = {}
    for name in SLICES:
        out[name] = {}
        for metric in METRICS:
            stats = [r["slices"][name][metric] for r in runs.values()
                     if r["slices"][name][metric]["n"] >= max(min_pairs, 1)]
            if not stats:
                continue
            lows = [s["diff_ci95"][0] for s in stats]
            highs = [s["diff_ci95"][1] for s in stats]
            a_wins = all(h < 0 for h in highs) if metric in LOWER_IS_BETTER \
                else all(lo > 0 for lo in lows)
            b_wins = all(lo > 0 for lo in lows) if metric in LOWER_IS_BETTER \
                else all(h < 0 for h in highs)
            out[name][metric] = {"a": acc._spread([s["a"] for s in stats]),
                                 "b": acc._spread([s["b"] for s in stats]),
                                 "diff": acc._spread([s["diff"] for s in stats]),
                                 "pairs": acc._spread([s["n"] for s in stats]),
                                 "separated": "a" if a_wins else ("b" if b_wins else None)}
    return out


def seed_pairs(report: dict, a_name: str, b_name: str, requested: list[str] | None,
               source: str) -> list[tuple[str, str]]:
    """[(A's seed, B's seed), ...]: ``requested`` ("A_SEED:B_SEED" strings, each seed used once)
    or, when None, every seed both variants have with its own number. SystemExit naming the
    report and the offending entry when a seed is missing, repeated or malformed."""
    if requested is None:
        seeds = sorted(set(report["runs"][a_name]) & set(report["runs"][b_name]), key=int)
        if not seeds:
            raise SystemExit(f"{source}: {a_name} and {b_name} share no model seed; pair them "
                             "with --seed-pairs A_SEED:B_SEED")
        return [(s, s) for s in seeds]
    pairs = []
    for entry in requested:
        parts = entry.split(":")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise SystemExit(f"--seed-pairs {entry!r}: write A_SEED:B_SEED, e.g. 2:3")
        seed_a, seed_b = (str(int(p)) for p in parts)
        for name, seed in ((a_name, seed_a), (b_name, seed_b)):
            if seed not in report["runs"][name]:
                raise SystemExit(f"{source}: {name} has no seed {seed} (--seed-pairs {entry!r}); "
                                 f"it has {sorted(report['runs'][name], key=int)}")
        pairs.append((seed_a, seed_b))
    for side, name in ((0, a_name), (1, b_name)):
        used = [p[side] for p in pairs]
        if len(set(used)) != len(used):
            raise SystemExit(f"--seed-pairs {' '.join(requested)}: {name}'s seeds repeat "
                             f"({used}); each model enters one pair")
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", required=True,
                        help="a bench_accuracy report (JSON) whose runs' evaluations are on disk")
    parser.add_argument("--pair", nargs=2, required=True, metavar=("A", "B"),
                        help="the two variants; differences are A - B")
    parser.add_argument("--work", help="bench_accuracy's --work (default: from the runs' paths)")
    parser.add_argument("--test-seed", type=int, default=1, help="bench_accuracy's --test-seed")
    parser.add_argument("--thresholds", choices=["config", "best"], default="config",
                        help="each run's config threshold or the best of its sweep (where "
                             "calibration does not count); checked against the report's counts")
    parser.add_argument("--score-thresh", type=float,
                        help="one threshold for both instead (nothing checked)")
    parser.add_argument("--min-pairs", type=int, default=30,
                        help="a seed enters a slice's summary with at least this many common "
                             "buildings in the slice (every seed stays in the per-run part)")
    parser.add_argument("--seed-pairs", nargs="+", metavar="A_SEED:B_SEED",
                        help="which seed of A meets which seed of B (default: the seeds both "
                             "have, each with its own number)")
    parser.add_argument("--regularize", type=float, metavar="MIN_EDGE",
                        help="compare the rectilinear option's polygons (regularised with this "
                             "min edge in px) instead of the written ones")
    args = parser.parse_args()
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")
    report = json.loads(Path(args.report).read_text())
    a_name, b_name = args.pair
    for name in args.pair:
        if name not in report["runs"]:
            raise SystemExit(f"{args.report}: no runs of {name!r}; it has {sorted(report['runs'])}")
    pairs = seed_pairs(report, a_name, b_name, args.seed_pairs, args.report)
    first = report["runs"][a_name][pairs[0][0]]
    work = Path(args.work) if args.work else Path(first["run_dir"]).parents[2]
    test_setting = report.get("test_setting", report["setting"])
    test_root = acc.data_dir(work, "test", args.test_seed, report["test_images_per_city"],
                             test_setting)
    cities, truth = acc.benchmark_truth(test_root)
    flags = slice_table(test_root, truth)
    out = {"source_report": str(args.report), "setting": report["setting"],
           "test_setting": test_setting, "iterations": report["iterations"],
           "test_opts": report.get("test_opts", []), "pair": [a_name, b_name],
           "thresholds": args.thresholds, "score_thresh": args.score_thresh,
           "min_pairs": args.min_pairs,
           "regularize_min_edge": args.regularize,
           "metres_per_pixel": acc.GSD_M, "bootstrap_draws": BOOTSTRAP,
           "slice_truth_counts": {s: int(flags[s].sum()) for s in SLICES[1:]},
           "runs": {}, "summary": {}}
    for seed_a, seed_b in pairs:
        chosen = {a_name: seed_a, b_name: seed_b}
        key = seed_a if seed_a == seed_b else f"{seed_a}:{seed_b}"
        frames = [matched_by_truth(report["runs"][n][chosen[n]], n, chosen[n], test_root, cities,
                                   truth, args.thresholds, args.score_thresh, args.regularize,
                                   out["test_opts"])
                  for n in args.pair]
        # the bootstrap draws seeded by A's seed, as before pairs could differ (each A seed
        # enters one pair)
        run = compare(*frames, flags, seed=int(seed_a))
        # the report's scores (of the polygons as written, at each run's threshold)
        run["seeds"] = chosen
        run["counts"] = {n: report["runs"][n][chosen[n]]["overall"] for n in args.pair}
        run["mean_city_f1"] = {n: report["runs"][n][chosen[n]]["mean_city_f1"]
                               for n in args.pair}
        run["thresholds"] = {n: run_threshold(report["runs"][n][chosen[n]], args.thresholds,
                                              args.score_thresh)[0] for n in args.pair}
        out["runs"][key] = run
        logger.info("seeds %s: %d pairs of %s, %d of %s, %d common", key, run["pairs_a"],
                    a_name, run["pairs_b"], b_name, run["common"])
    out["summary"] = summarize(out["runs"], args.min_pairs)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
