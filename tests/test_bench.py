"""bench/: README/BENCHMARKS tables come from the JSON reports unchanged; speed ratios."""

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _tables():
    spec = importlib.util.spec_from_file_location("bench_tables", REPO / "bench" / "tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _variant(f1: float, dark: float, wall) -> dict:
    city = {"tp": 8, "fp": 1, "fn": 2, "precision": 0.889, "recall": 0.8, "f1": f1}
    return {"overall": city, "mean_city_f1": f1, "cities": {"AOI_2_Vegas": city},
            "recall_slices": {"small": 0.5, "concave": 0.25, "dark": dark, "other": 0.9},
            "slice_counts": {"small": 4, "concave": 4, "dark": 2, "other": 3},
            "train_wall_s": wall}


def _speed(train: float, infer: float) -> dict:
    return {"train_s_per_iter_median": train, "infer_s_per_tile_median_650px": infer,
            "ims_per_batch": 2, "peak_rss_mb_max": 1000.0, "weights": "random init"}


def test_accuracy_table_rows_carry_the_report_numbers():
    report = {"iterations": 10, "train_images_per_city": 2, "test_images_per_city": 1,
              "variants": {"mnc5": _variant(0.8421, 0.125, 12.3), "mask_rcnn": _variant(
                  0.5, 0.0, None)}}
    lines = _tables().accuracy_tables(report)
    assert "| mnc5 | 0.842 | 0.842 | 0.889 | 0.800 | 0.842 | 8 / 1 / 2 |" in lines
    assert "| mnc5 | 0.500 | 0.250 | 0.125 | 0.900 | 12 |" in lines
    assert "| mask_rcnn | 0.500 | 0.250 | 0.000 | 0.900 | n/a |" in lines


def test_readme_table_joins_accuracy_and_speed_ratios(tmp_path):
    acc = {"variants": {"mnc5": _variant(0.9, 0.2, 1.0), "mask_rcnn": _variant(0.8, 0.1, 1.0)}}
    speed = {"models": {"mask_rcnn": _speed(1.0, 0.5), "mnc5": _speed(1.1, 0.4)}}
    tables = _tables()
    for entry in speed["models"].values():
        entry["ratio_vs_mask_rcnn"] = {
            "train_s_per_iter": entry["train_s_per_iter_median"] / 1.0,
            "infer_s_per_tile_650px": entry["infer_s_per_tile_median_650px"] / 0.5}
    (tmp_path / "accuracy.json").write_text(json.dumps(acc))
    (tmp_path / "speed.json").write_text(json.dumps(speed))
    lines = tables.readme_table(tmp_path)
    assert "| mnc5 | 0.900 | 0.500 | 0.250 | 0.200 | 1.10 / 0.80 |" in lines
    assert "| mask_rcnn | 0.800 | 0.500 | 0.250 | 0.100 | 1.00 / 1.00 |" in lines


def test_speed_summary_medians_and_ratios_against_mask_rcnn():
    spec = importlib.util.spec_from_file_location("bench_speed", REPO / "bench" / "bench_speed.py")
    speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(speed)
    run = {"ims_per_batch": 2, "peak_rss_mb": 900.0, "weights": "w.pth"}
    results = {
        "mask_rcnn": [dict(run, train_step_s=[1.0, 3.0, 2.0], infer_s={"650": [0.5, 0.4]}),
                      dict(run, train_step_s=[2.0], infer_s={"650": [0.6]})],
        "mnc5": [dict(run, train_step_s=[3.0, 3.0, 9.0], infer_s={"650": [1.0, 1.0]}),
                 dict(run, peak_rss_mb=1200.0, train_step_s=[1.0], infer_s={"650": [0.1]})],
    }
    out = speed._summary(results)
    assert out["mask_rcnn"]["train_s_per_iter_median"] == 2.0  # median of 1, 3, 2, 2
    assert out["mnc5"]["train_s_per_iter_median"] == 3.0  # median of 3, 3, 9, 1
    assert out["mnc5"]["train_steps_timed"] == 4
    assert out["mnc5"]["peak_rss_mb_max"] == 1200.0
    assert out["mnc5"]["ratio_vs_mask_rcnn"]["train_s_per_iter"] == 1.5
    assert out["mnc5"]["ratio_vs_mask_rcnn"]["infer_s_per_tile_650px"] == 2.0  # 1.0 / 0.5
