"""bench/: README/BENCHMARKS tables come from the JSON reports unchanged; speed ratios."""

import json

import pytest

from bench import bench_accuracy, tables


def _run(f1: float, dark: float, wall, shape: bool = True) -> dict:
    city = {"tp": 8, "fp": 1, "fn": 2, "precision": 0.889, "recall": 0.8, "f1": f1}
    shapes = {"all": {"iou": 0.8, "ciou": 0.5 + f1 / 4, "n_ratio": 2.0, "polis": 0.4,
                      "mta": 35.0 - 50 * (f1 - 0.8), "boundary_f": 0.9}}
    return {**({"shape": shapes} if shape else {}), "overall": city, "mean_city_f1": f1, "cities": {"AOI_2_Vegas": city},
            "recall_slices": {"small": 0.5, "concave": 0.25, "dark": dark, "other": 0.9},
            "slice_counts": {"small": 4, "concave": 4, "dark": 2, "other": 3},
            "best_threshold": {"threshold": 0.35, "mean_city_F1": f1 + 0.01},
            "calibration": {"ECE": 0.125}, "train_wall_s": wall}


def _report(tmp_path=None) -> dict:
    bench = bench_accuracy
    runs = {"mnc5": {"0": _run(0.8, 0.125, 12.3), "1": _run(0.9, 0.25, 10.0)},
            "mask_rcnn": {"0": _run(0.5, 0.0, None, shape=False)}}
    report = {"setting": "hard", "iterations": 10, "train_images_per_city": 2,
              "test_images_per_city": 1, "runs": runs, "summary": bench.summarize(runs)}
    if tmp_path is not None:
        (tmp_path / "accuracy_hard.json").write_text(json.dumps(report))
    return report


def test_seed_summary_and_tables_carry_the_report_numbers():
    report = _report()
    mnc = report["summary"]["mnc5"]
    assert mnc["mean_city_f1"] == {"mean": pytest.approx(0.85), "min": 0.8, "max": 0.9,
                                   "std": pytest.approx(0.0707107), "n": 2}
    assert mnc["recall_dark"]["mean"] == 0.1875
    lines = tables.accuracy_tables(report)
    assert ("| mnc5 | 2 | 0.850 ± 0.071 (0.800-0.900) | 0.860 ± 0.071 (0.810-0.910) | "
            "0.35 ± 0.00 (0.35-0.35) | 0.125 ± 0.000 (0.125-0.125) | 0.500 | 0.250 | 0.188 | "
            "0.900 |") in lines
    assert ("| mnc5 | 1 | 0.900 | 0.889 | 0.800 | 8 / 1 / 2 | 0.35 (0.910) | 0.125 | 0.500 | "
            "0.250 | 0.250 | 0.900 | 10 |") in lines
    assert "| mask_rcnn | 0 | 0.500 | 0.889 | 0.800 | 8 / 1 / 2 | 0.35 (0.510) | 0.125 | 0.500 | "\
        "0.250 | 0.000 | 0.900 | n/a |" in lines
    # Shape over seeds: C-IoU 0.5 + f1/4 -> 0.700 and 0.725 (mean 0.71249999..., a tie in
    # decimal that the floats put below it); MTA 35 and 30 degrees.
    assert ("| mnc5 | 2 | 0.800 ± 0.000 (0.800-0.800) | 0.712 ± 0.018 (0.700-0.725) | "
            "2.000 ± 0.000 (2.000-2.000) | 0.400 ± 0.000 (0.400-0.400) | 32.5 ± 3.5 (30.0-35.0) | "
            "0.900 ± 0.000 (0.900-0.900) |") in lines
    start = next(i for i, line in enumerate(lines) if line.startswith("Shape of the matched"))
    end = lines.index("", start + 2)
    assert [line.split(" | ")[0] for line in lines[start + 4:end]] == ["| mnc5"]  # no shapes:
    # mask_rcnn's run was evaluated without them


def test_seed_ranges_are_the_seeds_own_rounded_values():
    """The summary is kept unrounded, so a table rounds once: a seed at 0.8364999 shows as
    0.836 in its own row and at the end of the range (a summary rounded to 4 digits first
    would keep 0.8365 and show 0.837 there)."""
    runs = {"mnc5": {"0": _run(0.8364999, 0.125, 1.0), "1": _run(0.9, 0.25, 1.0)}}
    report = {"setting": "hard", "iterations": 10, "train_images_per_city": 2,
              "test_images_per_city": 1, "runs": runs, "summary": bench_accuracy.summarize(runs)}
    assert report["summary"]["mnc5"]["mean_city_f1"]["min"] == 0.8364999
    lines = tables.accuracy_tables(report)
    assert any(line.startswith("| mnc5 | 2 | 0.868 ± 0.045 (0.836-0.900) |") for line in lines)
    assert any(line.startswith("| mnc5 | 0 | 0.836 |") for line in lines)


def test_readme_table_lists_each_setting_and_variant(tmp_path):
    _report(tmp_path)
    lines = tables.readme_table(tmp_path)
    assert ("| hard | mnc5 | 0.850 ± 0.071 (0.800-0.900) | 0.500 ± 0.000 | 0.250 ± 0.000 | "
            "0.188 ± 0.088 | 0.900 ± 0.000 | 0.712 | 32.5 |") in lines
    assert ("| hard | mask_rcnn | 0.500 (1 seed) | 0.500 ± 0.000 | 0.250 ± 0.000 | "
            "0.000 ± 0.000 | 0.900 ± 0.000 | n/a | n/a |") in lines  # a run without shapes


def test_reports_evaluated_with_inference_overrides_say_so(tmp_path):
    report = _report()
    report["test_opts"] = ["MODEL.MNC.NMS_AFTER_VOTING", "False"]
    (tmp_path / "accuracy_hard_nms-off.json").write_text(json.dumps(report))
    # README's short table holds the in-setting reports with the default inference only
    assert len(tables.readme_table(tmp_path)) == 2
    assert "(inference: NMS_AFTER_VOTING False)" in tables.accuracy_tables(report)[0]
    renderers = tables.section_renderers(tmp_path)
    assert set(renderers) == {"bench:accuracy_hard_nms-off", "bench:readme"}
    assert renderers["bench:accuracy_hard_nms-off"]().startswith("Setting **hard** (inference")


def test_test_opts_take_inference_keys_only():
    opts = ["INPUT.MIN_SIZE_TEST", "867", "INPUT.MAX_SIZE_TEST", "867"]
    assert bench_accuracy.check_test_opts(opts) == opts  # resizing test tiles trains nothing
    with pytest.raises(SystemExit, match="INPUT.MIN_SIZE_TRAIN: not an inference-only key"):
        bench_accuracy.check_test_opts(["INPUT.MIN_SIZE_TRAIN", "(867,)"])
    with pytest.raises(SystemExit, match="KEY VALUE pairs"):
        bench_accuracy.check_test_opts(["INPUT.MIN_SIZE_TEST"])


def test_speed_summary_medians_and_ratios_against_mask_rcnn():
    from bench import bench_speed as speed

    run = {"ims_per_batch": 2, "peak_rss_mb": 900.0, "weights": "w.pth", "params_m": 40.0,
           "roi_head_params_m": 10.0, "config_size": 650, "input_hw": [650, 650], "bands": 3}
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
    assert out["mnc5"]["baseline"] == "mask_rcnn"
    assert out["mnc5"]["ratio_vs_baseline"]["train_s_per_iter"] == 1.5
    assert out["mnc5"]["ratio_vs_baseline"]["infer_s_per_tile_650px"] == 2.0  # 1.0 / 0.5
    assert out["mnc5"]["ratio_vs_baseline"]["infer_s_per_tile_at_config_size"] == 2.0
    assert out["mnc5"]["ratio_vs_baseline"]["params_m"] == 1.0
    assert out["mnc5"]["test_input"] == {"bands": 3, "hw": [650, 650]}


def test_speed_table_of_other_releases_against_their_baseline():
    """Variants with different input sizes (SpaceNet 4's 900 px vs SpaceNet 2's 650 px) are
    compared at each config's own size against the baseline the report names."""
    from bench import bench_speed as speed

    run = {"ims_per_batch": 2, "peak_rss_mb": 900.0, "weights": "random init", "params_m": 68.3,
           "roi_head_params_m": 40.8, "bands": 3}
    results = {
        "mnc5_R50": [dict(run, train_step_s=[2.0], infer_s={"650": [1.0]}, config_size=650,
                          input_hw=[650, 650])],
        "mnc5_R50_sn4": [dict(run, train_step_s=[5.0], infer_s={"900": [1.5]}, config_size=900,
                              input_hw=[900, 900], bands=4)],
    }
    models = speed._summary(results)
    assert models["mnc5_R50_sn4"]["baseline"] == "mnc5_R50"
    assert models["mnc5_R50_sn4"]["ratio_vs_baseline"] == {
        "train_s_per_iter": 2.5, "infer_s_per_tile_at_config_size": 1.5, "params_m": 1.0,
        "roi_head_params_m": 1.0}
    report = {"rounds": 1, "timed_train_steps_per_round": 1, "timed_tiles_per_round": 1,
              "torch_threads": 2, "models": models,
              "polygonize": {"masks": 1, "mask_shape": [650, 650]}}
    lines = tables.speed_tables(report)
    header = next(line for line in lines if line.startswith("| model"))
    assert "x baseline" in header and "x Mask R-CNN" not in header
    row = next(line for line in lines if line.startswith("| mnc5_R50_sn4 "))
    assert row.startswith("| mnc5_R50_sn4 | 5.000 | 2.50 | - | - | 1.500 | - | 1.500 | 1.50 |")
    assert row.endswith("| mnc5_R50 |")


def test_speed_fixed_detections_reach_the_config_and_the_table():
    """--detections N: every model keeps N instances per tile (no score threshold), the
    summary keeps the counts measured and the table shows them beside the stand-in's note."""
    from bench import bench_speed as speed

    assert speed.detection_opts(0) == []
    assert speed.detection_opts(30) == ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
                                        "TEST.DETECTIONS_PER_IMAGE", "30"]
    with pytest.raises(ValueError, match="--detections must be >= 0, got -1"):
        speed.detection_opts(-1)
    # the recipe variants are compared with Mask R-CNN trained with the recipe's levers
    for name in ("mnc5_R50_recipe", "mnc5_R50_recipe_mask128", "mnc5_R50_recipe_mask128_topk200",
                 "mnc5_R50_recipe_fc"):
        assert speed.BASELINE[name] == "mask_rcnn_R50_recipe" and name in speed.VARIANTS
    assert speed.VARIANTS["mnc5_R50_recipe_mask128"][0].endswith("_conv_mask128.yaml")
    run = {"ims_per_batch": 2, "peak_rss_mb": 900.0, "weights": "random init", "params_m": 40.0,
           "roi_head_params_m": 10.0, "config_size": 650, "input_hw": [650, 650], "bands": 3}
    results = {
        "mask_rcnn_R50_recipe": [dict(run, train_step_s=[1.0], infer_s={"650": [0.5, 0.7]},
                                      kept_per_tile={"650": [30, 30]})],
        "mnc5_R50_recipe_mask128": [dict(run, train_step_s=[1.0], infer_s={"650": [1.5, 1.5]},
                                         kept_per_tile={"650": [30, 29]})],
    }
    models = speed._summary(results)
    assert models["mnc5_R50_recipe_mask128"]["kept_per_tile_median_by_size"] == {"650": 29.5}
    assert models["mnc5_R50_recipe_mask128"]["ratio_vs_baseline"]["infer_s_per_tile_650px"] == 2.5
    report = {"rounds": 1, "timed_train_steps_per_round": 1, "timed_tiles_per_round": 2,
              "torch_threads": 2, "models": models, "fixed_detections": 30,
              "polygonize": {"masks": 1, "mask_shape": [650, 650]}}
    lines = tables.speed_tables(report)
    assert lines[0].endswith("; every model keeps 30 instances per tile (no score threshold), "
                             "a stand-in for trained weights")
    header = next(line for line in lines if line.startswith("| model"))
    assert "| kept per tile (median) | peak RSS MB |" in header
    row = next(line for line in lines if line.startswith("| mnc5_R50_recipe_mask128 "))
    assert "| 1.500 | 2.50 | 29.5 | 900 |" in row


def test_export_r50_table_carries_the_report_numbers():
    flops = {"gflops": 300.0,
             "gflops_by_part": {"backbone": 150.0, "rpn": 10.0, "roi_heads": 139.5, "other": 0.5}}

    def model(channels, kept_onnx):
        return {"mask_conv_dim": channels, "test_proposals": 600, "flops": flops,
                "kept_per_tile": {"torch": 30.0, "onnxruntime": kept_onnx}}

    def pair(median, q1, q3, mnc_s, mask_rcnn_s):
        return {"median": median, "q1": q1, "q3": q3, "mnc_s_median": mnc_s,
                "mask_rcnn_s_median": mask_rcnn_s}

    report = {"weights": "random init (seed 0)", "fixed_detections": 30, "tile_px": 650,
              "threads": 2, "cpu": "AMD EPYC", "tiles": 4, "rounds": 2,
              "baseline": "mask_rcnn_R50_recipe",
              "models": {"mask_rcnn_R50_recipe": model(None, 30.0),
                         "mnc5_R50_recipe": model(256, 29.5)},
              "paired": {"mnc5_R50_recipe / torch": pair(3.5, 3.4, 3.61, 7.0, 2.0),
                         "mnc5_R50_recipe / onnxruntime": pair(3.0, 2.9, 3.1, 3.5, 1.2)},
              "eager_over_exported": {"mnc5_R50_recipe": {"onnxruntime": 2.0}}}
    lines = tables.table_maker("export_r50_recipe")(report)
    assert lines[0].startswith("Random weights (seed 0); every model keeps 30 instances")
    assert "| mnc5_R50_recipe | 256 | 600 | 300.0 | 150.0 | 10.0 | 139.5 | 30 / 29.5 |" in lines
    assert "| mask_rcnn_R50_recipe | - | 600 | 300.0 | 150.0 | 10.0 | 139.5 | 30 / 30 |" in lines
    assert "| mnc5_R50_recipe | torch | 7.000 | 2.000 | 3.50 (3.40-3.61) |  |" in lines
    assert ("| mnc5_R50_recipe | onnxruntime | 3.500 | 1.200 | 3.00 (2.90-3.10) | 2.00x |"
            in lines)
    # an earlier run's medians beside the run's own, where the report keeps them
    report["earlier_run"] = {"note": "the same day, eager and onnxruntime only",
                             "paired": {"mnc5_R50_recipe / torch": {"median": 3.25}}}
    lines = tables.table_maker("export_r50_recipe")(report)
    assert "| mnc5_R50_recipe | torch | 7.000 | 2.000 | 3.50 (3.40-3.61) | 3.25 |  |" in lines
    assert ("| mnc5_R50_recipe | onnxruntime | 3.500 | 1.200 | 3.00 (2.90-3.10) | - | 2.00x |"
            in lines)
    assert lines[-1] == "The earlier run: the same day, eager and onnxruntime only"


def test_polygonize_and_demo_tables_carry_the_report_numbers():
    from bench import bench_polygonize

    shape = {"iou": 0.8, "ciou": 0.3, "n_ratio": 8.0, "polis": 1.2, "mta": 60.0,
             "boundary_f": 0.7, "vertex_error": 30.0}
    method = {"mean_city_f1": 0.9, "ms_per_1000_buildings": 800.0, "angle_spread_deg": 2.5,
              "shape": {"all": shape, "small": shape, "dark": shape, "other": shape,
                        "concave": dict(shape, ciou=None)}}
    runs = [{m: method for m in bench_polygonize.METHODS} for _ in range(2)]
    report = {"setting": "hard", "runs": runs, "summary": bench_polygonize.summarize(runs),
              "truth_angle_spread_deg": 1.25}
    lines = tables.table_maker("polygonize_hard")(report)
    assert ("| traced | 0.900 ± 0.000 (0.900-0.900) | 0.300 ± 0.000 (0.300-0.300) | "
            "8.00 ± 0.00 (8.00-8.00) | 1.20 ± 0.00 (1.20-1.20) | 60.0 ± 0.0 (60.0-60.0) | "
            "0.700 ± 0.000 (0.700-0.700) | n/a | 2.50 ± 0.00 (2.50-2.50) | 800 ± 0 (800-800) |"
            ) in lines
    assert "(the truth's own: 1.25 degrees)" in lines[0]
    demo = {"machine": "cpu", "isa": "native", "wall_min": 10.04, "train_s_per_iter_median": 0.48,
            "peak_rss_gb": 1.9, "score": 0.9612, "tp": 419, "fp": 6, "fn": 34,
            "best_threshold": 0.2, "best_threshold_score": 0.966, "ECE": 0.034}
    assert tables.table_maker("demo")(demo)[-1] == (
        "| cpu | native | 10.0 | 0.48 | 1.90 | 0.961 | 419 / 6 / 34 | 0.20 (0.966) | 0.034 |")


def test_predict_many_table_takes_medians_and_pairs_the_rounds():
    def run(k, wall, rss, buildings, statuses):
        return {"round": k, "wall_s": wall, "scenes_per_s": 4 / wall, "scene_s_median": wall / 8,
                "workers": len(rss), "peak_rss_mb_per_worker": rss, "buildings": buildings,
                "statuses": statuses}

    report = {"scenes": 4, "scene_px": 650, "run": "/x/runs/mnc5_60img_600it/seed1", "rounds": 3,
              "cpu": "AMD EPYC (cpu family 25, model 17, AVX-512)", "ray_init_s": 4.04,
              "engines": {"local": ["--engine", "local"], "ray": ["--engine", "ray"]},
              "runs": {"local": [run(0, 10.0, [900.0], 50, {"ok": 4}),
                                 run(1, 12.0, [950.0], 50, {"ok": 4}),
                                 run(2, 11.0, [920.0], 50, {"ok": 3, "failed": 1})],
                       "ray": [run(0, 8.0, [700.0, 720.0], 50, {"ok": 4}),
                               run(1, 9.0, [710.0, 1700.0], 51, {"ok": 4}),
                               run(2, 8.8, [705.0, 730.0], 50, {"ok": 4})]},
              "median_wall_s": {"local": 11.0, "ray": 8.8},
              "ray_vs_local_wall": {"per_round": [0.8, 0.75, 0.8], "median": 0.8},
              "agreement_first_round": {"scenes": 4, "in_one_output_only": 0,
                                        "equal_building_counts": 3, "union_iou_min": 0.99,
                                        "union_iou_median": 1.0}}
    lines = tables.table_maker("predict_many")(report)
    assert lines[0].startswith("4 synthetic scenes of 650 x 650 px (3 bands), the trained run "
                               "`mnc5_60img_600it/seed1`")
    assert "3 rounds" in lines[0] and "start-up alone (a fresh process): 4.0 s" in lines[0]
    # median wall and scenes/s over the rounds, the largest worker's peak, every status counted
    assert lines[4] == ("| `--engine local` | 1 | 11.0 | 0.36 | 1.38 | 950 | 50 | "
                        "failed 1, ok 11 |")
    assert lines[5] == "| `--engine ray` | 2 | 8.8 | 0.45 | 1.10 | 1,700 | 50/51 | ok 12 |"
    assert lines[-1] == ("Ray's wall time over local's, paired round by round: median 0.80 "
                         "(rounds: 0.80, 0.75, 0.80). The first round's outputs scene by scene: "
                         "3 of 4 scenes with equal building counts, IoU of each scene's union of "
                         "polygons min 0.990000, median 1.000000.")
    report["agreement_first_round"] = {"scenes": 0, "in_one_output_only": 4,
                                       "equal_building_counts": 0, "union_iou_min": None,
                                       "union_iou_median": None}
    assert tables.predict_many_table(report)[-1].endswith(
        "scene by scene: no scene finished on both engines; 4 scenes in one output only.")
    # an exported model instead of a training run
    del report["run"]
    report.update(model="/x/exported/recipe_seed1", backend="openvino-int8")
    assert tables.predict_many_table(report)[0].startswith(
        "4 synthetic scenes of 650 x 650 px (3 bands), the exported model `recipe_seed1` on "
        "`--backend openvino-int8`, tools/predict.py")


def test_export_pair_table_compares_each_backend_with_eager_seed_by_seed():
    def score(f1, tp, fp, fn):
        return {"mean_city_f1": f1, "tp": tp, "fp": fp, "fn": fn, "tiles": 60}

    def pair(ratio, mnc_s, mrcnn_s):
        return {"median": ratio, "q1": ratio - 0.1, "q3": ratio + 0.1, "n": 30,
                "quartiles": "inclusive", "mnc_s_median": mnc_s, "mask_rcnn_s_median": mrcnn_s}

    def agree(matched_iou90):  # two forms' detections on the timed tiles, 250 of them
        return {"650 px / openvino": {
            "reference_detections": 250, "detections": 250, "matched_iou50": 250,
            "matched_iou90": matched_iou90, "median_matched_iou": 1.0, "max_score_diff": 0.0}}

    def seed(int8_f1, int8_counts, eager_s):
        home = {"torch": score(0.9, 90, 10, 10), "onnxruntime": score(0.9, 90, 10, 10),
                "onnxruntime-int8": score(int8_f1, *int8_counts)}
        return {"accuracy": {"default": {"torch": score(0.95, 95, 5, 5)}, "hard": home},
                "input_px": 650,
                "paired": {"650 px / torch": pair(1.2, eager_s, eager_s / 1.2),
                           "650 px / onnxruntime": pair(1.1, eager_s / 2, eager_s / 2.2)},
                "detections_per_tile": {"mnc": {"kept": 20, "at_threshold": 18.0,
                                                "threshold": 0.5, "tiles": 10}},
                "pools": {"650 px / onnxruntime-int8": {
                    "median": 0.96, "q1": 0.94, "q3": 0.99, "n": 30, "quartiles": "inclusive",
                    "float_pools_s_median": 0.11, "quantised_pools_s_median": 0.115}},
                "warps": {"650 px / openvino": {
                    "median": 0.9, "q1": 0.88, "q3": 0.93, "n": 30, "quartiles": "inclusive",
                    "stacked_s_median": 0.18, "levels_s_median": 0.2}},
                "warps_agreement": agree(249),
                "roialign": {"650 px / openvino": {
                    "median": 0.95, "q1": 0.94, "q3": 0.96, "n": 30, "quartiles": "inclusive",
                    "roialign_s_median": 0.19, "stacked_s_median": 0.2}},
                "roialign_agreement": agree(250),
                "roialign_paired": {"650 px / openvino": pair(1.25, 0.19, 0.152)}}

    report = {"mnc": "mnc5_x", "mask_rcnn": "mask_rcnn_x", "tag": "60img_2400it",
              "train_setting": "hard", "threads": 2, "cpu": "AMD EPYC",
              "calibration": "32 training tiles",
              "seeds": {"0": seed(0.91, (92, 11, 8), 0.4), "1": seed(0.88, (88, 9, 12), 0.6)},
              "paired_median_over_seeds": {"650 px / torch": {"median": 1.2, "min": 1.2,
                                                              "max": 1.2, "seeds": 2}}}
    lines = tables.table_maker("export_pair_recipe")(report)
    # the training setting first, then the other
    assert lines[0].startswith("`mnc5_x` trained on **hard** (60img_2400it; seeds 0, 1), "
                               "scored on **hard**'s 60 held-out tiles")
    assert lines[4] == ("| torch (eager Detectron2) | 0.900 ± 0.000 | +0.0000 to +0.0000 | "
                        "2 of 2 | 90/10/10 / 90/10/10 | 0 |")
    # int8: F1 +0.01 and -0.02, TP + FP moved by +3 and -3
    assert lines[6] == ("| onnxruntime-int8 | 0.895 ± 0.021 | -0.0200 to +0.0100 | 0 of 2 | "
                        "92/11/8 / 88/9/12 | 3 |")
    assert any(line.startswith("`mnc5_x` trained on **hard** (60img_2400it; seeds 0, 1), "
                               "scored on **default**") for line in lines)
    text = "\n".join(lines)
    # the exported MNC against the eager one of the same seed: 0.4 / 0.2 = 2.00x
    assert "| 0 | 650 px / onnxruntime | 1.10 | 1.00-1.20 | 0.200 | 0.182 | 2.00x |" in text
    assert "| 1 | 650 px / torch | 1.20 | 1.10-1.30 | 0.600 | 0.500 | 1.00x |" in text
    assert "| 650 px / torch | 1.20 | 1.20-1.20 | 2 |" in text
    assert "| 0 | mnc | 20 | 18 (>= 0.5) |" in text
    assert "| 1 | 650 px / onnxruntime-int8 | 0.960 | 0.940-0.990 | 0.110 | 0.115 |" in text
    assert ("| 0 | 650 px / openvino | 0.900 | 0.880-0.930 | 0.180 | 0.200 | "
            "249 / 250 of 250 (250 found) | 1.0 | 0.0 |") in text
    assert "2 threads of AMD EPYC." in text
    # the RoIAlign form of the warps against this version's export, then against Mask R-CNN
    assert ("| 0 | 650 px / openvino | 0.950 | 0.940-0.960 | 0.190 | 0.200 | "
            "250 / 250 of 250 (250 found) | 1.0 | 0.0 |") in text
    assert "| 1 | 650 px / openvino | 1.25 | 1.15-1.35 | 0.190 | 0.152 |" in text
    assert "1 thread of AMD EPYC." in "\n".join(
        tables.table_maker("export_pair_recipe")({**report, "threads": 1}))
    # a report of test tiles drawn with another generator seed names it (earlier reports, whose
    # tiles were the benchmark's, name none)
    assert "held-out tiles through" in lines[0]
    assert tables.table_maker("export_pair_recipe")({**report, "test_seed": 2})[0].startswith(
        "`mnc5_x` trained on **hard** (60img_2400it; seeds 0, 1), scored on **hard**'s 60 "
        "held-out tiles (drawn with generator seed 2) through tools/predict.py")
    assert tables.export_pair_tables({"seeds": {}}) == [
        "No seed of this report has a trained MNC run."]
    # rows of another warp layout than the default export's (OpenVINO's own graphs) stand
    # apart, named with the file predict.py ran; the default's keep the backend's name
    own = json.loads(json.dumps(report))
    own["seeds"]["1"]["accuracy"]["hard"]["onnxruntime-int8"].update(
        graph="model.int8.openvino.onnx", warp_layout="roialign")
    own["seeds"]["0"]["accuracy"]["hard"]["onnxruntime"].update(graph="model.onnx",
                                                                warp_layout="stacked")
    text = "\n".join(tables.table_maker("export_pair_recipe")(own))
    assert "| onnxruntime | 0.900 ± 0.000 | +0.0000 to +0.0000 | 2 of 2 |" in text
    assert ("| onnxruntime-int8 | 0.910 (1 seed) | +0.0100 to +0.0100 | 0 of 1 | 92/11/8 | 3 |"
            in text)
    assert ("| onnxruntime-int8 (model.int8.openvino.onnx, roialign warps) | 0.880 (1 seed) | "
            "-0.0200 to -0.0200 | 0 of 1 | 88/9/12 | 3 |") in text
    # bench_export's own reports keep their renderer, "export_paired_avx2" included
    assert tables.table_maker("export_paired_avx2") is tables.export_tables


def test_tta_table_pairs_each_pass_set_with_one_pass_on_the_same_seeds(tmp_path):
    off_runs = {"mnc5": {"0": _run(0.8, 0.125, 1.0), "1": _run(0.9, 0.25, 1.0)}}
    on_runs = {"mnc5": {"0": _run(0.82, 0.25, 1.0), "1": _run(0.89, 0.5, 1.0),
                        "2": _run(0.1, 0.0, 1.0)}}  # seed 2 has no one-pass run: left out
    for iters, stem in ((600, "accuracy_hard"), (2400, "accuracy_hard_2400it")):
        for name, runs in (("off", off_runs), ("scales", on_runs)):
            report = {"setting": "hard", "iterations": iters, "runs": runs}
            (tmp_path / f"{stem}_tta_{name}.json").write_text(json.dumps(report))
    lines = tables.tta_table(tmp_path)
    # dark 0.125 -> 0.25 and 0.25 -> 0.5: +0.125 and +0.25; F1 +0.02 and -0.01
    assert ("| hard | mnc5 (2,400 iterations) | 2 scales (2 seeds) | 0.855 ± 0.049 (+0.005, "
            "-0.010 to +0.020) | ") in "\n".join(lines)
    assert "| 0.375 ± 0.177 (+0.188, +0.125 to +0.250) | 1 ± 0 (+0, +0 to +0) |" in lines[-1]
    assert lines[2].startswith("| hard | mnc5 (2,400 iterations) | one pass (2 seeds) | ")
    assert any(line.startswith("| hard | mnc5 (600 iterations) | 2 scales") for line in lines)
    # one seed: its value and change, no spread
    (tmp_path / "accuracy_hard_2400it_tta_off.json").write_text(json.dumps(
        {"setting": "hard", "iterations": 2400, "runs": {"mnc5": {"0": off_runs["mnc5"]["0"]}}}))
    lines = tables.tta_table(tmp_path)
    assert ("| hard | mnc5 (2,400 iterations) | 2 scales (1 seed) | 0.820 (+0.020) | 0.500 "
            "(+0.000) | 0.250 (+0.000) | 0.250 (+0.125) | 1 (+0) |") in lines


def test_transfer_table_compares_test_time_augmentation_with_the_same_passes_at_home(tmp_path):
    """A pass set scored on the other setting is compared with the same pass set at home (a
    recipe run everywhere), not with one pass; one pass's own reports make no row."""
    _report(tmp_path)  # accuracy_hard.json: one pass at home, dark 0.1875
    for name, home_dark, cross_dark in (("off", 0.5, 0.0), ("scales_max", 0.5, 0.375)):
        for stem, dark, test in ((f"accuracy_hard_tta_{name}", home_dark, "hard"),
                                 (f"accuracy_hard_tta_{name}_scored_default", cross_dark,
                                  "default")):
            runs = {"mnc5": {"0": _run(0.8, dark, 1.0), "1": _run(0.9, dark, 1.0)}}
            report = {"setting": "hard", "test_setting": test, "iterations": 10, "runs": runs,
                      "summary": bench_accuracy.summarize(runs)}
            (tmp_path / f"{stem}.json").write_text(json.dumps(report))
    rows = [line for line in tables.transfer_table(tmp_path) if line.startswith("| hard")]
    assert rows == ["| hard -> default | mnc5 (test-time augmentation: 2 scales, best pass's "
                    "score, at home too) (2 seeds) | 0.850 -> 0.850 | 0.500 -> 0.500 (+0.000) | "
                    "0.250 -> 0.250 (+0.000) | 0.500 -> 0.375 (-0.125) | 0.900 -> 0.900 "
                    "(+0.000) |"]


def test_recipes_table_pairs_each_seed_with_itself_on_the_other_setting(tmp_path):
    """README's recipe table: ranges over seeds at home, then each seed's slice recall on the
    other benchmark minus its own at home; a seed that kept no detection is left out and counted."""
    home = {"mnc5": {"0": _run(0.8, 0.5, 1.0), "1": _run(0.9, 0.75, 1.0),
                     "2": _run(0.0, 0.0, 1.0)}}
    home["mnc5"]["2"]["overall"] = {"tp": 0, "fp": 0, "fn": 10, "precision": 0.0, "recall": 0.0,
                                    "f1": 0.0}
    cross = {"mnc5": {"0": _run(0.7, 0.25, 1.0), "1": _run(0.6, 0.7, 1.0),
                      "2": _run(0.0, 0.0, 1.0)}}
    for stem, runs in (("accuracy_hard_2400it", home), ("accuracy_hard_2400it_on_default", cross)):
        (tmp_path / f"{stem}.json").write_text(json.dumps({"runs": runs}))
    lines = tables.recipes_table(tmp_path, recipes={"mnc5": "cfg.yaml", "absent": "x.yaml"})
    # dark: seed 0 0.5 -> 0.25 (-0.25, outside 0.15), seed 1 0.75 -> 0.7 (-0.05); mean -0.15
    assert lines[2:] == ["| hard | `mnc5` | cfg.yaml | 2 (+1 with no detection) | 0.800-0.900 | "
                         "0.500 | 0.250 | 0.500-0.750 | 0.700-0.725 | 30.0-35.0 | 0.600-0.700 | "
                         "-0.150 | -0.150 (dark) | 1 of 2 |"]
    assert "bench:recipes" in tables.section_renderers(tmp_path)
    one = {"mnc5": {"0": home["mnc5"]["0"]}}
    (tmp_path / "accuracy_hard_2400it.json").write_text(json.dumps({"runs": one}))
    assert "| hard | `mnc5` | cfg.yaml | 1 (too few for a claim) | 0.800 | " in "\n".join(
        tables.recipes_table(tmp_path, recipes={"mnc5": "cfg.yaml"}))


def test_transfer_and_slice_diagnosis_tables(tmp_path):
    from bench import diagnose_slices

    home = _report(tmp_path)  # accuracy_hard.json
    runs = {"mnc5": {"0": _run(0.6, 0.0, 12.3), "1": _run(0.7, 0.125, 10.0)}}
    cross = dict(home, test_setting="default", runs=runs,
                 summary=bench_accuracy.summarize(runs))
    (tmp_path / "accuracy_hard_on_default.json").write_text(json.dumps(cross))
    lines = tables.transfer_table(tmp_path)
    # dark: 0.1875 at home, 0.0625 on the other benchmark; F1 0.85 -> 0.65
    assert ("| hard -> default | mnc5 (2 seeds) | 0.850 -> 0.650 | 0.500 -> 0.500 (+0.000) | "
            "0.250 -> 0.250 (+0.000) | 0.188 -> 0.062 (-0.125) | 0.900 -> 0.900 (+0.000) |"
            ) in lines
    assert "bench:transfer" in tables.section_renderers(tmp_path)
    # scored with an inference override: its row says so, beside the model's own inference
    resized = dict(cross, test_opts=["INPUT.MIN_SIZE_TEST", "867"])
    (tmp_path / "accuracy_hard_on_default_test867.json").write_text(json.dumps(resized))
    assert ("| hard -> default | mnc5 (inference: MIN_SIZE_TEST 867) (2 seeds) | 0.850 -> 0.650 | "
            ) in "\n".join(tables.transfer_table(tmp_path))
    # a variant of a single seed says so (no spread behind its numbers)
    one = {"mnc5": {"0": runs["mnc5"]["0"]}}
    single = dict(cross, runs=one, summary=bench_accuracy.summarize(one))
    (tmp_path / "accuracy_hard_on_default.json").write_text(json.dumps(single))
    assert "| hard -> default | mnc5 (1 seed) | " in "\n".join(tables.transfer_table(tmp_path))
    # a seed that kept no detection at the threshold (its scores all under it) is named
    collapsed = {"mnc5": {"0": runs["mnc5"]["0"], "1": _run(0.0, 0.0, 10.0),
                          "2": runs["mnc5"]["1"]}}
    collapsed["mnc5"]["1"]["overall"] = {"tp": 0, "fp": 0, "fn": 10, "precision": 0.0,
                                         "recall": 0.0, "f1": 0.0}
    (tmp_path / "accuracy_hard_on_default.json").write_text(json.dumps(
        dict(cross, runs=collapsed, summary=bench_accuracy.summarize(collapsed))))
    assert ("| hard -> default | mnc5 (seed 1: no detection kept at the threshold, zeros in the "
            "means) | ") in "\n".join(tables.transfer_table(tmp_path))
    assert tables.accuracy_tables(cross)[0].startswith("Trained on **hard**, scored on "
                                                       "**default**")
    slices = {f: {"n": 10, "rpn": 0.9, "rpn_07": 0.7, "detected": 0.8, "found": 0.6,
                  "poor_mask": 0.1, "median_best_iou": 0.7, "median_best_score": 0.8}
              for f in diagnose_slices.SLICES}
    report = {"runs": {"mnc5/hard": {"0": {"slices": slices}, "1": {"slices": slices}}}}
    report["summary"] = diagnose_slices.summarize(report["runs"])
    lines = tables.table_maker("diagnose_slices")(report)
    assert ("| hard | mnc5 | dark (10) | 0.900 | 0.700 | 0.800 (0.80-0.80) | 0.600 (0.60-0.60) | "
            "0.100 | 0.800 |") in lines
    assert any(line.startswith("| hard | mnc5 | dark, small (10) |") for line in lines)
    # a seed of a version without the size split: the slice is left out of the summary
    report["runs"]["mnc5/hard"]["1"] = {"slices": {f: e for f, e in slices.items()
                                                   if f != "dark_small"}}
    assert "dark_small" not in diagnose_slices.summarize(report["runs"])["mnc5/hard"]


def test_units_table_shows_each_layer_or_none():
    layer = {"units": 4, "rois": 10}
    report = {"runs": {
        "mnc5_x/default/seed0": {"tiles": 8, "max_score": 0.29, "layers": {
            "cls_heads.0.fc_masked": dict(layer, alive=0.879, active=0.1773),
            "cls_heads.0.fc_box": dict(layer, alive=0.711, active=0.0761),
            "cls_heads.0.fc_joint": dict(layer, alive=0.121, active=0.0034)}},
        "mnc5_y/hard/seed2": {"tiles": 8, "max_score": 0.9971, "layers": {
            "cls_heads.0.fc_masked": dict(layer, alive=1.0, active=0.07),
            "cls_heads.0.fc_box": dict(layer, alive=0.5, active=0.01)}}}}
    lines = tables.table_maker("diagnose_units")(report)
    assert lines[2] == ("| default | mnc5_x | 0 | 0.290 | 0.71 (0.076) | 0.88 (0.177) | "
                        "0.12 (0.003) |")
    assert lines[3] == "| hard | mnc5_y | 2 | 0.997 | 0.50 (0.010) | 1.00 (0.070) | none |"


def test_shape_summary_covers_the_seeds_that_kept_detections():
    empty = _run(0.0, 0.0, 5.0)
    empty["shape"] = {"all": dict.fromkeys(("iou", "ciou", "n_ratio", "polis", "mta",
                                            "boundary_f"))}  # no pair at the threshold
    summary = bench_accuracy.summarize({"mask_rcnn": {"0": empty, "1": _run(0.8, 0.1, 5.0)}})
    assert summary["mask_rcnn"]["shape_ciou"] == {"mean": 0.7, "min": 0.7, "max": 0.7,
                                                  "std": 0.0, "n": 1}
    assert summary["mask_rcnn"]["mean_city_f1"]["n"] == 2


def test_shape_table_shows_concave_pairs_and_hole_recall():
    run = _run(0.8, 0.1, 5.0)
    run["shape"]["all"]["hole_recall"] = 0.5
    run["shape"]["concave"] = dict(run["shape"]["all"], ciou=0.4, mta=60.0)
    report = {"setting": "default", "iterations": 10, "train_images_per_city": 2,
              "test_images_per_city": 1, "runs": {"mnc5": {"0": run}},
              "summary": bench_accuracy.summarize({"mnc5": {"0": run}})}
    lines = tables.accuracy_tables(report)
    at = next(i for i, line in enumerate(lines) if line.startswith("| variant | seeds | mean IoU"))
    assert lines[at].endswith("| C-IoU concave | MTA deg concave | hole recall |")
    row = lines[at + 2]
    assert row.endswith("| 0.400 (1 seed) | 60.0 (1 seed) | 0.500 (1 seed) |")


def test_paired_shape_compares_the_buildings_both_models_matched():
    import numpy as np
    import pandas as pd

    from bench import bench_paired_shape as paired

    cols = list(paired.METRICS)
    # truth rows 0-3 matched by A, 1-4 by B; rows 2 and 3 concave
    a = pd.DataFrame([[0.9, 0.5, 2.0, 1.0, 40.0, 0.8]] * 4, index=[0, 1, 2, 3], columns=cols)
    b = pd.DataFrame([[0.7, 0.4, 6.0, 2.0, 50.0, 0.6]] * 4, index=[1, 2, 3, 4], columns=cols)
    a.loc[3, "mta"] = 70.0  # A worse than B on one concave building
    b.loc[2, "ciou"] = np.nan  # an empty polygon: left out of that metric only
    flags = pd.DataFrame({"small": [True, True, False, False, False],
                          "concave": [False, False, True, True, False],
                          "dark": [False] * 5, "other": [False, False, False, False, True]})
    run = paired.compare(a, b, flags, seed=0)
    assert (run["pairs_a"], run["pairs_b"], run["common"]) == (4, 4, 3)
    mta = run["slices"]["all"]["mta"]
    assert mta["n"] == 3 and mta["a"] == 50.0 and mta["b"] == 50.0 and mta["diff"] == 0.0
    assert mta["a_better_share"] == round(2 / 3, 4)  # lower is better for MTA
    concave = run["slices"]["concave"]
    assert concave["mta"]["diff"] == 5.0 and concave["mta"]["a_better_share"] == 0.5
    assert concave["ciou"]["n"] == 1 and concave["ciou"]["diff"] == 0.1
    assert concave["iou"]["diff_ci95"] == [0.2, 0.2]  # the same difference on every building
    assert run["slices"]["small"]["iou"]["n"] == 1 and run["slices"]["dark"]["iou"] == {"n": 0}
    summary = paired.summarize({"0": run, "1": run})
    assert summary["all"]["iou"]["separated"] == "a"
    assert summary["all"]["polis"]["separated"] == "a"  # lower PoLiS is better
    assert summary["all"]["vertex_error"]["diff"]["mean"] == -4.0
    assert summary["all"]["mta"]["separated"] is None  # the interval holds 0
    assert "iou" not in summary["dark"]
    # a seed with too few common buildings in a slice is left out of that slice's summary
    few = paired.summarize({"0": run, "1": run}, min_pairs=3)
    assert few["all"]["iou"]["pairs"]["n"] == 2 and "iou" not in few["concave"]
    report = {"setting": "hard", "iterations": 10, "pair": ["mnc5", "mask_rcnn"], "min_pairs": 1,
              "metres_per_pixel": 0.3, "bootstrap_draws": paired.BOOTSTRAP,
              "runs": {"0": run, "1": run}, "summary": summary}
    lines = tables.table_maker("paired_shape_hard")(report)
    assert "0: 3 of 4 / 4" in lines[0]
    assert ("| concave | IoU | 2 | 2 | 0.900 ± 0.000 (0.900-0.900) | 0.700 ± 0.000 (0.700-0.700) "
            "| 0.200 ± 0.000 (0.200-0.200) | A (mnc5) |") in lines


def test_paired_shape_seed_pairs_meet_the_seeds_asked_for_and_refuse_bad_ones():
    import pytest

    from bench import bench_paired_shape as paired

    report = {"runs": {"a": {"0": {}, "1": {}, "2": {}}, "b": {"0": {}, "1": {}, "3": {}}}}
    assert paired.seed_pairs(report, "a", "b", None, "r.json") == [("0", "0"), ("1", "1")]
    assert paired.seed_pairs(report, "a", "b", ["0:0", "1:1", "2:03"], "r.json") == [
        ("0", "0"), ("1", "1"), ("2", "3")]
    with pytest.raises(SystemExit, match="b has no seed 2"):
        paired.seed_pairs(report, "a", "b", ["2:2"], "r.json")
    with pytest.raises(SystemExit, match="b's seeds repeat"):
        paired.seed_pairs(report, "a", "b", ["0:3", "2:3"], "r.json")
    with pytest.raises(SystemExit, match="A_SEED:B_SEED"):
        paired.seed_pairs(report, "a", "b", ["2-3"], "r.json")
    with pytest.raises(SystemExit, match="share no model seed"):
        paired.seed_pairs({"runs": {"a": {"0": {}}, "b": {"1": {}}}}, "a", "b", None, "r.json")
    # the table orders the pair keys by A's seed and says which is whose
    run = {"common": 3, "pairs_a": 4, "pairs_b": 5}
    table = tables.table_maker("paired_shape_hard")(
        {"setting": "hard", "iterations": 10, "pair": ["a", "b"], "min_pairs": 1,
         "metres_per_pixel": 0.3, "bootstrap_draws": paired.BOOTSTRAP,
         "runs": {"2:3": run, "10": run, "0": run}, "summary": {}})
    assert "per seed or pair of seeds, A's:B's" in table[0]
    assert "0: 3 of 4 / 5, 2:3: 3 of 4 / 5, 10: 3 of 4 / 5;" in table[0]


def test_export_table_names_the_peak_sizes_and_the_detections_per_tile():
    speed = {"mnc5 416 px / torch": {"s_per_tile_median": 0.2, "n": 6,
                                     "ratio_vs_mask_rcnn_same_backend": 1.25,
                                     "achieved_gflops": 90.0, "fraction_of_peak": 0.5625},
             "mask_rcnn 416 px / torch": {"s_per_tile_median": 0.16, "n": 6}}
    dets = {"mnc5 416 px": {"kept": 24.0, "at_threshold": 21.5, "threshold": 0.5, "tiles": 3}}
    report = {"threads": 2, "cpu": "Some CPU (AVX2)", "speed": speed, "peak_gflops": 160.0,
              "matmul_gflops": {"torch": 160.0, "onnxruntime": 150.0,
                                "by_size": {"torch": {"1024": 160.0, "2048": 148.0}}},
              "detections_per_tile": dets}
    lines = tables.table_maker("export_amd_epyc")(report)
    text = "\n".join(lines)
    assert ("peak = 160.0 GFLOP/s, the faster float32 matmul of torch 160.0, onnxruntime 150.0 "
            "(each the best of n x n matmuls, n = 1024, 2048)") in text
    assert "by_size" not in text
    # eager's time over the counted FLOPs' time at the peak: 1 / 0.5625
    assert "| mnc5 416 px / torch | 0.200 |  | 1.25 | 90 | 56% | 1.78x |" in lines
    assert "| mask_rcnn 416 px / torch | 0.160 |  |  |  |  |  |" in lines
    assert "| mnc5 416 px | 24 | 21.5 (>= 0.5) |" in lines
    # a report from before the sweep names its single size
    old = {**report, "matmul_gflops": {"torch": 160.0}}
    assert "torch 160.0 (2048 x 2048)." in "\n".join(tables.table_maker("export")(old))


def test_cpu_model_names_the_vector_extension(tmp_path):
    from bench.bench_demo import cpu_model

    block = ("processor\t: {i}\nvendor_id\t: AuthenticAMD\ncpu family\t: 23\nmodel\t\t: 49\n"
             "model name\t: AMD EPYC\nflags\t\t: fpu sse2 {flags}\n\n")
    info = tmp_path / "cpuinfo"
    info.write_text(block.format(i=0, flags="avx avx2 fma") + block.format(i=1, flags="avx512f"))
    assert cpu_model(info) == "AMD EPYC (cpu family 23, model 49, AVX2)"
    info.write_text(block.format(i=0, flags="avx2 avx512f avx512bw"))
    assert cpu_model(info) == "AMD EPYC (cpu family 23, model 49, AVX-512)"
    assert cpu_model(tmp_path / "missing").endswith("no AVX2)")


def test_bench_export_exports_again_when_the_weights_or_the_code_change(tmp_path):
    from bench import bench_export
    from mnc_d2.export.exporter import graph_code_sha256
    from mnc_d2.inference.scenes import sha256_of

    run, out = tmp_path / "run", tmp_path / "export"
    run.mkdir(), out.mkdir()
    (run / "model_final.pth").write_bytes(b"seed 0 weights")
    assert not bench_export._exported(run, out)  # nothing exported yet
    meta = {"source": {"weights_sha256": sha256_of(run / "model_final.pth"),
                       "graph_code_sha256": graph_code_sha256()}}
    (out / "export.json").write_text(json.dumps(meta))
    assert bench_export._exported(run, out)
    (run / "model_final.pth").write_bytes(b"retrained weights")
    assert not bench_export._exported(run, out)
    meta["source"]["weights_sha256"] = sha256_of(run / "model_final.pth")
    meta["source"]["graph_code_sha256"] = "0" * 64  # written by other export code
    (out / "export.json").write_text(json.dumps(meta))
    assert not bench_export._exported(run, out)


def test_cascade_shortcut_choice_is_the_smallest_value_within_the_tolerance():
    from bench.select_cascade_shortcut import choose

    def run(*f1):  # F1 without the shortcut, then at 0.5 and 0.8
        return {k: {"mean_city_f1": v} for k, v in zip(("0", "0.5", "0.8"), f1)}

    runs = {"a": run(0.90, 0.895, 0.899), "b": run(0.80, 0.800, 0.7985)}
    assert choose(runs, [0.8, 0.5], 0.002) == 0.8  # 0.5 costs run a 0.005
    assert choose(runs, [0.8, 0.5], 0.01) == 0.5
    assert choose(runs, [0.8, 0.5], 0.001) == 0  # none qualifies: no shortcut


def test_gpu_agreement_matches_detections_one_to_one_by_mask_iou():
    import numpy as np

    from bench.bench_gpu import agreement
    from mnc_d2.export.runtime import Detections

    def dets(scores, boxes):
        masks = np.zeros((len(boxes), 20, 20), bool)
        for m, (x0, y0, x1, y1) in zip(masks, boxes):
            m[y0:y1, x0:x1] = True
        return Detections(np.zeros((len(boxes), 4)), np.asarray(scores, np.float32),
                          np.zeros(len(boxes), int), masks)

    # reference: two buildings and a weak one; the other: the first exact, the second shifted
    # by one pixel (IoU 0.6), the weak one missing, and an extra detection overlapping the first
    ref = dets([0.9, 0.8, 0.3], [(0, 0, 10, 10), (10, 10, 15, 15), (0, 15, 5, 20)])
    oth = dets([0.85, 0.7, 0.6], [(0, 0, 10, 10), (11, 10, 16, 15), (0, 0, 9, 10)])
    out = agreement([ref], [oth], 0.5)
    assert (out["reference_detections"], out["detections"]) == (2, 3)
    # the exact pair and the shifted pair match; the extra one has no partner left
    assert (out["matched_iou50"], out["matched_iou90"]) == (2, 1)
    assert out["median_matched_iou"] == pytest.approx((1.0 + 20 / 30) / 2, abs=1e-4)
    assert out["max_score_diff"] == pytest.approx(0.1, abs=1e-6)
    assert agreement([ref], [oth], 0.0)["reference_detections"] == 3
    assert agreement([ref], [dets([], [])], 0.5)["matched_iou50"] == 0


def test_gpu_table_carries_the_report_numbers():
    report = {"device": "cuda", "gpu": "G", "torch": "2.x", "cuda": "13", "rounds": 2,
              "tiles": ["a", "b"], "batch": 8, "cudnn_allow_tf32": True,
              "matmul_tflops": {"fp32": 50.0},
              "times": {"mnc5 r50 650 px / eager fp32": {"s_per_tile_median": 0.1,
                                                         "ratio_vs_mask_rcnn": 1.25},
                        "mask_rcnn r50 650 px / eager fp32": {"s_per_tile_median": 0.08}},
              "flops": {"mnc5 r50 650 px": {"gflops": 250.0},
                        "mask_rcnn r50 650 px": {"gflops": 400.0}},
              "agreement": {}, "errors": {"x / torchscript (CPU export)":
                                          "RuntimeError: The following ...\n  trace\n"
                                          "RuntimeError: Expected all tensors on one device\n"},
              "earlier_run": {"times": {"mnc5 r50 650 px / eager fp32": {"s_per_tile_median":
                                                                         0.09},
                                        "mask_rcnn r50 650 px / eager fp32": {
                                            "s_per_tile_median": 0.1}}}}
    lines = tables.table_maker("gpu_h200")(report)
    rows = [line for line in lines if line.startswith("| mnc5") or line.startswith("| mask")]
    # ms, earlier ms, earlier ratio, speed-up, ratio, GFLOPs, 250 GFLOPs in 0.1 s = 2.5 TFLOP/s
    assert rows[0] == "| mnc5 | r50 650 px | eager fp32 | 100.0 | 90.0 | 0.90 | - | 1.25 | 250.0 " \
                      "| 2.50 (5.0%) |"
    assert rows[1].endswith("| 80.0 | 100.0 | - | - | - | 400.0 | 5.00 (10.0%) |")
    assert lines[-1] == ("- x / torchscript (CPU export): RuntimeError: Expected all tensors on "
                         "one device")


def test_gpu_train_table_and_synthetic_targets():
    import numpy as np

    from bench.bench_gpu_train import synthetic_batch

    report = {"gpu": "G", "torch": "2.x", "batch": 2, "tile_px": [650, 650], "iters": 25,
              "warmup": 5, "targets": "20 random boxes per tile",
              "runs": {"mnc5_r50 / fp32": {"s_per_step_median": 0.1, "losses_finite": True},
                       "mnc5_r50 / amp fp16": {"s_per_step_median": 0.08,
                                               "losses_finite": False},
                       "mask_rcnn_r50 / fp32": {"s_per_step_median": 0.05,
                                                "losses_finite": True}}, "errors": {}}
    rows = [line for line in tables.table_maker("gpu_train_h200")(report)
            if line.startswith(("| mnc5", "| mask"))]
    assert rows == ["| mnc5_r50 | fp32 | 100.0 | - | 2.00 | - | yes |",
                    "| mnc5_r50 | amp fp16 | 80.0 | 1.25 | - | - | NO |",
                    "| mask_rcnn_r50 | fp32 | 50.0 | - | - | - | yes |"]
    batch = synthetic_batch([np.zeros((64, 48, 3), np.float32)], "cpu", seed=0, boxes=5)
    inst = batch[0]["instances"]
    assert batch[0]["image"].shape == (3, 64, 48) and len(inst) == 5
    boxes = inst.gt_boxes.tensor
    assert (boxes[:, 2] <= 48).all() and (boxes[:, 3] <= 64).all() and (boxes >= 0).all()
    # each mask is its box
    assert np.allclose(inst.gt_masks.area().numpy(), inst.gt_boxes.area().numpy(), rtol=1e-5)


def test_merge_reports_joins_runs_under_their_own_key_and_leaves_the_rest(tmp_path):
    from bench import merge_reports

    base = _report()
    control = _report()  # the same benchmark retrained elsewhere: its mnc5 differs
    control["runs"] = {"mnc5": {"0": _run(0.7, 0.5, 20.0), "2": _run(0.6, 0.75, 21.0)}}
    merged = merge_reports.merge_runs(base, control, ["mnc5"], rename="mnc5_retrained",
                                      seeds=[2])
    assert merged["runs"]["mnc5"] == base["runs"]["mnc5"]  # the committed runs stay
    assert merged["runs"]["mask_rcnn"] == base["runs"]["mask_rcnn"]
    assert merged["runs"]["mnc5_retrained"] == {"2": control["runs"]["mnc5"]["2"]}
    assert merged["summary"]["mnc5_retrained"]["recall_dark"]["mean"] == 0.75
    assert merged["summary"]["mnc5"] == base["summary"]["mnc5"]
    assert merged["model_seeds"] == [0, 1, 2]
    assert "mnc5_retrained" not in base["runs"]  # the base itself is not changed
    # a clash, another benchmark, a seed or variant the other report lacks: errors naming them
    with pytest.raises(ValueError, match="already has 'mnc5' seed.*'0'.*--replace"):
        merge_reports.merge_runs(base, control, ["mnc5"])
    replaced = merge_reports.merge_runs(base, control, ["mnc5"], replace=True)
    assert replaced["runs"]["mnc5"]["0"] == control["runs"]["mnc5"]["0"]
    assert replaced["runs"]["mnc5"]["1"] == base["runs"]["mnc5"]["1"]
    with pytest.raises(ValueError, match="iterations is 20"):
        merge_reports.merge_runs(base, {**control, "iterations": 20}, ["mnc5"], rename="x")
    with pytest.raises(ValueError, match=r"seed\(s\) \['1'\]"):
        merge_reports.merge_runs(base, control, ["mnc5"], rename="x", seeds=[1])
    with pytest.raises(ValueError, match="no runs of 'mask_rcnn'"):
        merge_reports.merge_runs(base, control, ["mask_rcnn"], rename="x")
    # the command line writes the joined report atomically over the base
    (tmp_path / "base.json").write_text(json.dumps(base))
    (tmp_path / "control.json").write_text(json.dumps(control))
    merge_reports.main([str(tmp_path / "base.json"), "--from", str(tmp_path / "control.json"),
                        "--variants", "mnc5", "--as", "mnc5_retrained",
                        "--output", str(tmp_path / "base.json")])
    written = json.loads((tmp_path / "base.json").read_text())
    assert sorted(written["runs"]) == ["mask_rcnn", "mnc5", "mnc5_retrained"]
    assert written["runs"]["mnc5_retrained"] == control["runs"]["mnc5"]
    with pytest.raises(SystemExit, match="already has 'mnc5_retrained'"):
        merge_reports.main([str(tmp_path / "base.json"), "--from",
                            str(tmp_path / "control.json"), "--variants", "mnc5", "--as",
                            "mnc5_retrained"])


def test_bench_layout_names_the_folders_every_script_reads(tmp_path):
    """One definition of bench_accuracy.py's folder names: the names the committed reports'
    commands and caches use, and a clear error for a split that has none."""
    from bench import layout

    assert layout.data_dir(tmp_path, "test", 1, 30, "default") == tmp_path / "test_seed1_30"
    assert layout.data_dir(tmp_path, "train", 0, 60, "hard") == tmp_path / "train_seed0_60_hard"
    assert layout.run_dir(tmp_path / "runs", "mnc5", "60img_2400it", "hard", 2) == \
        tmp_path / "runs" / "mnc5_60img_2400it_hard" / "seed2"
    assert layout.run_dir(tmp_path, "mask_rcnn", "60img_600it", "default", 0) == \
        tmp_path / "mask_rcnn_60img_600it" / "seed0"
    with pytest.raises(ValueError, match="'val'"):
        layout.data_name("val", 1, 30, "default")
    # the scripts read the same folders: bench_accuracy's cached runs, bench_export_pair's tiles
    from bench.bench_export_pair import test_root
    assert test_root(tmp_path, 30, "hard") == tmp_path / "test_seed1_30_hard" / "spacenet"
    assert test_root(tmp_path, 30, "default", 2) == tmp_path / "test_seed2_30" / "spacenet"
    assert bench_accuracy.setting_suffix("hard") == "_hard"
