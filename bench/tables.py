#!/usr/bin/env python
"""Markdown tables for BENCHMARKS.md from the JSON reports of bench/run_all.sh.

The tables in BENCHMARKS.md are pasted from this script's output, so no number there is typed by
hand.

    python bench/tables.py [--results .cache/bench/results]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

CITY_NAMES = {"AOI_2_Vegas": "Vegas", "AOI_3_Paris": "Paris", "AOI_4_Shanghai": "Shanghai",
              "AOI_5_Khartoum": "Khartoum"}


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(header: list[str], rows: list[list]) -> list[str]:
    return [_row(header), _row(["---"] * len(header)), *(_row(r) for r in rows)]


def accuracy_tables(report: dict) -> list[str]:
    variants = report["variants"]
    cities = sorted({c for v in variants.values() for c in v["cities"]})
    first = next(iter(variants.values()))
    lines = [f"{report['iterations']} iterations, {report['train_images_per_city']} training "
             f"tiles per city, benchmark {report['test_images_per_city']} tiles per city; slice "
             f"sizes (benchmark truth): " + ", ".join(
                 f"{k} {v}" for k, v in first["slice_counts"].items()), ""]
    header = ["variant", "mean city F1", *(f"{CITY_NAMES.get(c, c)} F1" for c in cities),
              "overall P", "overall R", "overall F1", "TP / FP / FN"]
    rows = []
    for name, v in variants.items():
        o = v["overall"]
        rows.append([name, f"{v['mean_city_f1']:.3f}",
                     *(f"{v['cities'][c]['f1']:.3f}" for c in cities),
                     f"{o['precision']:.3f}", f"{o['recall']:.3f}", f"{o['f1']:.3f}",
                     f"{o['tp']} / {o['fp']} / {o['fn']}"])
    lines += _table(header, rows) + [""]
    slices = list(first["recall_slices"])
    rows = [[name, *(f"{v['recall_slices'].get(s, float('nan')):.3f}" for s in slices),
             "n/a" if v["train_wall_s"] is None else f"{v['train_wall_s']:.0f}"]
            for name, v in variants.items()]
    lines += _table(["variant", *(f"recall {s}" for s in slices), "training wall s"], rows)
    return lines


def seed_spread_table(results: Path) -> list[str]:
    """Variants re-trained with other cfg.SEED values (accuracy_seed<N>.json) beside seed 0."""
    base = json.loads((results / "accuracy.json").read_text())
    reports = [base] + [json.loads(p.read_text())
                        for p in sorted(results.glob("accuracy_seed*.json"))]
    names = [n for n in base["variants"] if any(n in r["variants"] for r in reports[1:])]
    rows = []
    for name in names:
        for r in reports:
            v = r["variants"].get(name)
            if v is None:
                continue
            rs = v["recall_slices"]
            rows.append([name, r.get("model_seed", 0), f"{v['mean_city_f1']:.3f}",
                         f"{v['overall']['f1']:.3f}", f"{rs['small']:.3f}",
                         f"{rs['concave']:.3f}", f"{rs['dark']:.3f}", f"{rs['other']:.3f}"])
    return _table(["variant", "--model-seed", "mean city F1", "overall F1", "recall small",
                   "recall concave", "recall dark", "recall other"], rows)


def speed_tables(report: dict) -> list[str]:
    models = report["models"]
    sizes = sorted({k.rsplit("_", 1)[1] for m in models.values() for k in m
                    if k.startswith("infer_s_per_tile_median_")}, key=lambda s: int(s[:-2]))
    header = ["model", "train s/iter (median)", "x Mask R-CNN",
              *(x for s in sizes for x in (f"infer s/tile at {s} (median)", "x Mask R-CNN")),
              "peak RSS MB", "weights"]
    rows = []
    for name, m in models.items():
        ratio = m.get("ratio_vs_mask_rcnn", {})
        row = [name, f"{m['train_s_per_iter_median']:.3f}",
               f"{ratio.get('train_s_per_iter', float('nan')):.2f}"]
        for s in sizes:
            key = f"infer_s_per_tile_median_{s}"
            row += [f"{m[key]:.3f}", f"{ratio.get(key.replace('_median', ''), float('nan')):.2f}"]
        rows.append(row + [f"{m['peak_rss_mb_max']:.0f}",
                           "random init" if m["weights"] == "random init" else "trained"])
    lines = [f"{report['rounds']} rounds x {report['timed_train_steps_per_round']} timed training "
             f"steps (batch {next(iter(models.values()))['ims_per_batch']}) and "
             f"{report['timed_tiles_per_round']} timed tiles per model; torch threads "
             f"{report['torch_threads']}", ""]
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
    rows = [["proposals (full pair)", f"{report['proposals']:,}"],
            ["mnc_d2, spacenet rules, full pair (read + parse + score), median",
             f"{report['mnc_d2_full_s_median']} s"],
            ["mnc_d2, solaris rules, full pair, median",
             f"{report['mnc_d2_full_solaris_rules_s_median']} s"]]
    if "subset_tiles" in report:
        rows += [[f"{report['subset_tiles']}-tile subset ({report['subset_proposals']:,} "
                  "proposals): mnc_d2 solaris rules, median", f"{report['subset_mnc_d2_s_median']} s"],
                 ["subset: solaris 0.4.0 (one run)", f"{report['subset_solaris_0.4.0_s']} s"],
                 ["ratio on the subset", f"{report['subset_speedup_vs_solaris']}x"],
                 ["identical per-image TP/FP/FN to solaris",
                  "yes" if report["subset_identical_per_image_counts"] else "NO"]]
    return _table(["what", "value"], rows)


def predict_table(report: dict) -> list[str]:
    return _table(["scene", "wall s", "peak RSS GB", "buildings"],
                  [[f"{report['scene_px']:,} x {report['scene_px']:,} px, {report['bands']} bands",
                    report["wall_s"], report["peak_rss_gb"], f"{report['buildings']:,}"]])


def readme_table(results: Path) -> list[str]:
    """The short table of README.md: every variant's mean city F1 and slice recalls, with the
    training and inference time ratios against Mask R-CNN where measured."""
    acc = json.loads((results / "accuracy.json").read_text())
    speed_path = results / "speed.json"
    speed = json.loads(speed_path.read_text())["models"] if speed_path.exists() else {}
    rows = []
    for name, v in acc["variants"].items():
        r = v["recall_slices"]
        ratio = speed.get(name, {}).get("ratio_vs_mask_rcnn", {})
        times = (f"{ratio['train_s_per_iter']:.2f} / "
                 f"{ratio['infer_s_per_tile_650px']:.2f}" if ratio else "")
        rows.append([name, f"{v['mean_city_f1']:.3f}", f"{r['small']:.3f}", f"{r['concave']:.3f}",
                     f"{r['dark']:.3f}", times])
    return _table(["variant", "mean city F1", "recall small", "recall concave", "recall dark",
                   "time vs Mask R-CNN: train iter / 650 px tile"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=".cache/bench/results")
    parser.add_argument("--readme", action="store_true", help="only README.md's short table")
    args = parser.parse_args()
    results = Path(args.results)
    if args.readme:
        print("\n".join(readme_table(results)))
        return
    makers = {"accuracy": accuracy_tables, "speed": speed_tables, "scorer": scorer_table,
              "predict": predict_table}
    for name, make in makers.items():
        path = results / f"{name}.json"
        if not path.exists():
            continue
        report = json.loads(path.read_text())
        print(f"### {name} ({path}, {report.get('machine', '')})\n")
        print("\n".join(make(report)) + "\n")
        if name == "accuracy" and list(results.glob("accuracy_seed*.json")):
            print("### accuracy, seed spread (accuracy_seed*.json)\n")
            print("\n".join(seed_spread_table(results)) + "\n")


if __name__ == "__main__":
    main()
