#!/usr/bin/env python
"""Markdown tables for README.md and BENCHMARKS.md from the JSON reports of bench/run_all.sh.

Reports committed under bench/results/ are rendered into the docs' marked sections by
``python -m bench.render_docs`` (:func:`section_renderers`: section ``bench:<report name>`` for
each report, ``bench:readme`` for README.md's accuracy summary); the test suite checks the docs
hold exactly that. This script prints every table of a results folder:

    python -m bench.tables [--results bench/results]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

CITY_NAMES = {"AOI_2_Vegas": "Vegas", "AOI_3_Paris": "Paris", "AOI_4_Shanghai": "Shanghai",
              "AOI_5_Khartoum": "Khartoum"}
# the benchmark truth's slices (bench_accuracy's recall_slices keys), in table order
SLICES = ("small", "concave", "dark", "other")
# the transfer goal: each slice's recall on the other setting within this of its home value
TRANSFER_TOLERANCE = 0.15


def _no_detection(run: dict) -> bool:
    """A run that kept no detection at the threshold (its scores all under it)."""
    return run["overall"]["tp"] + run["overall"]["fp"] == 0


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(header: list[str], rows: list[list]) -> list[str]:
    return [_row(header), _row(["---"] * len(header)), *(_row(r) for r in rows)]


def _spread(entry: dict, digits: int = 3) -> str:
    """'mean ± std (min-max)' of a bench_accuracy summary entry."""
    if entry["n"] == 1:
        return f"{entry['mean']:.{digits}f} (1 seed)"
    return (f"{entry['mean']:.{digits}f} ± {entry['std']:.{digits}f} "
            f"({entry['min']:.{digits}f}-{entry['max']:.{digits}f})")


def _test_opts(report: dict) -> str:
    """' (inference: KEY VALUE, ...)' for a report evaluated with --test-opts, else ''."""
    opts = report.get("test_opts") or []
    pairs = [f"{k.rsplit('.', 1)[1]} {v}" for k, v in zip(opts[0::2], opts[1::2])]
    return f" (inference: {', '.join(pairs)})" if pairs else ""


def _setting(report: dict, bold: bool = False) -> str:
    """'default', or 'default -> hard' for a model scored on another setting's benchmark."""
    b = "**" if bold else ""
    train, test = report["setting"], report.get("test_setting", report["setting"])
    if test == train:
        return f"Setting {b}{train}{b}" if bold else train
    return (f"Trained on {b}{train}{b}, scored on {b}{test}{b}" if bold
            else f"{train} -> {test}")


def accuracy_tables(report: dict) -> list[str]:
    """Per-variant spread over seeds, then every run, of one bench_accuracy report."""
    runs, summary = report["runs"], report["summary"]
    first = next(iter(next(iter(runs.values())).values()))
    lines = [f"{_setting(report, bold=True)}{_test_opts(report)}: {report['iterations']} "
             f"iterations, {report['train_images_per_city']} training tiles per city, benchmark "
             f"{report['test_images_per_city']} tiles per city (another generator seed); slice "
             "sizes (benchmark truth): " + ", ".join(
                 f"{k} {v}" for k, v in first["slice_counts"].items())
             + ". Mean ± sample std (min-max) over model seeds.", ""]
    slices = [k[len("recall_"):] for k in next(iter(summary.values())) if k.startswith("recall_")]
    header = ["variant", "seeds", "mean city F1 at the config's threshold",
              "mean city F1 at the best threshold", "best threshold", "score ECE",
              *(f"recall {s}" for s in slices)]
    rows = [[name, e["mean_city_f1"]["n"], _spread(e["mean_city_f1"]),
             _spread(e["best_threshold_mean_city_f1"]), _spread(e["best_threshold"], 2),
             _spread(e["ECE"]), *(f"{e['recall_' + s]['mean']:.3f}" for s in slices)]
            for name, e in summary.items()]
    lines += _table(header, rows) + [""]
    shaped = {name: e for name, e in summary.items() if "shape_ciou" in e}
    if shaped:
        lines += ["Shape of the matched pairs (`mnc_d2.evaluation.polygon_metrics`, metres at "
                  "0.3 m per pixel; mean ± sample std (min-max) over the seeds that kept "
                  "detections at the threshold):", ""]
        extra = [("ciou_concave", "C-IoU concave", 3), ("mta_concave", "MTA deg concave", 1),
                 ("hole_recall_all", "hole recall", 3)]
        extra = [x for x in extra if any(f"shape_{x[0]}" in e for e in shaped.values())]
        lines += _table(["variant", "seeds", "mean IoU", "C-IoU", "N-ratio", "PoLiS m",
                         "max tangent angle error deg", "boundary F (1 m)",
                         *(title for _, title, _ in extra)],
                        [[name, e["shape_iou"]["n"],
                          *(_spread(e[f"shape_{k}"], 3 if k not in ("mta",) else 1)
                            for k in ("iou", "ciou", "n_ratio", "polis", "mta",
                                      "boundary_f")),
                          *(_spread(e[f"shape_{k}"], d) if f"shape_{k}" in e else "n/a"
                            for k, _, d in extra)] for name, e in shaped.items()])
        lines += [""]
    header = ["variant", "seed", "mean city F1", "overall P", "overall R", "TP / FP / FN",
              "best threshold (mean city F1)", "ECE", *(f"recall {s}" for s in slices),
              "training wall s"]
    rows = []
    for name, by_seed in runs.items():
        for seed, v in sorted(by_seed.items(), key=lambda kv: int(kv[0])):
            o, best = v["overall"], v["best_threshold"]
            rows.append([name, seed, f"{v['mean_city_f1']:.3f}", f"{o['precision']:.3f}",
                         f"{o['recall']:.3f}", f"{o['tp']} / {o['fp']} / {o['fn']}",
                         f"{best['threshold']:.2f} ({best['mean_city_F1']:.3f})",
                         f"{v['calibration']['ECE']:.3f}",
                         *(f"{v['recall_slices'].get(s, float('nan')):.3f}" for s in slices),
                         "n/a" if v["train_wall_s"] is None else f"{v['train_wall_s']:.0f}"])
    lines += _table(header, rows)
    return lines


def speed_tables(report: dict) -> list[str]:
    models = report["models"]
    sizes = sorted({k.rsplit("_", 1)[1] for m in models.values() for k in m
                    if k.startswith("infer_s_per_tile_median_") and k.endswith("px")},
                   key=lambda s: int(s[:-2]))
    bases = {m.get("baseline", "mask_rcnn") for m in models.values()}
    vs = "x Mask R-CNN" if all(b.startswith("mask_rcnn") for b in bases) else "x baseline"
    at_config = any("infer_s_per_tile_median_at_config_size" in m for m in models.values())
    header = ["model", "train s/iter (median)", vs,
              *(x for s in sizes for x in (f"infer s/tile at {s} (median)", vs)),
              *(["infer s/tile at the config's size", vs] if at_config else []),
              "peak RSS MB", "params M (ROI heads)", "weights",
              *(["baseline"] if vs == "x baseline" else [])]
    kept_col = all("kept_per_tile_median_by_size" in m for m in models.values())
    if kept_col:
        header.insert(header.index("peak RSS MB"), "kept per tile (median)" if len(sizes) < 2
                      else f"kept per tile (median; {', '.join(sizes)})")
    rows = []

    def cell(m: dict, ratio: dict, key: str) -> list[str]:
        if key not in m:
            return ["-", "-"]
        r = ratio.get(key.replace("_median", ""))
        return [f"{m[key]:.3f}", "-" if r is None else f"{r:.2f}"]

    for name, m in models.items():
        ratio = m.get("ratio_vs_baseline", m.get("ratio_vs_mask_rcnn", {}))
        row = [name, *cell(m, ratio, "train_s_per_iter_median")]
        for s in sizes:
            row += cell(m, ratio, f"infer_s_per_tile_median_{s}")
        if at_config:
            row += cell(m, ratio, "infer_s_per_tile_median_at_config_size")
        params = (f"{m['params_m']:.1f} ({m['roi_head_params_m']:.1f})" if "params_m" in m
                  else "n/a")
        if kept_col:
            row.append(" / ".join(f"{k:g}" for k in m["kept_per_tile_median_by_size"].values()))
        rows.append(row + [f"{m['peak_rss_mb_max']:.0f}", params,
                           "random init" if m["weights"] == "random init" else "trained",
                           *([m.get("baseline", "")] if vs == "x baseline" else [])])
    lines = [f"{report['rounds']} rounds x {report['timed_train_steps_per_round']} timed training "
             f"steps (batch {next(iter(models.values()))['ims_per_batch']}) and "
             f"{report['timed_tiles_per_round']} timed tiles per model; torch threads "
             f"{report['torch_threads']}"
             + (f"; trained models of seed {report['trained_seed']}" if "trained_seed" in report
                and any(m["weights"] != "random init" for m in models.values()) else "")
             + (f"; {report['cpu']}" if report.get("cpu") else "")
             + (f"; every model keeps {report['fixed_detections']} instances per tile (no score "
                "threshold), a stand-in for trained weights" if report.get("fixed_detections")
                else ""), ""]
    lines += _table(header, rows) + [""]
    p = report["polygonize"]
    rows = [[label.replace("_", " + "), f"{p[label]['median_s']:.3f}",
             f"{p[label]['masks_per_s']:.0f}"]
            for label in p if isinstance(p[label], dict)]
    lines += [f"Polygonization of {p['masks']} full-frame {p['mask_shape'][0]} x "
              f"{p['mask_shape'][1]} px instance masks (median of 3):", ""]
    lines += _table(["mask -> polygon", "seconds", "masks/s"], rows)
    return lines


def scorer_table(report: dict) -> list[str]:
    """bench_scorer.py: whole-process times against the Java tester and solaris, agreement."""
    def agree(d: dict) -> str:
        return ("identical" if d["identical"] else
                f"{d['images_differing']} images / {d['tp_differing']} TP differ") + \
            f" ({d['images']} images, {d['tp_reference']:,} TP)"

    rows = []
    for run in report["runs"]:
        hostile = sum(run["hostile"].values()) if isinstance(run["hostile"], dict) else 0
        name = (f"{run['tiles']:,} tiles, {run['proposals']:,} proposals "
                f"({hostile} awkward polygons)")
        ours = f"{run['mnc_d2_spacenet_s']} s"
        if "java_tester_s" in run:
            rows.append([name, ours, f"{run['java_tester_s']} s (Java tester v2.0)",
                         f"{run['speedup_vs_java']}x", agree(run["vs_java"])])
        else:
            rows.append([name, ours, "tester not run", "", ""])
    sol = report.get("solaris")
    if sol:
        rows.append([f"{sol['tiles']:,} tiles, {sol['proposals']:,} proposals (clean), "
                     "solaris rules", f"{sol['mnc_d2_solaris_rules_s']} s",
                     f"{sol['solaris_0_4_0_s']} s (solaris 0.4.0)",
                     f"{sol['speedup_vs_solaris']}x", agree(sol["vs_solaris"])])
    head = [f"CPU: {report['cpu']}.", ""] if report.get("cpu") else []
    return head + _table(["input", "mnc_d2 tools/score.py", "reference", "ratio",
                          "per-image TP/FP/FN"], rows)


def predict_table(report: dict) -> list[str]:
    """bench_predict.py: per backend, the whole scene's wall time (median over rounds), peak RSS,
    buildings and throughput."""
    scene = f"{report['scene_px']:,} x {report['scene_px']:,} px, {report['bands']} bands"
    model = [report["model"]] if report.get("model") else []
    return _table(["model"] * len(model) + ["scene", "backend",
                                            f"wall s (median of {report['repeats']})",
                                            "x torch speed", "peak RSS GB", "buildings",
                                            "km2 per core-hour"],
                  [[*model, scene, r["backend"], f"{r['wall_s']:.1f}",
                    f"{r['speedup_vs_torch']:.2f}" if "speedup_vs_torch" in r else "n/a",
                    f"{r['peak_rss_gb']:.2f}", f"{r['buildings']:,}",
                    f"{r['km2_per_core_hour']:.1f}"] for r in report["runs"]])


def predict_many_table(report: dict) -> list[str]:
    """bench_predict_many.py: per engine, the whole run's wall time and scenes per second
    (medians over rounds), seconds per scene, workers and their peak RSS, buildings, statuses;
    then Ray's time over local's, paired round by round, and the engines' agreement."""
    if "model" in report:  # an exported model
        model = (f"the exported model `{Path(report['model']).name}` on "
                 f"`--backend {report['backend']}`")
    else:
        model = f"the trained run `{'/'.join(Path(report['run']).parts[-2:])}`"
    rounds = report["rounds"]
    lines = [f"{report['scenes']} synthetic scenes of {report['scene_px']} x "
             f"{report['scene_px']} px (3 bands), {model}, tools/predict.py in a "
             f"child process per engine, {rounds} rounds with the engines' order alternating; "
             f"{report['cpu']}. Ray's start-up alone (a fresh process): "
             f"{report['ray_init_s']:.1f} s.", ""]
    rows = []
    for name, runs in report["runs"].items():
        statuses = {}
        for r in runs:
            for status, count in r["statuses"].items():
                statuses[status] = statuses.get(status, 0) + count
        rows.append([f"`{' '.join(report['engines'][name])}`", runs[0]["workers"],
                     f"{report['median_wall_s'][name]:.1f}",
                     f"{statistics.median(r['scenes_per_s'] for r in runs):.2f}",
                     f"{statistics.median(r['scene_s_median'] for r in runs):.2f}",
                     f"{max(max(r['peak_rss_mb_per_worker']) for r in runs):,.0f}",
                     "/".join(f"{b:,}" for b in sorted({r["buildings"] for r in runs})),
                     ", ".join(f"{status} {count}" for status, count in sorted(statuses.items()))])
    lines += _table(["engine", "workers", f"wall s (median of {rounds})", "scenes/s",
                     "s per scene on its worker (median)", "peak RSS MB per worker (max)",
                     "buildings", f"scene statuses over the {rounds} rounds"], rows)
    ratio, agree = report["ray_vs_local_wall"], report["agreement_first_round"]
    per_round = ", ".join(f"{r:.2f}" for r in ratio["per_round"])
    if agree["scenes"]:
        agreement = (f"{agree['equal_building_counts']} of {agree['scenes']} scenes with equal "
                     f"building counts, IoU of each scene's union of polygons min "
                     f"{agree['union_iou_min']:.6f}, median {agree['union_iou_median']:.6f}")
    else:
        agreement = "no scene finished on both engines"
    lines += ["", f"Ray's wall time over local's, paired round by round: median "
              f"{ratio['median']:.2f} (rounds: {per_round}). The first round's outputs scene by "
              f"scene: {agreement}"
              + (f"; {agree['in_one_output_only']} scenes in one output only"
                 if agree["in_one_output_only"] else "") + "."]
    return lines


def polygonize_table(report: dict) -> list[str]:
    """bench_polygonize.py: per method, over the trained runs: F1, shape metrics and time."""
    n = len(report["runs"])
    lines = [f"Setting **{report['setting']}**: {n} trained models (seeds), the same masks "
             "polygonised by each method; mean ± sample std (min-max) over the models; "
             "metres at 0.3 m per pixel.", ""]

    def cell(e, key, digits=3):
        return _spread(e[key], digits) if e.get(key) else "n/a"

    spread = any("angle_spread_deg" in e for e in report["summary"].values())
    rows = [[m, cell(e, "mean_city_f1"), cell(e, "shape_ciou"), cell(e, "shape_n_ratio", 2),
             cell(e, "shape_polis", 2), cell(e, "shape_mta", 1), cell(e, "shape_boundary_f"),
             cell(e, "shape_ciou_concave"),
             *([cell(e, "angle_spread_deg", 2)] if spread else []),
             cell(e, "ms_per_1000_buildings", 0)]
            for m, e in report["summary"].items()]
    if spread and report.get("truth_angle_spread_deg") is not None:
        lines[0] += (" Neighbour angle spread: mean orientation difference of buildings at most "
                     "10 px apart and at most 10 degrees from parallel (the truth's own: "
                     f"{report['truth_angle_spread_deg']:.2f} degrees).")
    return lines + _table(["method", "mean city F1", "C-IoU", "N-ratio", "PoLiS m", "MTA deg",
                           "boundary F (1 m)", "C-IoU concave",
                           *(["neighbour angle spread deg"] if spread else []),
                           "ms per 1,000 buildings"], rows)


PAIRED_METRICS = (("iou", "IoU", 3), ("ciou", "C-IoU", 3),
                  ("vertex_error", "vertex count error", 1),
                  ("polis", "PoLiS m", 2), ("mta", "MTA deg", 1),
                  ("boundary_f", "boundary F (1 m)", 3))


def paired_shape_table(report: dict) -> list[str]:
    """bench_paired_shape.py: per slice and metric, both variants' means over the buildings both
    matched, their difference and whether every seed's interval excludes 0."""
    a, b = report["pair"]
    # keys: "S" (both models of seed S) or "SA:SB" (--seed-pairs)
    seeds = sorted(report["runs"], key=lambda k: [int(p) for p in k.split(":")])
    counts = ", ".join(f"{s}: {report['runs'][s]['common']} of {report['runs'][s]['pairs_a']} / "
                       f"{report['runs'][s]['pairs_b']}" for s in seeds)
    paired = (" or pair of seeds, A's:B's" if any(":" in s for s in seeds) else "")
    reg = report.get("regularize_min_edge")
    polygons = ("the polygons as the configs write them" if reg is None else
                f"the rectilinear option's polygons (TEST.SPACENET.REGULARIZE, min edge {reg:g} "
                "px, applied to the written polygons)")
    where = {"config": "their configs' thresholds",
             "best": "the best threshold of each model's sweep"}[report.get("thresholds", "config")]
    if report.get("score_thresh") is not None:
        where = f"score {report['score_thresh']:g}"
    lines = [f"{_setting(report, bold=True)}{_test_opts(report)}, {report['iterations']} "
             f"iterations, {polygons}: "
             f"**{a}** (A) against **{b}** (B) on the truth buildings both matched at {where}, "
             f"{len(seeds)} model seeds (per seed{paired}, buildings both matched of A's / B's "
             f"matched: {counts}; a seed enters a row with at least "
             f"{report.get('min_pairs', 1)} common buildings in its slice). Mean ± sample std "
             "(min-max) over those seeds of each model's mean over the common buildings and of "
             "the difference A - B; metres at "
             f"{report['metres_per_pixel']} m per pixel. Separated: A (or B) is better on every "
             f"seed with the 95% bootstrap interval of the difference ({report['bootstrap_draws']}"
             " draws over the buildings) excluding 0; '-' otherwise.", ""]
    rows = []
    for slice_name, metrics in report["summary"].items():
        for key, label, digits in PAIRED_METRICS:
            e = metrics.get(key)
            if e is None:
                continue
            sep = {"a": f"A ({a})", "b": f"B ({b})"}.get(e["separated"], "-")
            rows.append([slice_name, label, e["pairs"]["n"], f"{e['pairs']['mean']:.0f}",
                         _spread(e["a"], digits), _spread(e["b"], digits),
                         _spread(e["diff"], digits), sep])
    return lines + _table(["slice", "metric", "seeds", "buildings per seed", "A", "B", "A - B",
                           "separated"], rows)


def demo_table(report: dict) -> list[str]:
    """bench_demo.py reports (one per kernel set): wall time, s/iteration, memory, scores."""
    runs = report["runs"] if "runs" in report else [report]
    return _table(["machine", "kernels", "make demo wall min", "train s/iter (median)",
                   "peak RSS GB", "held-out mean city F1", "TP / FP / FN",
                   "best threshold (F1)", "score ECE"],
                  [[r["machine"], r["isa"], f"{r['wall_min']:.1f}",
                    f"{r['train_s_per_iter_median']:.2f}", f"{r['peak_rss_gb']:.2f}",
                    f"{r['score']:.3f}", f"{r['tp']} / {r['fp']} / {r['fn']}",
                    f"{r['best_threshold']:.2f} ({r['best_threshold_score']:.3f})",
                    f"{r['ECE']:.3f}"] for r in runs])


def diagnose_table(results: Path) -> list[str]:
    """bench/diagnose_scores.py's JSON lines (diagnose.jsonl) as a table."""
    rows = [json.loads(line) for line in (results / "diagnose.jsonl").read_text().splitlines()
            if line.strip()]
    return _table(["variant (one change)", "mean city F1 at 0.5", "best threshold",
                   "mean city F1 there", "ECE", "last loss_cls3"],
                  [[r["variant"], f"{r['mean_city_f1_at_0.5']:.3f}", f"{r['best_threshold']:.2f}",
                    f"{r['best_mean_city_f1']:.3f}", f"{r['ECE']:.3f}",
                    f"{r['loss_cls3_last']:.3f}"] for r in rows])


def readme_table(results: Path) -> list[str]:
    """The short table of README.md: per data setting and variant, mean city F1 and the slice
    recalls over seeds, and the shape of the matched polygons (the in-setting reports
    accuracy_default.json and accuracy_hard.json)."""
    rows = []
    for setting in ("default", "hard"):
        path = results / f"accuracy_{setting}.json"
        if not path.exists():
            continue
        report = json.loads(path.read_text())
        for name, e in report["summary"].items():
            rows.append([_setting(report), name, _spread(e["mean_city_f1"]),
                         *(f"{e['recall_' + s]['mean']:.3f} ± {e['recall_' + s]['std']:.3f}"
                           if f"recall_{s}" in e else "n/a"
                           for s in SLICES),
                         *(f"{e['shape_' + k]['mean']:.{d}f}" if f"shape_{k}" in e else "n/a"
                           for k, d in (("ciou", 3), ("mta", 1)))])
    return _table(["data", "variant", "mean city F1 at the threshold (mean ± std (min-max))",
                   "recall small", "recall concave", "recall dark", "recall other", "C-IoU",
                   "MTA deg"], rows)


def viewer_table(report: dict) -> list[str]:
    """bench_viewer.py: per city size, site build time, load times, bytes and frame times (a
    page not drawn within the script's limit: that limit, the rest blank)."""
    close = any("zoom17_frame_ms_median" in r for r in report["runs"])
    slide = any("slider_ms" in r for r in report["runs"])

    def cells(r: dict) -> list[str]:
        if "idle_limit_s" in r:  # never drawn: nothing after the first render was measured
            first = "-" if r.get("first_render_s") is None else f"{r['first_render_s']:.2f}"
            return [first, f"not within {r['idle_limit_s']}", "-", *(["-", "-"] if slide else []),
                    "-", *(["-", "-"] if close else [])]
        return [f"{r['first_render_s']:.2f}", f"{r['idle_s']:.2f}", f"{r['bytes'] / 1e6:.1f}",
                *([f"{r['density_cells_drawn']:,}",
                   f"{sorted(r['slider_ms'])[len(r['slider_ms']) // 2]:.0f}"] if slide else []),
                f"{r['frame_ms_median']:.0f} / {r['frame_ms_p90']:.0f}",
                *([f"{r['zoom17_buildings_drawn']:,}",
                   f"{r['zoom17_frame_ms_median']:.0f} / {r['zoom17_frame_ms_p90']:.0f}"]
                  if close else [])]

    def table(runs: list[dict]) -> list[str]:
        return _table(["scenes", "buildings", "footprints", "site build s", "first render s",
                       "all drawn s", "MB transferred",
                       *(["density cells drawn", "slider to drawn ms (median of 3)"] if slide
                         else []),
                       "frame ms when panning (median / p90)",
                       *(["zoom 17: buildings drawn", "frame ms (median / p90)"] if close
                         else [])],
                      [[f"{r['scenes']:,}", f"{r['buildings']:,}",
                        r.get("footprints", "geojson") + (" + truth" if r.get("truth") else ""),
                        f"{r['build_s']:.1f}", *cells(r)] for r in runs])

    lines = table(report["runs"])
    earlier = report.get("earlier_runs")
    if earlier:  # the same command on an earlier version, for what a change bought
        lines += ["", f"Earlier: {earlier['note']}.", "", *table(earlier["runs"])]
    return lines


def diagnose_slices_table(report: dict) -> list[str]:
    """bench/diagnose_slices.py: per variant, setting and slice, the fraction of truth buildings
    that survive each stage (mean over seeds, with the seeds' range for the last two)."""
    stages = [("rpn", "RPN box IoU >= 0.5"), ("rpn_07", "RPN box IoU >= 0.7"),
              ("detected", "detected at score >= 0.05"), ("found", "found at the threshold"),
              ("poor_mask", "best polygon IoU 0.3-0.5"),
              ("median_best_score", "median score of its best detection")]
    rows = []
    for key, by_slice in report["summary"].items():
        variant, setting = key.split("/")
        for flag, e in by_slice.items():
            n = next(iter(report["runs"][key].values()))["slices"][flag]["n"]
            rows.append([setting, variant, f"{flag.replace('_', ', ')} ({n})",
                         *(f"{e[k]['mean']:.3f}" if k in ("rpn", "rpn_07", "poor_mask",
                                                         "median_best_score")
                           else f"{e[k]['mean']:.3f} ({e[k]['min']:.2f}-{e[k]['max']:.2f})"
                           for k, _ in stages)])
    return _table(["data", "variant", "slice (truth buildings)", *(t for _, t in stages)], rows)


def cascade_shortcut_table(report: dict) -> list[str]:
    """bench/select_cascade_shortcut.py: each run's mean city F1 (TP / FP) on its own training
    tiles per value of the shortcut, its change from no shortcut, and the value chosen."""
    values = [str(v) for v in report["candidates"]]
    lines = [f"`{report['key']}` on {report['data']} ({report['iterations']} iterations): mean "
             "city F1 (TP / FP) without the shortcut (0) and its change at each value; chosen: "
             f"the smallest value costing no run more than {report['tolerance']} -> "
             f"**{report['chosen']}**" + (" (none qualifies: no shortcut)."
                                          if not report["chosen"] else "."), ""]
    rows = []
    for run, by_value in report["runs"].items():
        off = by_value["0"]
        rows.append([run, f"{off['mean_city_f1']:.4f} ({off['tp']} / {off['fp']})",
                     *(f"{by_value[v]['mean_city_f1'] - off['mean_city_f1']:+.4f} "
                       f"({by_value[v]['tp']} / {by_value[v]['fp']})" for v in values)])
    return lines + _table(["run", "0 (no shortcut)", *values], rows)


def diagnose_units_table(report: dict) -> list[str]:
    """bench/diagnose_units.py: per run, the highest detection score and each classifier fc
    layer's alive fraction (mean active fraction per RoI)."""
    rows = []
    for key, run in report["runs"].items():
        variant, setting, seed = key.split("/")
        cells = []
        for layer in ("fc_box", "fc_masked", "fc_joint"):
            found = [v for k, v in run["layers"].items() if k.endswith(f".{layer}")]
            cells.append(f"{found[0]['alive']:.2f} ({found[0]['active']:.3f})" if found
                         else "none")
        rows.append([setting, variant, seed.replace("seed", ""), f"{run['max_score']:.3f}",
                     *cells])
    return _table(["data", "variant", "seed", "max score", "fc_box alive (active)",
                   "fc_masked alive (active)", "fc_joint alive (active)"], rows)


def transfer_table(results: Path) -> list[str]:
    """Per variant and slice: recall on the other setting's benchmark next to the recall on the
    training setting's own (accuracy_<train>_on_<test>[_<tag>].json vs accuracy_<train>.json);
    a cross report scored with --test-opts names them in its rows (the home side is the model
    with its config's inference). Test-time augmentation reports
    (accuracy_<train>_tta_<name>_scored_<test>.json, one pass left out) are compared with the
    same pass set at home (accuracy_<train>_tta_<name>.json): a recipe run everywhere."""
    pairs = []  # (cross report, home report, label suffix)
    for path in sorted(results.glob("accuracy_*_on_*.json")):
        # the same models scored on their own benchmark: the report named without "_on_<test>"
        home_path = results / f"{path.stem.split('_on_')[0]}.json"
        if home_path.exists():
            cross = json.loads(path.read_text())
            pairs.append((cross, json.loads(home_path.read_text()), _test_opts(cross)))
    for path in sorted(results.glob("accuracy_*_tta_*_scored_*.json")):
        stem = path.stem.rsplit("_scored_", 1)[0]
        name = stem.split("_tta_", 1)[1]
        home_path = results / f"{stem}.json"
        if name != "off" and home_path.exists():
            pairs.append((json.loads(path.read_text()), json.loads(home_path.read_text()),
                          f" (test-time augmentation: {TTA_NAMES.get(name, name)}, at home too)"))
    schedules = {cross.get("iterations") for cross, _, _ in pairs}
    rows = []
    for cross, home_report, suffix in pairs:
        home = home_report["summary"]
        for name, e in cross["summary"].items():
            if name not in home:
                continue
            cells = []
            for s in SLICES:
                key = f"recall_{s}"
                if key in e and key in home[name]:
                    a, b = home[name][key]["mean"], e[key]["mean"]
                    cells.append(f"{a:.3f} -> {b:.3f} ({b - a:+.3f})")
                else:
                    cells.append("n/a")
            label = (f"{name} ({cross['iterations']:,} iterations)" if len(schedules) > 1
                     else name) + suffix
            n = e["mean_city_f1"].get("n", 3)
            if n < 3:  # fewer seeds than a claim needs: the row says how many
                label += f" ({n} seed{'s' if n > 1 else ''})"
            # a seed whose scores all stayed under the threshold (no detection kept) counts
            # as zero recall in the means: the row names it so the means are read for what
            # they are
            empty = sorted({seed for report in (home_report, cross)
                            for seed, run in report.get("runs", {}).get(name, {}).items()
                            if _no_detection(run)}, key=int)
            if empty:
                label += (f" (seed{'s' if len(empty) > 1 else ''} {', '.join(empty)}: no "
                          "detection kept at the threshold, zeros in the means)")
            rows.append([_setting(cross), label, f"{home[name]['mean_city_f1']['mean']:.3f} -> "
                         f"{e['mean_city_f1']['mean']:.3f}", *cells])
    return _table(["trained -> scored", "variant", "mean city F1 (own -> other benchmark)",
                   "recall small", "recall concave", "recall dark", "recall other"], rows)


# README's "Choosing a configuration" table: the 2,400-iteration recipes a user can take, each
# with the R-50 config (configs/SpaceNet2/) that sets the same levers as the R-18 benchmark
# variant. Order: how the README reads them.
RECIPES = {
    "mnc5_8band_native_small_anchors": "mnc_R_50_FPN_3x_all_8band_small_anchors.yaml",
    "mnc5_native_small_anchors_logdn":
        "mnc_R_50_FPN_3x_all_small_anchors.yaml + `INPUT.DN_TRANSFORM log`",
    "mnc5_native_small_anchors_logdn_copypaste":
        "mnc_R_50_FPN_3x_all_small_anchors_logdn_copypaste.yaml",
    "mnc5_native_small_anchors_logdn_copypaste_conv_mask":
        "mnc_R_50_FPN_3x_all_small_anchors_logdn_copypaste_conv_mask.yaml",
    "mask_rcnn_native_small_anchors_logdn": "(baseline: Mask R-CNN, the same levers)",
    "mask_rcnn_native_small_anchors_logdn_copypaste": "(baseline: Mask R-CNN, the same levers)",
}


def _range(values: list[float], digits: int = 3) -> str:
    """'min-max' over seeds, or the one value."""
    lo, hi = min(values), max(values)
    return f"{lo:.{digits}f}" if len(values) == 1 or f"{lo:.{digits}f}" == f"{hi:.{digits}f}" \
        else f"{lo:.{digits}f}-{hi:.{digits}f}"


def recipes_table(results: Path, iterations: int = 2400, recipes: dict = RECIPES) -> list[str]:
    """Per training setting and recipe of ``recipes`` (variant -> config): the home benchmark's
    mean city F1 and slice recalls (min-max over seeds), the shape of the matched polygons, and
    on the other setting's benchmark (nothing retrained) F1 and each slice's recall lost, seed by
    seed (accuracy_<train>_<N>it.json and accuracy_<train>_<N>it_on_<other>.json, the default
    inference). A seed that kept no detection at the threshold is left out of every column and
    counted in the seeds column; a recipe with fewer than three seeds says it is too few for a
    claim."""
    rows = []
    for train, other in (("default", "hard"), ("hard", "default")):
        home_path = results / f"accuracy_{train}_{iterations}it.json"
        cross_path = results / f"accuracy_{train}_{iterations}it_on_{other}.json"
        if not home_path.exists():
            continue
        home = json.loads(home_path.read_text())["runs"]
        cross = json.loads(cross_path.read_text())["runs"] if cross_path.exists() else {}
        for name, config in recipes.items():
            runs = {s: r for s, r in home.get(name, {}).items() if not _no_detection(r)}
            if not runs:
                continue
            empty = len(home[name]) - len(runs)
            seeds = f"{len(runs)}" + (f" (+{empty} with no detection)" if empty else "")
            if len(home[name]) < 3:  # fewer seeds than a claim needs: the cell says so
                seeds += " (too few for a claim)"
            cells = [_range([r["mean_city_f1"] for r in runs.values()])]
            cells += [_range([r["recall_slices"][s] for r in runs.values()]) for s in SLICES[:3]]
            shapes = [r["shape"]["all"] for r in runs.values() if r.get("shape")]
            cells += [_range([x["ciou"] for x in shapes]) if shapes else "n/a",
                      _range([x["mta"] for x in shapes], 1) if shapes else "n/a"]
            paired = [(runs[s], cross[name][s]) for s in runs if s in cross.get(name, {})]
            if paired:
                drops = [{k: c["recall_slices"][k] - h["recall_slices"][k] for k in SLICES}
                         for h, c in paired]
                mean_drop = {k: sum(d[k] for d in drops) / len(drops) for k in SLICES}
                worst = min(SLICES, key=lambda k: mean_drop[k])
                within = sum(round(min(d.values()), 6) >= -TRANSFER_TOLERANCE  # no float edge
                             for d in drops)
                cells += [_range([c["mean_city_f1"] for _, c in paired]),
                          f"{mean_drop['dark']:+.3f}",
                          f"{mean_drop[worst]:+.3f} ({worst})", f"{within} of {len(paired)}"]
            else:
                cells += ["n/a"] * 4
            rows.append([train, f"`{name}`", config, seeds, *cells])
    return _table(["trained on", "variant (R-18 benchmark)", "config (R-50, configs/SpaceNet2/)",
                   "seeds", "mean city F1", "recall small", "recall concave", "recall dark",
                   "C-IoU", "MTA deg", "on the other setting: mean city F1",
                   "dark-roof recall change (mean)", "worst slice change (mean)",
                   f"seeds with every slice within {TRANSFER_TOLERANCE:g}"], rows)


# Test-time augmentation reports (accuracy_<setting>_tta_<name>[_scored_<other>].json): the
# same models without it ("off", evaluated again beside the others) and with each pass set.
TTA_NAMES = {"off": "one pass", "d4": "8 flips and turns", "scales": "2 scales",
             "scales_max": "2 scales, best pass's score"}


def _tta_value(run: dict, key: str):
    """One number of a bench_accuracy run: ``fp`` (false positives), ``recall_<slice>`` or a
    top-level key such as ``mean_city_f1``."""
    if key == "fp":
        return run["overall"]["fp"]
    if key.startswith("recall_"):
        return run["recall_slices"][key[len("recall_"):]]
    return run[key]


def tta_table(results: Path) -> list[str]:
    """Per benchmark and pass set: mean city F1, each slice's recall and the false positives
    over seeds (mean ± std) and the change from one pass on the same models and seeds (mean,
    min to max)."""
    import statistics

    rows = []
    offs = {p: json.loads(p.read_text()) for p in sorted(results.glob("accuracy_*_tta_off*.json"))}
    schedules = {off.get("iterations") for off in offs.values()}
    for off_path, off in offs.items():
        for name, label in TTA_NAMES.items():
            path = off_path.with_name(off_path.name.replace("_tta_off", f"_tta_{name}"))
            if not path.exists():
                continue
            report = json.loads(path.read_text())
            for variant, runs in report["runs"].items():
                base = off["runs"].get(variant, {})
                seeds = sorted(set(runs) & set(base), key=int)
                cells = []
                for key in ("mean_city_f1", "recall_small", "recall_concave", "recall_dark",
                            "fp"):
                    values = [_tta_value(runs[s], key) for s in seeds]
                    delta = [v - _tta_value(base[s], key) for v, s in zip(values, seeds)]
                    digits = 0 if key == "fp" else 3
                    one = len(seeds) == 1  # the passes cell says "1 seed": no spread to give
                    cell = f"{values[0]:.{digits}f}" if one else _mean_std(values, digits)
                    if name != "off":
                        cell += (f" ({delta[0]:+.{digits}f})" if one else
                                 f" ({statistics.mean(delta):+.{digits}f}, "
                                 f"{min(delta):+.{digits}f} to {max(delta):+.{digits}f})")
                    cells.append(cell)
                count = f"{len(seeds)} seed" + ("s" if len(seeds) > 1 else "")
                name_cell = (f"{variant} ({report['iterations']:,} iterations)"
                             if len(schedules) > 1 else variant)
                rows.append([_setting(report), name_cell, f"{label} ({count})", *cells])
    return _table(["trained -> scored", "variant", "passes", "mean city F1",
                   "recall small", "recall concave", "recall dark", "false positives"], rows)


def tta_time_table(report: dict) -> list[str]:
    """bench_tta.py: per pass set, seconds per tile and its ratio to one pass on the same tile
    (median and quartiles over the pairs), that ratio per pass, buildings per tile."""
    sets = report["sets"]
    head = (f"{report['label'] or report['run']}: {len(report['tiles'])} tiles of "
            f"{report['tile_px'][0]} px (input {report['input_px']} px) x {report['rounds']} "
            f"rounds = {report['pairs_per_set']} pairs a row, {report['threads']} threads of "
            f"{report['cpu']}, torch {report['torch']}.")
    rows = []
    for name, row in sets.items():
        s, r = row["s_per_tile"], row["ratio_to_one_pass"]
        rows.append([f"{TTA_TIME_NAMES.get(name, name)} (`{name}`)", row["passes"],
                     f"{s['median']:.3f} ({s['q1']:.3f}-{s['q3']:.3f})",
                     f"{r['median']:.2f} ({r['q1']:.2f}-{r['q3']:.2f})",
                     f"{row['ratio_per_pass_median']:.2f}", row["buildings_per_tile_median"]])
    return [head, ""] + _table(["pass set", "passes", "s / tile (quartiles)",
                                "/ one pass, same tile (quartiles)", "per pass",
                                "buildings / tile"], rows)


TTA_TIME_NAMES = {"off": "one pass", "flip": "horizontal flip", "d4": "8 flips and turns",
                  "scales": "2 scales (416, 555 px)"}


RESULTS = Path(__file__).resolve().parent / "results"


def _mean_std(values: list[float], digits: int = 3) -> str:
    import statistics

    if len(values) == 1:
        return f"{values[0]:.{digits}f} (1 seed)"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _threads_of(report: dict) -> str:
    """"N threads of CPU" of a bench_export report."""
    threads = report["threads"]
    return f"{threads} thread{'s' if threads != 1 else ''}" + (
        f" of {report['cpu']}" if report.get("cpu") else "")


def _peak_source(mm: dict) -> str:
    """Where a report's float32 peak comes from (its "matmul_gflops")."""
    return ("the faster float32 matmul of "
            + ", ".join(f"{k} {v}" for k, v in mm.items() if k != "by_size")
            + (" (each the best of n x n matmuls, n = "
               + ", ".join(next(iter(mm["by_size"].values()))) + ")"
               if mm.get("by_size") else " (2048 x 2048)"))


def export_tables(report: dict) -> list[str]:
    """bench_export.py: accuracy per backend, speed per tile, FLOPs and peak, a large scene."""
    backends = ["torch", "onnxruntime", "openvino", "torchscript"]
    lines = []
    for setting in sorted({r["setting"] for r in report.get("accuracy", [])}):
        rows = [r for r in report["accuracy"] if r["setting"] == setting]
        body = []
        for b in backends:
            f1 = [r[b]["mean_city_f1"] for r in rows]
            diff = [abs(r[b]["mean_city_f1"] - r["torch"]["mean_city_f1"]) for r in rows]
            same = sum((r[b]["tp"], r[b]["fp"], r[b]["fn"]) ==
                       (r["torch"]["tp"], r["torch"]["fp"], r["torch"]["fn"]) for r in rows)
            wall = [r[b]["predict_wall_s"] for r in rows]
            ratio = [r["torch"]["predict_wall_s"] / r[b]["predict_wall_s"] for r in rows]
            body.append([b if b != "torch" else "torch (eager Detectron2)", _mean_std(f1),
                         f"{max(diff):.4f}", f"{same} of {len(rows)}",
                         f"{sum(wall) / len(wall):.1f}", f"{min(ratio):.2f}-{max(ratio):.2f}x"])
        lines += [f"Setting **{setting}**: {len(rows)} trained models (seeds "
                  f"{', '.join(str(r['seed']) for r in rows)}), {rows[0]['torch']['tiles']} "
                  "held-out tiles each (one scene per tile), predicted by tools/predict.py "
                  "in-process on each backend and scored with the SpaceNet metric; the wall time "
                  "covers loading the model, reading, the model, polygons and writing.", ""]
        lines += _table(["backend", "mean city F1 (mean ± std over seeds)",
                         "largest F1 difference from eager", "runs with TP/FP/FN equal to eager",
                         "predict.py wall s (mean)", "x eager (range)"], body) + [""]
    speed = report.get("speed")
    if speed:
        peak, mm = report.get("peak_gflops"), report.get("matmul_gflops", {})
        rows = []
        for name, e in speed.items():
            rows.append([name, f"{e['s_per_tile_median']:.3f}",
                         f"{e['speedup_vs_eager']:.2f}x" if "speedup_vs_eager" in e else "",
                         f"{e['ratio_vs_mask_rcnn_same_backend']:.2f}"
                         if "ratio_vs_mask_rcnn_same_backend" in e else "",
                         f"{e['achieved_gflops']:.0f}" if "achieved_gflops" in e else "",
                         f"{100 * e['fraction_of_peak']:.0f}%" if "fraction_of_peak" in e
                         else "",
                         f"{1 / e['fraction_of_peak']:.2f}x" if "fraction_of_peak" in e
                         and name.endswith("/ torch") else ""])
        lines += [f"Seconds per 650 x 650 px tile (pixels to pasted masks), median of "
                  f"{next(iter(speed.values()))['n']} timings per row (tiles x rounds, rounds in "
                  f"alternating order), {_threads_of(report)}; peak = {peak} GFLOP/s, "
                  f"{_peak_source(mm)}. The last column, on the eager rows: eager's time over "
                  "the time the model's counted FLOPs take at that peak, i.e. how much faster "
                  "than eager a float32 graph would be that ran every counted FLOP at the peak "
                  "and spent no time on anything else (a bound in practice, not a hard one: "
                  "the peak is the best of a few matmul sizes).", ""]
        lines += _table(["model / backend", "s per tile", "x eager",
                         "MNC / Mask R-CNN (same backend, input)",
                         "GFLOP/s", "of peak", "x eager at the peak"], rows) + [""]
    dets = report.get("detections_per_tile")
    if dets:
        lines += ["Detections per timed tile (median over the "
                  f"{next(iter(dets.values()))['tiles']} tiles, onnxruntime): all the graph keeps "
                  "(the heads' and pasting's work grows with them) and those at the config's "
                  "polygon threshold:", ""]
        lines += _table(["model, input", "kept", "at the threshold"],
                        [[k, f"{v['kept']:g}", f"{v['at_threshold']:g} (>= {v['threshold']:g})"]
                         for k, v in dets.items()]) + [""]
    r50 = report.get("speed_r50_random_init")
    if r50:
        lines += ["R-50-FPN SpaceNet 2 MNC config (650 px input), random initialisation (it "
                  "detects nothing: heads and pasting cost less than with trained weights):", ""]
        lines += _table(["backend", "s per tile", "x eager"],
                        [[b, f"{e['s_per_tile_median']:.3f}", f"{e['speedup_vs_eager']:.2f}x"]
                         for b, e in r50.items()]) + [""]
    fl = report.get("flops")
    if fl:
        parts = list(next(iter(fl.values()))["gflops_by_part"])
        lines += ["GFLOPs per tile (fvcore's count of the exported graph, a multiply-add = 2 "
                  "FLOPs; grid sampling, NMS and element-wise operators are not counted):", ""]
        lines += _table(["model, input px", "total", *parts],
                        [[k, f"{v['gflops']:.2f}", *(f"{v['gflops_by_part'][p]:.2f}"
                                                     for p in parts)]
                         for k, v in fl.items()]) + [""]
        mm = report.get("matmul_gflops", {})
        if not speed and report.get("peak_gflops") and mm.get("by_size"):
            # the speed table's caption states the peak; without it, this sentence does
            lines += [f"Float32 peak of this run: {report['peak_gflops']} GFLOP/s, "
                      f"{_peak_source(mm)}, {_threads_of(report)}.", ""]
    lines += _int8_tables(report.get("int8") or {})
    paired = report.get("paired_ratio")
    if paired:
        first = next(iter(paired.values()))
        # reports before the key: Python's default (exclusive) quartiles
        method = first.get("quartiles", "exclusive")
        lines += ["MNC / Mask R-CNN per tile, paired: each timed tile "
                  "through both models back to back on one backend (order alternating), the "
                  f"ratio of the two times per tile; median and quartiles ({method} method) "
                  f"over {first['n']} pairs per row.", ""]
        lines += _table(["input / backend", "MNC / Mask R-CNN (median)", "quartiles"],
                        [[k, f"{e['median']:.2f}", f"{e['q1']:.2f}-{e['q3']:.2f}"]
                         for k, e in paired.items()]) + [""]
    lines += _stage_time_tables(report.get("stage_time") or {})
    sc = report.get("scene")
    if sc:
        lines += [f"One {sc['px']:,} x {sc['px']:,} px scene (a mosaic of the test tiles, "
                  "deflate-compressed tiled GeoTIFF) through tools/predict.py's per-scene path; "
                  "seconds; read and polygons are each stage's own time (in their own threads "
                  "beside the model when pipelined, in line otherwise), 'waited' is what the "
                  "model loop waited for, 'writing and rest' the wall time no stage covers.", ""]
        rows = []
        for r in sc["runs"]:
            t = r["stages_s"]
            # what the stages do not cover: writing the outputs, opening the scene, the rest
            inline = (t.get("waiting_for_read", 0) + t.get("waiting_for_polygons", 0)
                      if r["pipelined"] else t.get("read", 0) + t.get("polygons", 0))
            rest = r["wall_s"] - t.get("model", 0) - t.get("merge", 0) - inline
            rows.append([r["backend"], "yes" if r["pipelined"] else "no", f"{r['wall_s']:.1f}",
                         f"{t.get('model', 0):.1f}", f"{t.get('read', 0):.1f}",
                         f"{t.get('polygons', 0):.1f}", f"{t.get('waiting_for_read', 0):.1f}",
                         f"{t.get('waiting_for_polygons', 0):.1f}", f"{t.get('merge', 0):.1f}",
                         f"{rest:.1f}", f"{r['buildings']:,}",
                         f"{r['km2_per_core_hour']:.1f}"])
        lines += _table(["backend", "pipelined", "wall", "model", "read", "polygons",
                         "waited for read", "waited for polygons", "merge",
                         "writing and rest", "buildings", "km2 per core-hour"], rows)
    return lines


# bench_export_pair.py's backends, in the order it runs them and its tables list them (defined
# here, where rendering the docs reads it, so that rendering imports no model code)
EXPORT_PAIR_BACKENDS = ("torch", "onnxruntime", "openvino", "onnxruntime-int8", "openvino-int8")


def export_r50_table(report: dict) -> list[str]:
    """bench_export_r50.py: the R-50 recipe's graphs (random weights, a fixed number of kept
    instances) by part, and each MNC variant against Mask R-CNN tile by tile per backend."""
    models, paired = report["models"], report["paired"]
    backends = list(next(iter(models.values()))["kept_per_tile"])
    seed = report["weights"].replace("random init", "").strip(" ()")
    lines = [f"Random weights ({seed}); every model "
             f"keeps {report['fixed_detections']} instances per tile (no score threshold), a "
             f"stand-in for trained weights; {report['tile_px']} x {report['tile_px']} px tiles; "
             f"{report['threads']} threads of {report['cpu']}. GFLOPs per tile of the export "
             "graph (fvcore's count, a multiply-add = 2 FLOPs):", ""]
    rows = []
    for name, m in models.items():
        parts = m["flops"]["gflops_by_part"]
        rows.append([name, "-" if m["mask_conv_dim"] is None else str(m["mask_conv_dim"]),
                     str(m["test_proposals"]), f"{m['flops']['gflops']:.1f}",
                     *(f"{parts[k]:.1f}" for k in ("backbone", "rpn", "roi_heads")),
                     " / ".join(f"{m['kept_per_tile'][b]:g}" for b in backends)])
    lines += _table(["model", "mask head channels", "test proposals", "GFLOPs", "backbone",
                     "rpn", "roi_heads", f"kept per tile ({' / '.join(backends)})"], rows)
    lines += ["", f"Seconds per tile, {report['tiles']} tiles x {report['rounds']} rounds per "
              "backend, each tile run by the MNC variant and by "
              f"{report['baseline']} back to back (order alternating); ratio: median of the "
              "per-tile ratios (quartiles):", ""]
    earlier = report.get("earlier_run", {}).get("paired", {})
    rows = []
    for key, row in paired.items():
        name, backend = key.rsplit(" / ", 1)
        speedup = report.get("eager_over_exported", {}).get(name, {}).get(backend)
        rows.append([name, backend, f"{row['mnc_s_median']:.3f}",
                     f"{row['mask_rcnn_s_median']:.3f}",
                     f"{row['median']:.2f} ({row['q1']:.2f}-{row['q3']:.2f})",
                     *([f"{earlier[key]['median']:.2f}" if key in earlier else "-"]
                       if earlier else []),
                     "" if speedup is None else f"{speedup:.2f}x"])
    lines += _table(["MNC variant", "backend", "MNC s/tile", "Mask R-CNN s/tile",
                     "MNC / Mask R-CNN", *(["an earlier run"] if earlier else []),
                     "MNC x eager"], rows)
    if earlier:
        lines += ["", f"The earlier run: {report['earlier_run']['note']}"]
    return lines


def _pairs_phrase(row: dict) -> str:
    """How bench_export_pair's per-tile pairs of two forms are timed, for one of its rows."""
    return ("each tile through both back to back on one backend (order alternating), the ratio "
            f"of the two times; median and quartiles ({row['quartiles']} method) over "
            f"{row['n']} pairs per row")


# the last columns of :func:`_paired_with_agreement`'s rows
AGREEMENT_COLUMNS = ("matched at mask IoU >= 0.9 / 0.5", "median matched IoU",
                     "largest score difference")


def _paired_with_agreement(entries: dict, part: str, names: tuple[str, str]) -> list[list[str]]:
    """Table rows of a bench_export_pair part that pairs two forms per tile and compares their
    detections (warps, optimisers): ``entries`` seed -> report entry; per row the seed, the
    key, the ratio's median and quartiles, each form's median seconds (``<name>_s_median``),
    and the detections matched at mask IoU 0.9 / 0.5 (``<part>_agreement``)."""
    rows = []
    for seed, e in entries.items():
        for key, w in e[part].items():
            same = e.get(f"{part}_agreement", {}).get(key, {})
            found = (f"{same['matched_iou90']} / {same['matched_iou50']} of "
                     f"{same['reference_detections']} ({same['detections']} found)"
                     if same else "")
            rows.append([seed, key, f"{w['median']:.3f}", f"{w['q1']:.3f}-{w['q3']:.3f}",
                         f"{w[names[0] + '_s_median']:.3f}", f"{w[names[1] + '_s_median']:.3f}",
                         found, f"{same.get('median_matched_iou')}",
                         f"{same.get('max_score_diff')}"])
    return rows


def _forms_table(seeds: dict, part: str, forms: str, columns: list[str],
                 names: tuple[str, str], report: dict) -> list[str]:
    """The lines of a bench_export_pair part that pairs two exports of the MNC per tile and
    matches their detections (warps, roialign): ``forms`` says what is paired against what,
    ``columns`` the ratio's, quartiles' and the two forms' seconds headers, ``names`` the two
    forms' keys (``<name>_s_median``); none when no seed has the part."""
    entries = {k: e for k, e in seeds.items() if e.get(part)}
    if not entries:
        return []
    first = next(iter(next(iter(entries.values()))[part].values()))
    lines = [f"{forms}: {_pairs_phrase(first)}; and on the same tiles the two exports' "
             "detections (all that the graphs keep), matched one to one by mask IoU, best "
             f"first, this version's export's as the reference; {_threads_of(report)}.", ""]
    return lines + _table(["seed", "input / backend", *columns, *AGREEMENT_COLUMNS],
                          _paired_with_agreement(entries, part, names)) + [""]


def export_pair_tables(report: dict) -> list[str]:
    """bench_export_pair.py: a trained MNC / Mask R-CNN pair of one recipe, exported: each
    backend's F1 against eager per test setting (over seeds), the paired per-tile ratio and
    seconds per seed, the int8 graph's head pooling paired against its round-trip form, the
    stacked-level RoI warps paired against the level-by-level ones, each onnxruntime
    session as predict.py opens it paired against one with every optimiser on, detections kept
    and FLOPs."""
    seeds = report.get("seeds", {})
    lines = []
    scored = {k: e["accuracy"] for k, e in seeds.items() if e.get("accuracy")}
    for setting in sorted({s for acc in scored.values() for s in acc},
                          key=lambda s: s != report.get("train_setting")):
        rows = {k: acc[setting] for k, acc in scored.items() if setting in acc}
        # each backend's runs, those of another warp layout than the default export's apart
        # (named with the file predict.py ran; reports before it was recorded: the default's)
        groups = {}
        for b in EXPORT_PAIR_BACKENDS:
            for r in rows.values():
                if b in r:
                    groups.setdefault((b, r[b].get("warp_layout") or "stacked"), []).append(r)
        body = []
        for (b, layout), picked in sorted(groups.items(), key=lambda g: (
                EXPORT_PAIR_BACKENDS.index(g[0][0]), g[0][1] != "stacked")):
            runs, eager = [r[b] for r in picked], [r["torch"] for r in picked]
            graph = f" ({runs[0]['graph']}, {layout} warps)" if layout != "stacked" else ""
            moved = [(r["tp"] + r["fp"]) - (e["tp"] + e["fp"]) for r, e in zip(runs, eager)]
            same = sum((r["tp"], r["fp"], r["fn"]) == (e["tp"], e["fp"], e["fn"])
                       for r, e in zip(runs, eager))
            diffs = [r["mean_city_f1"] - e["mean_city_f1"] for r, e in zip(runs, eager)]
            body.append([b + graph if b != "torch" else "torch (eager Detectron2)",
                         _mean_std([r["mean_city_f1"] for r in runs]),
                         f"{min(diffs):+.4f} to {max(diffs):+.4f}", f"{same} of {len(runs)}",
                         " / ".join(f"{r['tp']}/{r['fp']}/{r['fn']}" for r in runs),
                         f"{max(abs(m) for m in moved)}"])
        first = next(iter(rows.values()))["torch"]
        # reports from before --test-seed name no seed (theirs was the benchmark's, 1)
        drawn = (f" (drawn with generator seed {report['test_seed']})"
                 if "test_seed" in report else "")
        lines += [f"`{report['mnc']}` trained on **{report['train_setting']}** "
                  f"({report['tag']}; seeds {', '.join(rows)}), scored on **{setting}**'s "
                  f"{first['tiles']} held-out tiles{drawn} through tools/predict.py on each "
                  f"backend (int8 calibrated on {report['calibration']}):", ""]
        lines += _table(["backend", "mean city F1 (mean ± std over seeds)",
                         "F1 minus eager (range over seeds)", "runs with TP/FP/FN equal to eager",
                         "TP/FP/FN per seed", "largest TP + FP change from eager"], body) + [""]
    paired = {k: e["paired"] for k, e in seeds.items() if e.get("paired")}
    if paired:
        first = next(iter(next(iter(paired.values())).values()))
        lines += [f"MNC (`{report['mnc']}`) against Mask R-CNN (`{report['mask_rcnn']}`) of the "
                  "same seed, per tile, paired: each tile through both models back to back on "
                  "one backend (order alternating), the ratio of the two times; median and "
                  f"quartiles ({first.get('quartiles', 'exclusive')} method) over {first['n']} "
                  f"pairs per row, and each model's median seconds per tile in those pairs; "
                  f"{_threads_of(report)}.", ""]
        rows = []
        for seed, by_key in paired.items():
            eager = {k.split(" / ")[0]: e for k, e in by_key.items() if k.endswith("/ torch")}
            for key, e in by_key.items():
                base = eager.get(key.split(" / ")[0])
                speedup = (f"{base['mnc_s_median'] / e['mnc_s_median']:.2f}x"
                           if base and "mnc_s_median" in e else "")
                rows.append([seed, key, f"{e['median']:.2f}", f"{e['q1']:.2f}-{e['q3']:.2f}",
                             f"{e['mnc_s_median']:.3f}" if "mnc_s_median" in e else "",
                             f"{e['mask_rcnn_s_median']:.3f}" if "mask_rcnn_s_median" in e
                             else "", speedup])
        lines += _table(["seed", "input / backend", "MNC / Mask R-CNN (median)", "quartiles",
                         "MNC s per tile", "Mask R-CNN s per tile", "MNC x eager"],
                        rows) + [""]
        over = report.get("paired_median_over_seeds") or {}
        if over:
            lines += ["The per-seed medians of the ratio, over seeds:", ""]
            lines += _table(["input / backend", "median of the seeds' medians", "range",
                             "seeds"],
                            [[k, f"{v['median']:.2f}", f"{v['min']:.2f}-{v['max']:.2f}",
                              f"{v['seeds']}"] for k, v in over.items()]) + [""]
    pools = {k: e["pools"] for k, e in seeds.items() if e.get("pools")}
    if pools:
        first = next(iter(next(iter(pools.values())).values()))
        lines += ["The MNC's int8 graph as exported, its classification heads' max pooling "
                  "reading the float32 warped features, against the same file with that pooling "
                  "reading their quantise / dequantise round trip (as onnxruntime's quantiser "
                  "writes it; int8 exports whose export.json has no `int8.float_pool_inputs`): "
                  "each tile through both back to back on one backend (order alternating), the "
                  f"ratio of the two times; median and quartiles ({first['quartiles']} method) "
                  f"over {first['n']} pairs per row; {_threads_of(report)}.", ""]
        lines += _table(["seed", "input / backend", "float32 pooling / round trip (median)",
                         "quartiles", "float32 pooling s per tile", "round trip s per tile"],
                        [[seed, key, f"{e['median']:.3f}", f"{e['q1']:.3f}-{e['q3']:.3f}",
                          f"{e['float_pools_s_median']:.3f}",
                          f"{e['quantised_pools_s_median']:.3f}"]
                         for seed, by_key in pools.items() for key, e in by_key.items()]) + [""]
    lines += _forms_table(
        seeds, "warps", "The MNC exported by this version, each stage pair's RoI warps one grid "
        "sampling on the FPN levels stacked into one map, against the same run exported with the "
        "level-by-level warps of earlier versions (each level's boxes warped alone, the rows "
        "gathered back into box order)", ["stacked / level by level (median)", "quartiles",
                                          "stacked s per tile", "level by level s per tile"],
        ("stacked", "levels"), report)
    lines += _forms_table(
        seeds, "roialign", "The MNC exported with the RoIAlign form of the warps (each stage "
        "pair's RoI warps one RoIAlign, one sample per cell, on the stacked FPN levels with a "
        "zero border: the samples grid sampling takes; the heads in box order) against this "
        "version's export", ["RoIAlign form / this version's (median)", "quartiles",
                             "RoIAlign form s per tile", "this version's s per tile"],
        ("roialign", "stacked"), report)
    alt = {k: e for k, e in seeds.items() if e.get("roialign_paired")}
    if alt:
        lines += ["The MNC with the RoIAlign form against Mask R-CNN of the same seed, per tile, "
                  "paired in the same run:", ""]
        lines += _table(["seed", "input / backend", "MNC (RoIAlign form) / Mask R-CNN (median)",
                         "quartiles", "MNC s per tile", "Mask R-CNN s per tile"],
                        [[seed, key, f"{v['median']:.2f}", f"{v['q1']:.2f}-{v['q3']:.2f}",
                          f"{v['mnc_s_median']:.3f}", f"{v['mask_rcnn_s_median']:.3f}"]
                         for seed, e in alt.items()
                         for key, v in e["roialign_paired"].items()]) + [""]
    tuned = {k: e for k, e in seeds.items() if e.get("optimisers")}
    if tuned:
        first = next(iter(next(iter(tuned.values()))["optimisers"].values()))
        lines += ["Each model's graph in the onnxruntime session tools/predict.py opens (for "
                  "the int8 graph, without the blocked-layout `NchwcTransformer`) against the "
                  f"same graph in a session with every optimiser on: {_pairs_phrase(first)}; "
                  "and on the same tiles the two sessions' detections (all that the graph "
                  "keeps), matched one to one by mask IoU, the all-on session's as the "
                  "reference; "
                  f"{_threads_of(report)}.", ""]
        lines += _table(["seed", "input / model / backend", "predict.py's / all on (median)",
                         "quartiles", "predict.py's s per tile", "all on s per tile",
                         *AGREEMENT_COLUMNS],
                        _paired_with_agreement(tuned, "optimisers",
                                               ("predict", "all_optimisers"))) + [""]
    dets = {k: e["detections_per_tile"] for k, e in seeds.items()
            if e.get("detections_per_tile")}
    if dets:
        lines += ["Detections per timed tile (median over the tiles, onnxruntime): all the "
                  "graph keeps and those at the config's polygon threshold:", ""]
        lines += _table(["seed", "model", "kept", "at the threshold"],
                        [[seed, name, f"{v['kept']:g}",
                          f"{v['at_threshold']:g} (>= {v['threshold']:g})"]
                         for seed, d in dets.items() for name, v in d.items()]) + [""]
    fl = next((e["flops"] for e in seeds.values() if e.get("flops")), None)
    if fl:
        parts = list(next(iter(fl.values()))["gflops_by_part"])
        px = next(e["input_px"] for e in seeds.values() if e.get("flops"))
        lines += [f"GFLOPs per tile at {px} px (fvcore's count of the exported graph, a "
                  "multiply-add = 2 FLOPs; grid sampling, NMS and element-wise operators are "
                  "not counted):", ""]
        lines += _table(["model", "total", *parts],
                        [[k, f"{v['gflops']:.2f}", *(f"{v['gflops_by_part'][p]:.2f}"
                                                     for p in parts)]
                         for k, v in fl.items()]) + [""]
    if not lines:
        lines = ["No seed of this report has a trained MNC run."]
    return lines


def _int8_tables(int8: dict) -> list[str]:
    """bench_export.py's int8 parts: F1 and buildings of onnxruntime-int8 beside eager and
    float onnxruntime per setting; seconds per tile of the three side by side."""
    lines = _int8_recipe_table(int8.get("recipes"))
    acc = int8.get("accuracy") or []
    earlier = {(r["setting"], r["seed"]): r for r in int8.get("accuracy_every_layer") or []}
    for setting in sorted({r["setting"] for r in acc}):
        rows = [r for r in acc if r["setting"] == setting]
        old = [earlier.get((setting, r["seed"])) for r in rows]
        columns = [(b, b if b != "torch" else "torch (eager Detectron2)", rows)
                   for b in ("torch", "onnxruntime", "onnxruntime-int8")]
        if all(old):
            columns.append(("onnxruntime-int8", "onnxruntime-int8, every layer quantised "
                            "(the earlier recipe)", old))
        body = []
        for b, label, runs in columns:
            f1 = [r[b]["mean_city_f1"] for r in runs]
            diff = [r[b]["mean_city_f1"] - r["torch"]["mean_city_f1"] for r in runs]
            moved = [abs(r[b]["tp"] - r["torch"]["tp"]) + abs(r[b]["fp"] - r["torch"]["fp"])
                     for r in runs]
            body.append([label, _mean_std(f1), f"{min(diff):+.4f} to {max(diff):+.4f}",
                         " / ".join(f"{r[b]['tp']}/{r[b]['fp']}/{r[b]['fn']}" for r in runs),
                         f"{max(moved)}"])
        lines += [f"INT8, setting **{setting}** ({len(rows)} models, seeds "
                  f"{', '.join(str(r['seed']) for r in rows)}; {int8.get('calibration', '')}):",
                  ""]
        lines += _table(["backend", "mean city F1 (mean ± std over seeds)",
                         "F1 minus eager (range over seeds)", "TP/FP/FN per seed",
                         "largest TP + FP change from eager"], body) + [""]
    speed = int8.get("speed")
    if speed:
        lines += [f"INT8 speed: seconds per 650 x 650 px tile, median of "
                  f"{next(iter(speed.values()))['n']} timings per row (fewer for R-50), the "
                  "three backends side by side in one run:", ""]
        lines += _table(["model / backend", "s per tile", "x eager",
                         "MNC / Mask R-CNN (same backend, input)"],
                        [[name, f"{e['s_per_tile_median']:.3f}", f"{e['speedup_vs_eager']:.2f}x",
                          f"{e['ratio_vs_mask_rcnn_same_backend']:.2f}"
                          if "ratio_vs_mask_rcnn_same_backend" in e else ""]
                         for name, e in speed.items()]) + [""]
    return lines


def _int8_recipe_table(recipes: dict | None) -> list[str]:
    """bench_export.py's int8_recipes part: how closely each int8 recipe follows the float
    graph on training tiles its calibration did not use, per recipe over the models."""
    if not recipes or not recipes.get("models"):
        return []
    models = recipes["models"]
    names = list(recipes["total"])
    rows = []
    for name in names:
        total = recipes["total"][name]
        per = [m[name] for m in models]
        diffs = [p["mean_abs_score_diff"] for p in per if p["mean_abs_score_diff"] is not None]
        rows.append([name, f"{total['changed']} of {total['float_detections']:,}",
                     " / ".join(str(p["changed"]) for p in per),
                     f"{total['mean_box_iou']:.4f}" if total["mean_box_iou"] is not None
                     else "",
                     f"{sum(diffs) / len(diffs):.4f}" if diffs else ""])
    label = ", ".join(f"{m['setting']} {m['seed']}" for m in models)
    lines = [f"INT8 recipes, judged on training tiles only: each model's float graph quantised "
             f"by each recipe (calibrated on the export's {models[0]['calibration_tiles']} "
             f"training tiles), then run with the float graph on that model's other "
             f"{models[0]['tiles']} training tiles (never the calibration's or the test "
             "data's). A detection is changed when no detection of the other graph overlaps "
             "it at box IoU >= 0.5; box IoU and score difference are over the matched pairs "
             f"(mean over the models). Models ({len(models)}): {label}.", ""]
    return lines + _table(["recipe", "detections changed (all models)",
                           "changed per model", "mean box IoU to float",
                           "mean |score difference|"], rows) + [""]


def _stage_time_tables(stages: dict) -> list[str]:
    """bench_export.py's stage_time part: per model, input and backend, the profiled time of
    each group of graph parts (ms, share, fraction of peak where FLOPs are counted); then the
    heads' main operator types."""
    if not stages:
        return []
    groups = ["backbone", "rpn", "roi_heads", "selection", "other", "unattributed"]

    def cell(row: dict | None) -> str:
        if not row:
            return ""
        text = f"{row['ms']:.1f} ({100 * row['share']:.0f}%"
        if "fraction_of_peak" in row:
            text += f"; {100 * row['fraction_of_peak']:.0f}% of peak"
        return text + ")"

    first = next(iter(stages.values()))
    tiles = first["tiles"]
    if first.get("warm_up") == "discarded":
        how = f"mean over {tiles} tiles after a warm-up run whose times are discarded"
    else:  # reports written before onnxruntime's first run was dropped from its profile
        how = (f"OpenVINO: mean over {tiles} tiles after a discarded warm-up; onnxruntime: "
               f"mean over a first run and the {tiles} tiles, its profile covering the whole "
               "session")
    lines = [f"Milliseconds per tile in each part of the exported graph, as each runtime's own "
             f"profiler times its operators ({how}); "
             "in brackets the share of the profiled time and, for the parts whose FLOPs the "
             "FLOP table counts, the fraction of the float32 peak reached (float32 backends "
             "only: int8 kernels are not bound by it). roi_heads = MNC's stages 2-5 "
             "(RoI warps, mask and classifier layers) or Mask R-CNN's box and mask heads; "
             "selection = score filter, NMS, top-K and MNC's mask voting; other = resizing, "
             "normalising, boxes back to the tile; unattributed = operators the runtime "
             "inserted whose inputs no part produced. The profilers' sums run a little above "
             "the unprofiled times of the speed tables (their own overhead).", ""]
    used = [g for g in groups if any(g in e["by_group"] for e in stages.values())]
    lines += _table(["model, input / backend", "profiled ms", *used],
                    [[k, f"{e['ms_profiled']:.1f}", *(cell(e["by_group"].get(g)) for g in used)]
                     for k, e in stages.items()]) + [""]
    heads = {"stages_2_3", "stages_4_5", "box_head", "mask_head"}
    rows = []
    for key, e in stages.items():
        ops: dict[str, float] = {}
        for part, top in e["top_ops_ms_by_part"].items():
            if part in heads:
                for op, ms in top.items():
                    ops[op] = ops.get(op, 0.0) + ms
        top = sorted(ops.items(), key=lambda kv: -kv[1])[:5]
        rows.append([key, ", ".join(f"{op} {ms:.1f}" for op, ms in top)])
    lines += ["The heads' main operator types (ms per tile, summed over their parts' five "
              "costliest types):", ""]
    return lines + _table(["model, input / backend", "operators (ms)"], rows) + [""]


def gpu_tables(report: dict) -> list[str]:
    """bench_gpu.py: seconds per tile per model, input size and variant on the GPU (medians),
    ratios, FLOPs against the GPU's measured matmul rates, agreement with eager float32, and
    what did not run."""
    rates = report.get("matmul_tflops", {})
    lines = [f"GPU: {report.get('gpu', report['device'])}; torch {report['torch']}, CUDA "
             f"{report['cuda']}; {report['rounds']} rounds over {len(report['tiles'])} tiles "
             f"(batch 1, and {report['batch']} for the batch rows); measured matmul TFLOP/s: "
             + ", ".join(f"{k} {v}" for k, v in rates.items())
             + f" (convolutions may use TF32: cuDNN allow_tf32 {report['cudnn_allow_tf32']}).",
             ""]
    earlier = report.get("earlier_run", {}).get("times", {})
    rows = []
    for label, t in report["times"].items():
        if "s_per_tile_median" not in t:
            continue
        group = label.split(" / ")[0]
        model_size = " ".join(group.split(" ")[1:])  # "r18 416 px"
        flops = report["flops"].get(group, {}).get("gflops")
        ms = t["s_per_tile_median"] * 1e3
        achieved = flops / t["s_per_tile_median"] / 1e3 if flops else None
        fp32 = rates.get("fp32")
        before = earlier.get(label, {}).get("s_per_tile_median")
        partner = earlier.get(label.replace("mnc5 ", "mask_rcnn ", 1), {}).get(
            "s_per_tile_median")
        rows.append([group.split(" ")[0], model_size, label.split(" / ")[1], f"{ms:.1f}",
                     *([f"{before * 1e3:.1f}" if before else "-",
                        f"{before / partner:.2f}" if before and partner and
                        label.startswith("mnc5 ") else "-"] if earlier else []),
                     f"{t['speedup_vs_eager_fp32']:.2f}" if "speedup_vs_eager_fp32" in t else "-",
                     f"{t['ratio_vs_mask_rcnn']:.2f}" if "ratio_vs_mask_rcnn" in t else "-",
                     f"{flops:.1f}" if flops else "-",
                     f"{achieved:.2f} ({100 * achieved / fp32:.1f}%)" if achieved and fp32
                     else "-"])
    lines += _table(["model", "weights / input", "variant", "ms per tile (median)",
                     *(["ms, an earlier run", "MNC / Mask R-CNN, earlier run"] if earlier
                       else []), "x eager fp32 speed",
                     "MNC / Mask R-CNN time", "GFLOPs per tile",
                     "TFLOP/s achieved (% of fp32 matmul)"], rows)
    agree = []
    for label, a in report.get("agreement", {}).items():
        for where, d in (("at the threshold", a["at_threshold"]), ("all kept", a["kept"])):
            agree.append([label, where, f"{d['detections']} / {d['reference_detections']}",
                          f"{d['matched_iou90']} / {d['matched_iou50']}",
                          d["median_matched_iou"] if d["median_matched_iou"] is not None
                          else "-",
                          d["max_score_diff"] if d["max_score_diff"] is not None else "-"])
    if agree:
        lines += ["", "Agreement with eager float32 on the same tiles (trained R-18 pair; greedy "
                      "one-to-one matching by mask IoU):", ""]
        lines += _table(["variant", "detections", "found / eager fp32",
                         "matched at IoU >= 0.9 / >= 0.5", "median matched IoU",
                         "largest score difference"], agree)
    if report.get("errors"):
        lines += ["", "Did not run:", ""]
        lines += [f"- {label}: {[x for x in err.splitlines() if x.strip()][-1][:160]}"
                  for label, err in report["errors"].items()]  # the raised error's own line
    return lines


def gpu_train_table(report: dict) -> list[str]:
    """bench_gpu_train.py: per model and precision, seconds per training step on the GPU,
    AMP's speed-up, peak memory, whether the losses stayed finite, and what failed."""
    rows = []
    for label, r in report["runs"].items():
        model, precision = label.split(" / ")
        fp32 = report["runs"].get(f"{model} / fp32", {}).get("s_per_step_median")
        partner = report["runs"].get(label.replace("mnc5_", "mask_rcnn_", 1), {}).get(
            "s_per_step_median")
        rows.append([model, precision, f"{r['s_per_step_median'] * 1e3:.1f}",
                     f"{fp32 / r['s_per_step_median']:.2f}" if fp32 and precision != "fp32"
                     else "-",
                     f"{r['s_per_step_median'] / partner:.2f}" if partner and
                     model.startswith("mnc5_") else "-",
                     r.get("peak_gpu_memory_gb", "-"), "yes" if r["losses_finite"] else "NO"])
    lines = [f"GPU: {report['gpu']}; torch {report['torch']}; batch {report['batch']} of "
             f"{report['tile_px'][0]} x {report['tile_px'][1]} px tiles, {report['targets']} "
             f"(synthetic), median of {report['iters'] - report['warmup']} steps after "
             f"{report['warmup']}.", ""]
    lines += _table(["model", "precision", "ms per step", "x fp32 speed",
                     "MNC / Mask R-CNN time", "peak GPU memory GB", "losses finite"], rows)
    if report.get("errors"):
        lines += ["", "Failed:", ""] + [f"- {k}: {v.splitlines()[-1][:160]}"
                                       for k, v in report["errors"].items()]
    return lines


RADIOMETRY_INPUTS = {"as_is": "as they are", "8bit": "8-bit exports (2-98% stretch)"}


def radiometry_table(report: dict) -> list[str]:
    """bench_radiometry.py: per benchmark, input and option, mean city F1, slice recalls and
    the best threshold's score over seeds (mean ± std), and for the option the change from
    the same models and seeds without it (mean, min to max)."""
    import statistics

    rows = []
    for key, runs in report["runs"].items():
        test, inputs, option = key.split("/")
        base = report["runs"].get(f"{test}/{inputs}/plain", {})
        seeds = sorted(runs, key=int)
        cells = []
        for name in ("mean_city_f1", "recall_small", "recall_concave", "recall_dark",
                     "best_threshold"):
            def value(run, name=name):
                if name == "best_threshold":
                    return run["best_threshold"]["score"]
                return _tta_value(run, name)
            values = [value(runs[s]) for s in seeds]
            cell = _mean_std(values)
            if option == "matched" and all(s in base for s in seeds):
                delta = [v - value(base[s]) for v, s in zip(values, seeds)]
                cell += (f" ({statistics.mean(delta):+.3f}, {min(delta):+.3f} to "
                         f"{max(delta):+.3f})")
            cells.append(cell)
        rows.append([f"{report['setting']} -> {test}", RADIOMETRY_INPUTS.get(inputs, inputs),
                     "--match-radiometry" if option == "matched" else "-",
                     f"{len(seeds)}", *cells])
    return _table(["trained -> scored", "tiles", "option", "seeds", "mean city F1",
                   "recall small", "recall concave", "recall dark",
                   "best threshold's mean city F1"], rows)


def _over_seeds(values: list[float], digits: int = 3) -> str:
    """:func:`_spread` of per-seed values (sample std)."""
    import statistics

    return _spread({"n": len(values), "mean": statistics.mean(values),
                    "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "min": min(values), "max": max(values)}, digits)


SEAM_LAYOUTS = ("abut_650", "abut_433", "overlap_100", "collar_overlap")  # bench_seams.LAYOUTS


def _seam_layout(size: int, tile: int, overlap: int, layout: str = "") -> str:
    """'2 x 2 tiles of 650 px, abutting' for a ``size`` px scene (bench_seams.py's cuts)."""
    from mnc_d2.inference.tiling import tile_grid

    if layout == "collar_overlap":  # (scene width, collar width)
        return (f"2 scenes {tile} px wide overlapping by {2 * tile - size} px, the first with "
                f"a {overlap} px nodata collar")

    if overlap:
        n = round(len(tile_grid(size, size, tile, overlap)) ** 0.5)
        return f"{n} x {n} tiles of {tile} px, overlapping by {overlap} px"
    n = max(1, size // tile)
    grid = " (SpaceNet's grid)" if tile == 650 else ""
    return f"{n} x {n} tiles of {tile} px, abutting{grid}"


SEAM_METHODS = {"pieces": "nothing merged (the tiles' files side by side)",
                "any_overlap": "union of any overlap (the previous rule)",
                "seams": "merge_footprints.py (this version)",
                "seams_grid": "merge_footprints.py, each scene's grid as its edge (its data "
                              "not recorded, as before this version)"}


def seams_table(report: dict) -> list[str]:
    """bench_seams.py: per layout and way of putting the tiles together, over the model seeds:
    F1 against the truth and against the scene predicted whole, buildings per whole-scene
    building."""
    summary = report["summary"]
    seeds = len(summary["whole/whole"]["vs_truth"])
    scenes = report["scenes_per_style"] * len(report["styles"])
    lines = [f"{_setting(report, bold=True)}: {scenes} scenes of {report['size_px']:,} px per "
             f"model ({', '.join(report['styles'])}; buildings, trees and clutter at the "
             f"setting's density), {seeds} model seeds; each scene predicted whole and as the "
             "tiles of each layout. Mean ± sample std (min-max) over the seeds of the F1 of the "
             "scenes' summed counts (SpaceNet rules, IoU 0.5) against the truth and against the "
             "whole-scene prediction, and of the buildings per whole-scene building. Merge "
             f"defaults: seam tolerance {report['seam_tolerance_px']:g} px, overlap "
             f"{report['seam_min_overlap']:g}.", ""]
    rows = [["whole scene", "(one scene)", _over_seeds(summary["whole/whole"]["vs_truth"]),
             "-", "1", "1"]]
    for layout in (name for name in SEAM_LAYOUTS if name in report["layouts"]):
        label = _seam_layout(report["size_px"], *report["layouts"][layout], layout)
        before = summary[f"{layout}/any_overlap"]["vs_truth"]
        for method, how in SEAM_METHODS.items():
            e = summary.get(f"{layout}/{method}")
            if e is None:  # seams_grid: the collar layout only
                continue
            change = ("-" if method == "any_overlap" else
                      _over_seeds([a - b for a, b in zip(e["vs_truth"], before)]))
            rows.append([label, how, _over_seeds(e["vs_truth"]), change,
                         _over_seeds(e["vs_whole"]), _over_seeds(e["count_ratio"], 2)])
    return lines + _table(["tiles", "put together by", "F1 vs truth",
                           "F1 change from the previous rule (paired by seed)",
                           "F1 vs the whole-scene prediction", "buildings / whole-scene"], rows)


def input_scale_table(report: dict) -> list[str]:
    """bench_input_scale.py: per crop side, the F1 at the fixed input scale and with each crop
    resized to the test size, and their per-seed difference."""
    summary = report["summary"]
    seeds = len(next(iter(summary.values())))
    scenes = report["scenes_per_style"] * len(report["styles"])
    lines = [f"{_setting(report, bold=True)}: {scenes} scenes of {report['size_px']:,} px per "
             f"model ({', '.join(report['styles'])}), {seeds} model seeds; each scene cut into "
             "abutting crops of each side, each crop predicted on its own (torch backend, the "
             "run's threshold) and scored against its truth (footprints clipped to it; SpaceNet "
             "rules, IoU 0.5), counts summed per seed. **one scale**: every tile resized by the "
             "factor of a whole training tile (this version); **to the test size**: each crop "
             "resized to INPUT.MIN_SIZE_TEST (Detectron2's evaluation resize; predict.py before "
             "this version). Mean ± sample std (min-max) over the seeds.", ""]
    rows = []
    for side in report["crops_px"]:
        fixed, per_image = summary[f"{side}/fixed"], summary[f"{side}/per_image"]
        rows.append([f"{side} px", _over_seeds(fixed), _over_seeds(per_image),
                     _over_seeds([a - b for a, b in zip(fixed, per_image)])])
    return lines + _table(["crop side", "F1, one scale", "F1, to the test size",
                           "difference"], rows)


def table_maker(report_name: str):
    """The table function of a report by its file name (None: no table renders it yet)."""
    if report_name.startswith("accuracy_"):
        return accuracy_tables
    if report_name.startswith("diagnose_slices"):
        return diagnose_slices_table
    if report_name == "diagnose_units":
        return diagnose_units_table
    if report_name.startswith("cascade_shortcut_"):
        return cascade_shortcut_table
    if report_name.startswith("speed"):
        return speed_tables
    if report_name.startswith("polygonize_"):
        return polygonize_table
    if report_name.startswith("paired_shape_"):
        return paired_shape_table
    if report_name.startswith("viewer"):
        return viewer_table
    if report_name.startswith("radiometry"):
        return radiometry_table
    if report_name.startswith("tta_time"):
        return tta_time_table
    if report_name.startswith("predict_many"):
        return predict_many_table
    if report_name.startswith("predict"):
        return predict_table
    if report_name.startswith("seams_"):
        return seams_table
    if report_name.startswith("input_scale_"):
        return input_scale_table
    if report_name.startswith("scorer"):
        return scorer_table
    if report_name.startswith("export_r50"):
        return export_r50_table
    if report_name.startswith("export_pair_"):
        return export_pair_tables
    if report_name == "export" or report_name.startswith("export_"):
        return export_tables
    if report_name.startswith("gpu_train_"):
        return gpu_train_table
    if report_name.startswith("gpu_"):
        return gpu_tables
    return {"demo": demo_table}.get(report_name)


def section_renderers(results: Path = RESULTS) -> dict:
    """Rendered-section name -> function giving its Markdown: ``bench:<report name>`` for each
    committed report with a table, ``bench:diagnose`` for diagnose.jsonl, ``bench:readme`` for
    README.md's accuracy summary."""
    out = {}
    for path in sorted(results.glob("*.json")):
        maker = table_maker(path.stem)
        if maker is not None:
            out[f"bench:{path.stem}"] = (
                lambda p=path, m=maker: "\n".join(m(json.loads(p.read_text()))))
    if (results / "diagnose.jsonl").exists():
        out["bench:diagnose"] = lambda: "\n".join(diagnose_table(results))
    if any(results.glob("accuracy_*.json")):
        out["bench:readme"] = lambda: "\n".join(readme_table(results))
    if any(results.glob("accuracy_*_tta_off*.json")):
        out["bench:tta"] = lambda: "\n".join(tta_table(results))
    if any(results.glob("accuracy_*_on_*.json")):
        out["bench:transfer"] = lambda: "\n".join(transfer_table(results))
    if any(results.glob("accuracy_*_2400it.json")):
        out["bench:recipes"] = lambda: "\n".join(recipes_table(results))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--readme", action="store_true", help="only README.md's short table")
    args = parser.parse_args()
    results = Path(args.results)
    if args.readme:
        print("\n".join(readme_table(results)))
        return
    # The sections the docs render, each under its name: one map from reports to tables.
    for name, render in section_renderers(results).items():
        print(f"### {name} ({results})\n")
        print(render() + "\n")


if __name__ == "__main__":
    main()
