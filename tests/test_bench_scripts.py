"""Every benchmark script runs end to end at its smallest setting and writes a report its table
renderer reads (the numbers of such tiny runs mean nothing; that the scripts still run does)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import tables

REPO = Path(__file__).resolve().parents[1]
ITERS, IMAGES = 2, 4  # bench_accuracy's tag: mnc5_4img_2it


def _bench(script: str, *args: str, timeout: int = 600) -> dict:
    out = subprocess.run([sys.executable, "-W", "ignore", "-m", f"bench.{script}", *args],
                         cwd=REPO, capture_output=True, text=True, timeout=timeout,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


@contextlib.contextmanager
def mask_rcnn_stand_in(work: Path):
    """The fixture's work has no Mask R-CNN run: its MNC run stands in for one (the same model
    twice) while the block runs, for the scripts that pair the two."""
    stand_in = work / "runs" / f"mask_rcnn_{IMAGES}img_{ITERS}it"
    stand_in.mkdir()
    (stand_in / "seed0").symlink_to(work / "runs" / f"mnc5_{IMAGES}img_{ITERS}it" / "seed0")
    try:
        yield
    finally:
        shutil.rmtree(stand_in)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """bench_accuracy.py's smallest run: 2 iterations on 4 tiles per city, scored on 2."""
    work = tmp_path_factory.mktemp("bench")
    report = _bench("bench_accuracy", "--iters", str(ITERS), "--images", str(IMAGES),
                    "--variants", "mnc5", "--work", str(work))
    assert report["runs"]["mnc5"]["0"]["train_wall_s"] > 0
    assert report["summary"]["mnc5"]["mean_city_f1"]["n"] == 1
    assert tables.accuracy_tables(report)[0].startswith("Setting **default**")
    return work


def test_accuracy_diagnosis_and_polygonisation_scripts(work):
    run = work / "runs" / f"mnc5_{IMAGES}img_{ITERS}it" / "seed0"
    diag = _bench("diagnose_slices", "--variants", "mnc5", "--settings", "default",
                  "--model-seeds", "0", "--iters", str(ITERS), "--images", str(IMAGES),
                  "--work", str(work))
    slices = diag["runs"]["mnc5/default"]["0"]["slices"]
    assert set(slices) == {"small", "concave", "dark", "other", "dark_small", "dark_large"}
    assert slices["dark_small"]["n"] + slices["dark_large"]["n"] == slices["dark"]["n"]
    assert tables.table_maker("diagnose_slices")(diag)[0].startswith("| data | variant")
    units = _bench("diagnose_units", "--variants", "mnc5", "--model-seeds", "0", "--iters",
                   str(ITERS), "--images", str(IMAGES), "--work", str(work), "--tiles", "1")
    layers = units["runs"]["mnc5/default/seed0"]["layers"]
    assert {k.split(".")[-1] for k in layers} == {"fc_box", "fc_masked", "fc_joint"}
    assert all(0 <= v["alive"] <= 1 and v["rois"] > 0 for v in layers.values())
    assert tables.table_maker("diagnose_units")(units)[0].startswith("| data | variant | seed")
    poly = _bench("bench_polygonize", "--runs", str(run), "--work", str(work),
                  "--test-images", str(IMAGES // 2), "--score-thresh", "0.0")
    assert set(poly["summary"]) == set(poly["methods"]) and "library" in poly
    assert tables.table_maker("polygonize_default")(poly)[0].startswith("Setting **default**")
    transfer = _bench("bench_accuracy", "--iters", str(ITERS), "--images", str(IMAGES),
                      "--variants", "mnc5", "--work", str(work), "--test-setting", "hard")
    assert transfer["test_setting"] == "hard" and transfer["setting"] == "default"
    # where the transferred model loses each slice: read from that evaluation, on hard's truth
    diag_t = _bench("diagnose_slices", "--variants", "mnc5", "--settings", "default",
                    "--test-setting", "hard", "--model-seeds", "0", "--iters", str(ITERS),
                    "--images", str(IMAGES), "--work", str(work))
    assert list(diag_t["runs"]) == ["mnc5/default -> hard"]
    counts = transfer["runs"]["mnc5"]["0"]["slice_counts"]
    assert {f: diag_t["runs"]["mnc5/default -> hard"]["0"]["slices"][f]["n"] for f in counts
            } == counts
    assert any(line.startswith("| default -> hard | mnc5 |")
               for line in tables.table_maker("diagnose_slices")(diag_t))
    # the paired shape comparison reads the report's evaluations (a run paired with itself:
    # every matched building is common); a report whose counts the files on disk do not
    # reproduce is refused, naming the run
    source = work / f"report_{IMAGES}img_{ITERS}it.json"
    paired = _bench("bench_paired_shape", "--report", str(source), "--pair", "mnc5", "mnc5")
    assert paired["runs"]["0"]["common"] == paired["runs"]["0"]["pairs_a"]
    assert tables.table_maker("paired_shape_default")(paired)[0].startswith("Setting **default**")
    rect = _bench("bench_paired_shape", "--report", str(source), "--pair", "mnc5", "mnc5",
                  "--regularize", "2", "--thresholds", "best")
    assert rect["regularize_min_edge"] == 2.0 and rect["thresholds"] == "best"
    assert "rectilinear option" in tables.table_maker("paired_shape_default_rectilinear")(rect)[0]
    # an evaluation with inference overrides writes its own proposals folder: the config's
    # evaluation, which the diagnosis and the paired comparison read, stays as it was
    native = sorted((run / f"bench_eval_test_seed1_{IMAGES // 2}").glob("*/spacenet_proposals.csv"))
    before = [p.read_bytes() for p in native]
    opts = _bench("bench_accuracy", "--iters", str(ITERS), "--images", str(IMAGES),
                  "--variants", "mnc5", "--work", str(work),
                  "--test-opts", "MODEL.MNC.NMS_AFTER_VOTING", "False")
    assert [p.read_bytes() for p in native] == before and len(native) == 2
    assert len(list((run / f"bench_eval_test_seed1_{IMAGES // 2}_NMS_AFTER_VOTING-False")
                    .glob("*/spacenet_proposals.csv"))) == 2
    _bench("bench_paired_shape", "--report", str(source), "--pair", "mnc5", "mnc5")
    (work / "opts.json").write_text(json.dumps(opts))
    _bench("bench_paired_shape", "--report", str(work / "opts.json"), "--pair", "mnc5", "mnc5")
    doctored = json.loads(source.read_text())
    doctored["runs"]["mnc5"]["0"]["overall"]["fn"] += 1
    (work / "doctored.json").write_text(json.dumps(doctored))
    out = subprocess.run([sys.executable, "-W", "ignore", "-m", "bench.bench_paired_shape",
                          "--report", str(work / "doctored.json"), "--pair", "mnc5", "mnc5"],
                         cwd=REPO, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert out.returncode != 0 and "mnc5 seed 0" in out.stderr and "retrained" in out.stderr


def test_cascade_shortcut_selection_reads_training_tiles_only(work):
    """select_cascade_shortcut.py evaluates a run on its own training tiles (their folder, not
    the benchmark's) without and with each candidate, and names the value its rule chose."""
    report = _bench("select_cascade_shortcut", "--shortcut", "nms", "--candidates", "0.5",
                    "--variants", "mnc5", "--settings", "default", "--model-seeds", "0",
                    "--iters", str(ITERS), "--images", str(IMAGES), "--work", str(work))
    run = report["runs"]["mnc5 default seed 0"]
    assert set(run) == {"0", "0.5"} and report["key"] == "MODEL.MNC.TEST_CASCADE_NMS"
    assert report["chosen"] in (0, 0.5)
    folder = work / "runs" / f"mnc5_{IMAGES}img_{ITERS}it" / "seed0"
    assert (folder / f"bench_eval_train_seed0_{IMAGES}_TEST_CASCADE_NMS-0.5").is_dir()
    assert tables.table_maker("cascade_shortcut_nms")(report)[0].startswith(
        "`MODEL.MNC.TEST_CASCADE_NMS` on each run's own training tiles")


def test_prediction_scripts(work, tmp_path):
    run = work / "runs" / f"mnc5_{IMAGES}img_{ITERS}it" / "seed0"
    predict = _bench("bench_predict", "--run", str(run), "--size", "700")
    assert predict["scene_px"] == 700 and tables.table_maker("predict")(predict)
    many = _bench("bench_predict_many", "--run", str(run), "--scenes", "2", "--size", "160",
                  "--rounds", "1")
    assert [r["statuses"] for rs in many["runs"].values() for r in rs] == [{"ok": 2}] * 2
    assert many["agreement_first_round"]["scenes"] == 2
    assert tables.table_maker("predict_many")(many)[-1].startswith("Ray's wall time over local's")
    # test-time augmentation's cost: every pass set on the same tiles, paired with one pass
    tiles = work / f"test_seed1_{IMAGES // 2}" / "spacenet" / "*" / "RGB-PanSharpen" / "*.tif"
    tta = _bench("bench_tta", "--run", str(run), "--tiles", str(tiles), "--count", "2",
                 "--rounds", "1", "--sets", "off", "flip", "d4")
    assert {k: v["passes"] for k, v in tta["sets"].items()} == {"off": 1, "flip": 2, "d4": 8}
    assert tta["pairs_per_set"] == 2 and tta["sets"]["off"]["ratio_to_one_pass"]["median"] == 1
    assert tables.table_maker("tta_time")(tta)[-1].startswith("| 8 flips and turns (`d4`) | 8 |")


def test_seam_and_input_scale_scripts(work):
    """bench_seams.py and bench_input_scale.py on one small scene per style: every layout and
    way of putting the tiles together, every crop side and resize, reach their tables."""
    run = work / "runs" / f"mnc5_{IMAGES}img_{ITERS}it" / "seed0"
    seams = _bench("bench_seams", "--runs", str(run), "--size", "866", "--scenes-per-style", "1")
    methods = ("pieces", "any_overlap", "seams")
    assert set(seams["summary"]) == {"whole/whole", "collar_overlap/seams_grid",
                                     *(f"{layout}/{method}" for layout in tables.SEAM_LAYOUTS
                                       for method in methods)}
    lines = tables.seams_table(seams)
    # description, header, the whole scene, 3 methods of 4 layouts, the collar's grid-edge rule
    assert len(lines) == 2 + 2 + 1 + 4 * 3 + 1
    assert lines[-5].startswith("| 2 x 2 tiles of 700 px, overlapping by 100 px | merge_")
    assert lines[-1].startswith("| 2 scenes 800 px wide overlapping by 734 px, the first with "
                                "a 150 px nodata collar | merge_footprints.py, each scene's "
                                "grid as its edge")
    scale = _bench("bench_input_scale", "--runs", str(run), "--size", "866", "--crops", "433",
                   "--scenes-per-style", "1")
    assert set(scale["summary"]) == {"433/fixed", "433/per_image"}
    assert tables.input_scale_table(scale)[-1].startswith("| 433 px |")


def test_radiometry_script(work):
    """bench_radiometry.py: the cached run through predict.py on the benchmark's tiles as they
    are and as 8-bit exports, with and without --match-radiometry, scored like bench_accuracy
    (the tiles as they are without the option give bench_accuracy's own evaluation)."""
    report = _bench("bench_radiometry", "--setting", "default", "--model-seeds", "0",
                    "--iters", str(ITERS), "--images", str(IMAGES), "--test-settings",
                    "default", "--work", str(work))
    assert sorted(report["runs"]) == ["default/8bit/matched", "default/8bit/plain",
                                      "default/as_is/matched", "default/as_is/plain"]
    accuracy = json.loads((work / f"report_{IMAGES}img_{ITERS}it.json").read_text())
    assert report["runs"]["default/as_is/plain"]["0"]["overall"] == accuracy["runs"]["mnc5"][
        "0"]["overall"]
    tiles = sorted((work / "radiometry" / f"inputs_test_seed1_{IMAGES // 2}" / "8bit").iterdir())
    assert len(tiles) == 2 * (IMAGES // 2)  # two cities
    lines = tables.table_maker("radiometry_hard")(report)
    assert lines[0].startswith("| trained -> scored | tiles | option | seeds | mean city F1")
    assert any("| 8-bit exports (2-98% stretch) | --match-radiometry | 1 |" in x for x in lines)


def test_export_script(work, tmp_path):
    report = _bench("bench_export", "--accuracy-work", str(work), "--tag",
                    f"{IMAGES}img_{ITERS}it", "--test-images", str(IMAGES // 2), "--settings",
                    "default", "--seeds", "0", "--speed-tiles", "1", "--rounds", "1",
                    "--scene-size", "700", "--work", str(tmp_path), "--calibration-images",
                    "2", "--parts", "accuracy",
                    "speed", "detections", "flops", "int8_recipes", "int8_accuracy",
                    "int8_speed", "stage_time", "scene",
                    timeout=1200)
    (row,) = report["accuracy"]
    (int8_row,) = report["int8"]["accuracy"]
    (recipes,) = report["int8"]["recipes"]["models"]
    from bench.bench_export import RECIPES

    assert recipes["tiles"] > 0 and recipes[next(iter(RECIPES))]["float_detections"] >= 0
    assert set(report["int8"]["recipes"]["total"]) == set(RECIPES)
    assert int8_row["onnxruntime-int8"]["tiles"] == row["torch"]["tiles"]
    assert report["int8"]["speed"]["mnc5 416 px / onnxruntime-int8"]["s_per_tile_median"] > 0
    assert "paired_ratio" not in report  # not asked for
    assert any(line.startswith("INT8, setting **default**") for line in
               tables.table_maker("export")(report))
    assert set(row) >= {"torch", "onnxruntime", "openvino", "torchscript"}
    assert report["speed"]["mnc5 416 px / onnxruntime"]["s_per_tile_median"] > 0
    assert report["flops"]["mnc5 416"]["gflops"] > 0 and report["peak_gflops"] > 0
    peaks = report["matmul_gflops"]
    assert report["peak_gflops"] == max(v for k, v in peaks.items() if k != "by_size")
    assert peaks["torch"] == max(peaks["by_size"]["torch"].values())
    stages = report["stage_time"]["mnc5 416 px / onnxruntime"]["by_group"]
    assert {"backbone", "rpn", "roi_heads", "selection"} <= set(stages)
    assert 0 < stages["backbone"]["fraction_of_peak"] and stages["backbone"]["ms"] > 0
    int8 = report["stage_time"]["mnc5 416 px / onnxruntime-int8"]["by_group"]["backbone"]
    assert int8["gflops_per_s"] > 0 and "fraction_of_peak" not in int8  # a float32 peak
    # OpenVINO's int8 kernels profiled too, the MNC's heads by part
    ov8 = report["stage_time"]["mnc5 416 px / openvino-int8"]
    assert "fraction_of_peak" not in ov8["by_group"]["backbone"]
    assert ov8["ms_by_part"]["stages_2_3"] > 0 and ov8["top_ops_ms_by_part"]["stages_2_3"]
    assert any(line.startswith("Milliseconds per tile in each part") for line in
               tables.table_maker("export")(report))
    dets = report["detections_per_tile"]["mnc5 416 px"]
    assert dets["tiles"] == 1 and 0 <= dets["at_threshold"] <= dets["kept"]
    assert [(r["backend"], r["pipelined"]) for r in report["scene"]["runs"]] == [
        (backend, pipelined) for backend in ("torch", "onnxruntime", "onnxruntime-int8")
        for pipelined in (True, False)]
    assert any(line.startswith("Setting **default**") for line in
               tables.table_maker("export")(report))
    # The paired part times MNC against Mask R-CNN; this work has no Mask R-CNN run, so the MNC
    # run stands in for it (the same model twice; the ratio's value is the benchmark's, not
    # asserted here).
    with mask_rcnn_stand_in(work):
        paired = _bench("bench_export", "--accuracy-work", str(work), "--tag",
                        f"{IMAGES}img_{ITERS}it", "--test-images", str(IMAGES // 2),
                        "--speed-tiles", "2", "--rounds", "1", "--work", str(tmp_path),
                        "--calibration-images", "2", "--parts", "paired_ratio",
                        timeout=900)
    rows = paired["paired_ratio"]
    from bench.bench_export import CASCADE_NMS

    assert set(rows) == {f"{px} px{shortcut} / {b}" for px in ("416", "650")
                         for shortcut in ("", f", cascade NMS {CASCADE_NMS}")
                         for b in ("torch", "onnxruntime", "openvino", "onnxruntime-int8",
                                   "openvino-int8")}
    assert all(e["n"] == 2 and 0 < e["q1"] <= e["median"] <= e["q3"] for e in rows.values())
    assert any(line.startswith("MNC / Mask R-CNN per tile, paired") for line in
               tables.table_maker("export")(paired))


def _demo_pair(work: Path, tmp_path: Path, *args: str) -> dict:
    """bench_export_pair.py on the fixture's MNC and its Mask R-CNN stand-in, seed 0, one
    round over one speed tile (``args`` may give more), two calibration tiles."""
    return _bench("bench_export_pair", "--mnc", "mnc5", "--mask-rcnn", "mask_rcnn", "--tag",
                  f"{IMAGES}img_{ITERS}it", "--train-setting", "default", "--seeds", "0",
                  "--speed-tiles", "1", "--rounds", "1", "--test-images", str(IMAGES // 2),
                  "--calibration-images", "2", "--accuracy-work", str(work), "--work",
                  str(tmp_path), *args, timeout=900)


def test_export_pair_script(work, tmp_path):
    with mask_rcnn_stand_in(work):
        report = _demo_pair(work, tmp_path, "--test-settings", "default", "--speed-tiles", "2")
    entry = report["seeds"]["0"]
    assert report["test_seed"] == 1  # bench_accuracy's benchmark tiles unless --test-seed
    acc = entry["accuracy"]["default"]
    assert set(acc) == {"torch", "onnxruntime", "openvino", "onnxruntime-int8", "openvino-int8"}
    assert all(acc[b]["tiles"] == acc["torch"]["tiles"] > 0 for b in acc)
    assert "f1_minus_eager" in acc["onnxruntime-int8"] and "f1_minus_eager" not in acc["torch"]
    px = entry["input_px"]
    assert set(entry["paired"]) == {f"{px} px / {b}" for b in acc}
    assert all(e["n"] == 2 and e["mnc_s_median"] > 0 and e["mask_rcnn_s_median"] > 0
               for e in entry["paired"].values())
    assert report["paired_median_over_seeds"][f"{px} px / openvino"]["seeds"] == 1
    assert set(entry["detections_per_tile"]) == {"mnc", "mask_rcnn"}
    assert entry["flops"]["mnc"]["gflops"] > 0
    lines = tables.table_maker("export_pair_recipe")(report)
    assert any(line.startswith("`mnc5` trained on **default**") for line in lines)
    assert any(line.startswith("MNC (`mnc5`) against Mask R-CNN") for line in lines)
    # an inference override's rows join the config's own rows of the same report
    (tmp_path / "first.json").write_text(json.dumps(report))
    with mask_rcnn_stand_in(work):
        more = _demo_pair(work, tmp_path, "--parts", "paired", "detections", "--mnc-opts",
                          "MODEL.MNC.TEST_CASCADE_NMS", "0.8", "--add-to",
                          str(tmp_path / "first.json"))
    rows = more["seeds"]["0"]["paired"]
    assert set(rows) == {f"{px} px{extra} / {b}" for b in acc
                         for extra in ("", ", TEST_CASCADE_NMS 0.8")}
    assert rows[f"{px} px, TEST_CASCADE_NMS 0.8 / torch"]["n"] == 1
    assert set(more["seeds"]["0"]["detections_per_tile"]) == {
        "mnc", "mask_rcnn", "mnc, TEST_CASCADE_NMS 0.8"}
    assert more["seeds"]["0"]["accuracy"] == entry["accuracy"]  # kept from the first report
    # --input-px: both models at another input size, rows keyed by it beside the config's own
    (tmp_path / "more.json").write_text(json.dumps(more))
    with mask_rcnn_stand_in(work):
        sized = _demo_pair(work, tmp_path, "--parts", "paired", "--backends", "onnxruntime",
                           "--input-px", "96", "--add-to", str(tmp_path / "more.json"))
    rows = sized["seeds"]["0"]["paired"]
    assert set(rows) == set(more["seeds"]["0"]["paired"]) | {
        "96 px / torch", "96 px / onnxruntime"}
    assert sized["seeds"]["0"]["input_px"] == px  # the config's, as the flops table reads it
    small = json.loads((tmp_path / f"mask_rcnn_{IMAGES}img_{ITERS}it_seed0_MIN_SIZE_TEST-96_"
                                   "MAX_SIZE_TEST-96" / "export.json").read_text())
    assert small["input"]["resized"] == [96, 96]  # the Mask R-CNN's export at that size too
    # --backends: a subset (eager always among them), in the script's order
    with mask_rcnn_stand_in(work):
        few = _demo_pair(work, tmp_path, "--parts", "accuracy", "paired", "pools", "warps",
                         "optimisers", "roialign", "--backends", "openvino-int8",
                         "onnxruntime-int8", "--test-settings", "default", "--openvino-warps",
                         "roialign")
    # --openvino-warps roialign: scored from a folder with OpenVINO's own graphs beside the
    # default ones, each backend through the file predict.py picks for it
    scored = few["seeds"]["0"]["accuracy"]["default"]
    assert list(scored) == ["torch", "onnxruntime-int8", "openvino-int8"]
    assert (scored["onnxruntime-int8"]["graph"], scored["onnxruntime-int8"]["warp_layout"]) == (
        "model.int8.onnx", "stacked")
    assert (scored["openvino-int8"]["graph"], scored["openvino-int8"]["warp_layout"]) == (
        "model.int8.openvino.onnx", "roialign")
    assert "| openvino-int8 (model.int8.openvino.onnx, roialign warps) |" in "\n".join(
        tables.table_maker("export_pair_recipe")(few))
    assert list(few["seeds"]["0"]["paired"]) == [
        f"{px} px / {b}" for b in ("torch", "onnxruntime-int8", "openvino-int8")]
    # the fully connected mask head's int8 graph has no pooling rewired: no pools rows
    assert "pools" not in few["seeds"]["0"]
    # the stacked-level warps against the level-by-level export of the same run, per exported
    # backend, with the two exports' detections on the timed tile
    warps, same = few["seeds"]["0"]["warps"], few["seeds"]["0"]["warps_agreement"]
    assert list(warps) == list(same) == [f"{px} px / {b}"
                                         for b in ("onnxruntime-int8", "openvino-int8")]
    assert all(e["n"] == 1 and e["stacked_s_median"] > 0 and e["levels_s_median"] > 0
               for e in warps.values())
    # (int8 graphs of a barely trained model, each calibrated on its own float graph's
    # activations: a few of its many near-threshold detections may come or go)
    assert all(a["reference_detections"] > 0 and
               a["matched_iou50"] >= 0.8 * max(a["reference_detections"], a["detections"])
               for a in same.values())
    levels = tmp_path / f"mnc5_{IMAGES}img_{ITERS}it_seed0_level_warps"
    assert json.loads((levels / "export.json").read_text())["warp_layout"] == "levels"
    assert any(line.startswith("The MNC exported by this version")
               for line in tables.table_maker("export_pair_recipe")(few))
    # each model's int8 graph in predict.py's onnxruntime session against one with every
    # optimiser on (OpenVINO leaves none off: no rows), and the two sessions' detections
    tuned, same = few["seeds"]["0"]["optimisers"], few["seeds"]["0"]["optimisers_agreement"]
    assert list(tuned) == list(same) == [f"{px} px / {m} / onnxruntime-int8"
                                         for m in ("mnc", "mask_rcnn")]
    assert all(e["n"] == 1 and e["predict_s_median"] > 0 and e["all_optimisers_s_median"] > 0
               for e in tuned.values())
    assert all(a["matched_iou50"] >= 0.8 * max(a["reference_detections"], a["detections"])
               for a in same.values())
    assert any(line.startswith("Each model's graph in the onnxruntime session")
               for line in tables.table_maker("export_pair_recipe")(few))
    # the RoIAlign form of the warps: against this version's export (with the detections) and
    # against the Mask R-CNN, on each exported backend
    alt, same = few["seeds"]["0"]["roialign"], few["seeds"]["0"]["roialign_agreement"]
    assert list(alt) == list(same) == list(few["seeds"]["0"]["roialign_paired"]) == [
        f"{px} px / {b}" for b in ("onnxruntime-int8", "openvino-int8")]
    assert all(e["n"] == 1 and e["roialign_s_median"] > 0 and e["stacked_s_median"] > 0
               for e in alt.values())
    assert all(a["matched_iou50"] >= 0.8 * max(a["reference_detections"], a["detections"])
               for a in same.values())
    other = tmp_path / f"mnc5_{IMAGES}img_{ITERS}it_seed0_roialign_warps"
    assert json.loads((other / "export.json").read_text())["warp_layout"] == "roialign"
    assert any(line.startswith("The MNC with the RoIAlign form against Mask R-CNN")
               for line in tables.table_maker("export_pair_recipe")(few))
    # many scenes through the exported int8 graph, on both engines; the local process gets
    # this machine's CPUs as threads
    folder = tmp_path / f"mnc5_{IMAGES}img_{ITERS}it_seed0"
    many = _bench("bench_predict_many", "--backend", "onnxruntime-int8", "--model", str(folder),
                  "--scenes", "2", "--size", "160", "--rounds", "1")
    assert [r["statuses"] for rs in many["runs"].values() for r in rs] == [{"ok": 2}] * 2
    assert many["engines"]["local"][-2:] == ["--torch-threads", str(os.cpu_count() or 1)]
    assert "run" not in many and many["backend"] == "onnxruntime-int8"
    assert f"the exported model `{folder.name}` on `--backend onnxruntime-int8`" in \
        tables.table_maker("predict_many")(many)[0]


def test_export_pair_pools_part(tmp_path):
    """A convolutional mask head's int8 graph: exported by this version (the classification
    heads pool grid sampling's float32 output, which no quantised layer reads) nothing is
    rewired and --parts pools has nothing to time; the mask head's transposed input is
    quantised before its transposition. Its level-by-level export (--parts warps) pools the
    warps its convolutions read through a round trip, which the export rewires: its round-trip
    copy (bench_export_pair.quantised_pools) is that file with those pools rewired back,
    nothing else. (Its own work folder: a second variant beside the module's runs would change
    what they read.)"""
    import onnx

    from bench.bench_export_pair import quantised_pools

    acc, tag = tmp_path / "accuracy", f"{IMAGES}img_{ITERS}it"
    _bench("bench_accuracy", "--iters", str(ITERS), "--images", str(IMAGES), "--variants",
           "mnc5_conv_mask", "--work", str(acc))
    # no Mask R-CNN run: the parts time the MNC's graphs only
    few = _bench("bench_export_pair", "--mnc", "mnc5_conv_mask", "--mask-rcnn", "mask_rcnn",
                 "--tag", tag, "--train-setting", "default", "--seeds", "0", "--speed-tiles",
                 "1", "--rounds", "1", "--test-images", str(IMAGES // 2),
                 "--calibration-images", "2", "--accuracy-work", str(acc), "--work",
                 str(tmp_path / "pair"), "--parts", "pools", "warps", "--backends",
                 "onnxruntime-int8", timeout=900)
    assert "pools" not in few["seeds"]["0"]  # nothing rewired: nothing to pair
    exported = tmp_path / "pair" / f"mnc5_conv_mask_{tag}_seed0"
    int8 = json.loads((exported / "export.json").read_text())["int8"]
    assert int8["float_pool_inputs"] == []
    graph = onnx.load(str(exported / "model.int8.onnx")).graph
    kinds = {n.output[0]: n.op_type for n in graph.node}
    pools = [n for n in graph.node if n.op_type == "MaxPool" and "/cls_heads." in n.name]
    assert len(pools) == 4 and all(kinds[n.input[0]] != "DequantizeLinear" for n in pools)
    moved = [n for n in graph.node if n.name in int8["quantised_before_transpose"]]
    assert len(moved) == 2  # one per stage pair
    assert all([r.op_type for r in graph.node if q.output[0] in r.input] == ["Transpose"]
               for q in moved)

    levels = exported.with_name(exported.name + "_level_warps")
    named = json.loads((levels / "export.json").read_text())["int8"]["float_pool_inputs"]
    copy = quantised_pools(levels, tmp_path / "round_trip")
    graphs = [onnx.load(str(f / "model.int8.onnx")).graph for f in (levels, copy)]
    sources = [{n.name: n.input[0] for n in g.node} for g in graphs]
    kinds = [{n.output[0]: n.op_type for n in g.node} for g in graphs]
    assert named and all(kinds[0][sources[0][n]] != "DequantizeLinear" for n in named)
    assert all(kinds[1][sources[1][n]] == "DequantizeLinear" for n in named)
    assert {k: v for k, v in sources[0].items() if k not in named} == \
        {k: v for k, v in sources[1].items() if k not in named}


def test_export_pair_refuses_to_add_to_another_pairs_report(tmp_path):
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps({"mnc": "mnc5", "mask_rcnn": "mask_rcnn", "tag": "60img_600it",
                                   "train_setting": "hard", "seeds": {}}))
    out = subprocess.run([sys.executable, "-m", "bench.bench_export_pair", "--add-to",
                          str(earlier), "--accuracy-work", str(tmp_path), "--work",
                          str(tmp_path / "work")], cwd=REPO, capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert out.returncode != 0 and not out.stdout
    assert (f"--add-to {earlier}: another pair, run tag or test data (mnc 'mnc5', mask_rcnn "
            "'mask_rcnn', tag '60img_600it'); give the same") in out.stderr
    # the same pair on test tiles of another generator seed (a report from before --test-seed
    # scored the benchmark's, seed 1), refused before any test tile is generated
    earlier.write_text(json.dumps({
        "mnc": "mnc5_native_small_anchors_logdn_copypaste_conv_mask",
        "mask_rcnn": "mask_rcnn_native_small_anchors_logdn_copypaste", "tag": "60img_2400it",
        "train_setting": "hard", "seeds": {}}))
    out = subprocess.run([sys.executable, "-m", "bench.bench_export_pair", "--add-to",
                          str(earlier), "--test-seed", "2", "--accuracy-work", str(tmp_path),
                          "--work", str(tmp_path / "work")], cwd=REPO, capture_output=True,
                         text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert out.returncode != 0 and "(test_seed 1); give the same" in out.stderr
    assert not list(tmp_path.glob("test_seed*"))
    out = subprocess.run([sys.executable, "-m", "bench.bench_export_pair", "--mnc-opts",
                          "MODEL.MNC.TEST_CASCADE_NMS", "0.8"], cwd=REPO, capture_output=True,
                         text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert out.returncode == 2 and "--mnc-opts with --parts accuracy" in out.stderr
    out = subprocess.run([sys.executable, "-m", "bench.bench_export_pair", "--input-px", "650",
                          "--parts", "paired", "flops"], cwd=REPO, capture_output=True,
                         text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert out.returncode == 2 and "--input-px with --parts flops: those parts" in out.stderr


def test_scorer_and_speed_scripts(tmp_path):
    scorer = _bench("bench_scorer", "--tiles", "5", "--per-tile", "5", "--repeats", "1",
                    "--solaris-tiles", "0")
    assert scorer["runs"][0]["tiles"] == 5 and scorer["runs"][0]["proposals"] > 0
    if "vs_java" in scorer["runs"][0]:  # the tester's jar and java are at hand here
        assert scorer["runs"][0]["vs_java"]["identical"]
    speed = _bench("bench_speed", "--variants", "mnc5", "--rounds", "1", "--steps", "1",
                   "--tiles", "1", "--warmup", "0", "--masks", "5", "--work", str(tmp_path),
                   "--trained", str(tmp_path / "none"), "--detections", "3")
    assert speed["models"]["mnc5"]["weights"] == "random init"
    # a random model keeps nothing at the configs' threshold; with the stand-in it keeps 3
    assert speed["fixed_detections"] == 3
    assert speed["models"]["mnc5"]["kept_per_tile_median_by_size"] == {"416": 3, "650": 3}
    assert "every model keeps 3 instances" in tables.table_maker("speed")(speed)[0]


def test_export_r50_script_eager(tmp_path):
    """bench_export_r50 on eager PyTorch only (no export: the R-50 graphs' export is minutes):
    random R-50 models keep the fixed number of instances, and each MNC tile is paired with
    Mask R-CNN's."""
    report = _bench("bench_export_r50", "--variants", "mnc5_R50_recipe_mask128_topk200",
                    "--backends", "torch", "--tiles", "1", "--rounds", "1", "--detections", "3",
                    "--calibration-images", "1", "--threads", "2", "--work", str(tmp_path))
    mnc = report["models"]["mnc5_R50_recipe_mask128_topk200"]
    assert mnc["mask_conv_dim"] == 128 and mnc["test_proposals"] == 200
    assert report["models"]["mask_rcnn_R50_recipe"]["test_proposals"] == 600
    for m in report["models"].values():
        assert m["kept_per_tile"] == {"torch": 3.0}
        assert m["flops"]["gflops_by_part"]["backbone"] > 50  # R-50 at 650 px
    row = report["paired"]["mnc5_R50_recipe_mask128_topk200 / torch"]
    assert row["n"] == 1 and row["mnc_s_median"] > 0 and row["mask_rcnn_s_median"] > 0
    assert not list((tmp_path / "export").glob("*"))  # eager only: nothing exported
    assert "| mnc5_R50_recipe_mask128_topk200 | torch |" in "\n".join(
        tables.table_maker("export_r50_recipe")(report))


def test_viewer_script():
    if not shutil.which("chromium") or not shutil.which("chromedriver"):
        if os.environ.get("MNC_D2_REQUIRE_BROWSER"):
            pytest.fail("bench_viewer needs chromium and chromium-driver")
        pytest.skip("bench_viewer needs Debian's chromium and chromium-driver")
    report = _bench("bench_viewer", "--scenes", "2", "--buildings", "20", "--pan-frames", "5",
                    "--truth")
    run = report["runs"][0]
    # truth: 18 of each scene's 20 footprints shifted by a pixel, plus one nothing found
    assert run["truth"]["TP"] + run["truth"]["FN"] == 2 * 19
    assert run["buildings"] == 40 and 0 < run["buildings_shown"] <= 40 and run["bytes"] > 0
    tiles = next(r for r in report["runs"] if r["footprints"] == "tiles")
    # two 77 m scenes fit the window beyond zoom 16, where a city's density cells give way to
    # its buildings (tests/test_viewer.py checks the cells zoomed out)
    assert run["density_cells_drawn"] == tiles["density_cells_drawn"] == 0
    assert len(tiles["slider_ms"]) == 3 and all(v >= 0 for v in tiles["slider_ms"])
    assert tables.table_maker("viewer")(report)[2].startswith("| 2 | 40 | geojson + truth |")
