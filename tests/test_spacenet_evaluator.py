"""SpaceNetEvaluator: polygonises masks, scores them, gathers across processes, writes files."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances

from mnc_d2.evaluation.spacenet_evaluation import SpaceNetEvaluator

H = W = 64
DATASET = "_test_spacenet_eval"


def _dicts():
    square = "POLYGON ((10 10, 30 10, 30 30, 10 30, 10 10))"
    other = "POLYGON ((40 40, 60 40, 60 60, 40 60, 40 40))"
    return [
        {"file_name": "a.tif", "image_id": "AOI_2_Vegas_img1", "height": H, "width": W,
         "annotations": [{"wkt_pix": square, "bbox": [10, 10, 30, 30], "category_id": 0},
                         {"wkt_pix": other, "bbox": [40, 40, 60, 60], "category_id": 0}]},
        {"file_name": "b.tif", "image_id": "AOI_3_Paris_img7", "height": H, "width": W,
         "annotations": [{"segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]],
                          "bbox": [10, 10, 30, 30], "category_id": 0}]},
    ]


@pytest.fixture(scope="module", autouse=True)
def registered():
    if DATASET not in DatasetCatalog.list():
        DatasetCatalog.register(DATASET, _dicts)
        MetadataCatalog.get(DATASET).set(thing_classes=["building"])
    yield


def _instances(boxes, scores):
    inst = Instances((H, W))
    masks = torch.zeros(len(boxes), H, W, dtype=torch.bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        masks[i, y0:y1, x0:x1] = True
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.scores = torch.tensor(scores, dtype=torch.float32)
    inst.pred_classes = torch.zeros(len(boxes), dtype=torch.int64)
    inst.pred_masks = masks
    return inst


def _run_one(evaluator, image_index):
    rec = _dicts()[image_index]
    if image_index == 0:  # one exact hit, one low-score miss (filtered), one FP
        out = _instances([(10, 10, 30, 30), (40, 40, 60, 50), (0, 45, 8, 60)], [0.9, 0.3, 0.6])
    else:  # one hit with IoU 300/400 = 0.75
        out = _instances([(10, 15, 30, 30)], [0.8])
    evaluator.process([{"image_id": rec["image_id"]}], [{"instances": out}])


def test_evaluator_scores_and_writes(tmp_path):
    ev = SpaceNetEvaluator(DATASET, output_dir=str(tmp_path), score_thresh=0.5,
                           simplify_tolerance=0.0)
    ev.reset()
    _run_one(ev, 0)
    _run_one(ev, 1)
    res = ev.evaluate()["spacenet"]
    # Vegas: TP 1, FP 1 (the 8x15 box), FN 1 (the second square); Paris: TP 1.
    assert (res["TP"], res["FP"], res["FN"]) == (2, 1, 1)
    assert res["AOI_2_Vegas/F1"] == pytest.approx(0.5)
    assert res["AOI_3_Paris/F1"] == pytest.approx(1.0)
    assert res["mean_city_F1"] == pytest.approx(0.75)
    assert res["F1"] == pytest.approx(2 / 3)
    csv_text = (tmp_path / "spacenet_proposals.csv").read_text().splitlines()
    assert csv_text[0] == "ImageId,BuildingId,PolygonWKT_Pix,Confidence" and len(csv_text) == 4
    assert (tmp_path / "spacenet_per_image.csv").exists()
    # Shape of the two matched pairs (no gsd_m registered: pixels): the exact square (IoU 1) and
    # the 20 x 15 box in the 20 x 20 square (IoU 0.75); both 4 corners, parallel edges.
    assert res["shape/iou"] == pytest.approx((1 + 0.75) / 2)
    assert res["shape/ciou"] == pytest.approx((1 + 0.75) / 2)
    assert res["shape/n_ratio"] == 1 and res["shape/mta"] == pytest.approx(0)
    # PoLiS: 2 of the truth square's 4 corners lie 5 px from the box; the box's lie on the square.
    assert res["shape/polis"] == pytest.approx((0 + 0.5 * (5 * 2 / 4)) / 2)
    shapes = json.loads((tmp_path / "spacenet_shape.json").read_text())
    assert shapes["units"].startswith("pixels") and shapes["AOI_3_Paris"]["iou"] == 0.75


def test_evaluator_requires_masks():
    ev = SpaceNetEvaluator(DATASET)
    inst = _instances([(1, 1, 5, 5)], [0.9])
    inst.remove("pred_masks")
    with pytest.raises(KeyError, match="pred_masks"):
        ev.process([{"image_id": "AOI_2_Vegas_img1"}], [{"instances": inst}])


def _ddp_eval_worker(out_dir: str) -> None:
    from detectron2.utils import comm

    if DATASET not in DatasetCatalog.list():
        DatasetCatalog.register(DATASET, _dicts)
    ev = SpaceNetEvaluator(DATASET, simplify_tolerance=0.0)
    ev.reset()
    _run_one(ev, comm.get_rank())  # each process sees a different image
    res = ev.evaluate()
    Path(out_dir, f"rank{comm.get_rank()}.json").write_text(json.dumps(res))


def test_evaluator_gathers_across_processes(tmp_path):
    from mnc_d2.engine import launch

    if torch.cuda.is_available():
        pytest.skip("CUDA present: the CPU gloo path is not the one launch() takes")
    launch(_ddp_eval_worker, 2, dist_url="auto", args=(str(tmp_path),))
    main = json.loads((tmp_path / "rank0.json").read_text())["spacenet"]
    assert (main["TP"], main["FP"], main["FN"]) == (2, 1, 1)
    assert json.loads((tmp_path / "rank1.json").read_text()) == {}


def test_visualize_colours_tp_fp_fn(tmp_path, repo_root):
    import subprocess
    import sys

    import cv2
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    tif = tmp_path / "imgs" / "RGB-PanSharpen_AOI_2_Vegas_img1.tif"
    tif.parent.mkdir()
    data = np.full((3, H, W), 300, dtype=np.uint16)
    data[:, ::2] = 600
    with rasterio.open(tif, "w", driver="GTiff", height=H, width=W, count=3, dtype="uint16",
                       crs="EPSG:4326", transform=from_origin(-115.3, 36.2, 1e-5, 1e-5)) as dst:
        dst.write(data)
    (tmp_path / "t.csv").write_text(
        "ImageId,BuildingId,PolygonWKT_Pix,PolygonWKT_Geo\n"
        'AOI_2_Vegas_img1,0,"POLYGON ((10 10 0,30 10 0,30 30 0,10 30 0,10 10 0))",x\n'
        'AOI_2_Vegas_img1,1,"POLYGON ((40 40 0,60 40 0,60 60 0,40 60 0,40 40 0))",x\n')
    (tmp_path / "p.csv").write_text(
        "ImageId,BuildingId,PolygonWKT_Pix,Confidence\n"
        'AOI_2_Vegas_img1,0,"POLYGON ((10 10,30 10,30 30,10 30,10 10))",0.9\n'
        'AOI_2_Vegas_img1,1,"POLYGON ((2 40,8 40,8 60,2 60,2 40))",0.8\n')
    subprocess.run([sys.executable, str(repo_root / "tools" / "visualize.py"), "--truth",
                    str(tmp_path / "t.csv"), "--proposals", str(tmp_path / "p.csv"), "--images",
                    str(tmp_path / "imgs"), "--output", str(tmp_path / "out")], check=True,
                   capture_output=True)
    png = cv2.cvtColor(cv2.imread(str(tmp_path / "out" / "AOI_2_Vegas_img1_score.png")),
                       cv2.COLOR_BGR2RGB)
    assert tuple(png[20, 10]) == (255, 255, 255)  # TP outline: white
    assert tuple(png[50, 2]) == (255, 255, 0)  # FP outline: yellow
    assert tuple(png[50, 40]) == (0, 0, 255)  # FN outline: blue
    # an image without a GeoTIFF, first in the list, or an unreadable one: named, exit 1, and
    # the good image still drawn
    (tmp_path / "imgs" / "RGB-PanSharpen_AOI_2_Vegas_img3.tif").write_bytes(b"not a tiff")
    run = subprocess.run([sys.executable, str(repo_root / "tools" / "visualize.py"), "--truth",
                          str(tmp_path / "t.csv"), "--proposals", str(tmp_path / "p.csv"),
                          "--images", str(tmp_path / "imgs"), "--output", str(tmp_path / "o2"),
                          "--image-id", "AOI_2_Vegas_img2", "AOI_2_Vegas_img3",
                          "AOI_2_Vegas_img1"], capture_output=True, text=True)
    assert run.returncode == 1, run.stderr
    assert ("no overlay for AOI_2_Vegas_img2: no GeoTIFF for ImageId 'AOI_2_Vegas_img2'"
            in run.stderr)
    assert "no overlay for AOI_2_Vegas_img3:" in run.stderr
    assert [p.name for p in (tmp_path / "o2").iterdir()] == ["AOI_2_Vegas_img1_score.png"]


def test_threshold_sweep_records_the_best_threshold_for_prediction(tmp_path):
    from detectron2.config import get_cfg

    import mnc_d2
    from mnc_d2.inference.predictor import resolve_score_threshold

    threshold_file = tmp_path / "run" / "score_threshold.json"
    ev = SpaceNetEvaluator(DATASET, output_dir=str(tmp_path / "eval"), score_thresh=0.5,
                           sweep_thresholds=(0.2, 0.5, 0.7), simplify_tolerance=0.0,
                           threshold_file=str(threshold_file))
    ev.reset()
    _run_one(ev, 0)
    _run_one(ev, 1)
    res = ev.evaluate()["spacenet"]
    # Headline at 0.5 is unchanged by the sweep's lower floor (0.2 keeps the 0.3 detection).
    assert (res["TP"], res["FP"], res["FN"]) == (2, 1, 1)
    # Mean city F1: 0.2 -> (0.4 + 1) / 2, 0.5 -> 0.75, 0.7 -> (2/3 + 1) / 2.
    assert res["best_threshold"] == 0.7
    assert res["best_threshold/score"] == pytest.approx(5 / 6)
    sweep = json.loads((tmp_path / "eval" / "spacenet_sweep.json").read_text())
    assert [round(r["mean_city_F1"], 4) for r in sweep["sweep"]] == [0.7, 0.75, 0.8333]
    assert 0 <= res["ECE"] <= 1 and sum(b["count"] for b in sweep["calibration"]["bins"]) == 4
    csv_rows = (tmp_path / "eval" / "spacenet_proposals.csv").read_text().splitlines()
    assert len(csv_rows) == 4  # the proposals at the configured threshold only
    assert json.loads(threshold_file.read_text())["score_thresh"] == 0.7

    cfg = get_cfg()
    mnc_d2.add_mnc_config(cfg)
    cfg.MODEL.WEIGHTS = str(tmp_path / "run" / "model_final.pth")
    assert resolve_score_threshold(cfg) == 0.7
    assert resolve_score_threshold(cfg, 0.25) == 0.25
    cfg.MODEL.WEIGHTS = str(tmp_path / "elsewhere" / "model_final.pth")
    assert resolve_score_threshold(cfg) == cfg.TEST.SPACENET.SCORE_THRESH
    threshold_file.write_text("{not json")
    cfg.MODEL.WEIGHTS = str(tmp_path / "run" / "model_final.pth")
    with pytest.raises(ValueError, match="score_threshold.json"):
        resolve_score_threshold(cfg)


def test_a_model_that_matches_nothing_records_the_configured_threshold(tmp_path, caplog):
    """Score 0 at every threshold (an untrained model: only misplaced boxes): the sweep's tie
    would pick its lowest threshold, and prediction would use it. The configured threshold is
    recorded instead, marked so, and prediction warns that the model found nothing."""
    from detectron2.config import get_cfg

    import mnc_d2
    from mnc_d2.inference.threshold import resolve_score_threshold

    threshold_file = tmp_path / "run" / "score_threshold.json"
    ev = SpaceNetEvaluator(DATASET, output_dir=str(tmp_path / "eval"), score_thresh=0.5,
                           sweep_thresholds=(0.05, 0.5, 0.7), simplify_tolerance=0.0,
                           threshold_file=str(threshold_file))
    ev.reset()
    for index in (0, 1):
        rec = _dicts()[index]
        out = _instances([(50, 2, 60, 8), (0, 50, 5, 60)], [0.9, 0.1])
        ev.process([{"image_id": rec["image_id"]}], [{"instances": out}])
    with caplog.at_level(logging.WARNING):
        res = ev.evaluate()["spacenet"]
    assert res["TP"] == 0 and res["best_threshold/score"] == 0.0
    record = json.loads(threshold_file.read_text())
    assert record["score_thresh"] == 0.5 and record["source"].startswith("configured")
    assert "no score threshold finds any building" in caplog.text
    caplog.clear()
    cfg = get_cfg()
    mnc_d2.add_mnc_config(cfg)
    cfg.MODEL.WEIGHTS = str(tmp_path / "run" / "model_final.pth")
    with caplog.at_level(logging.WARNING):
        assert resolve_score_threshold(cfg) == 0.5
    assert "the model found no building there" in caplog.text


def test_with_several_test_sets_the_first_records_the_threshold(tmp_path):
    """Each test set's evaluator would write score_threshold.json, the last one winning, while
    the best checkpoint follows the first: only the first set's evaluator writes it."""
    from detectron2.config import get_cfg

    import mnc_d2
    from mnc_d2.engine.trainer import best_metric

    cfg = get_cfg()
    mnc_d2.add_mnc_config(cfg)
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.DATASETS.TEST = (DATASET, "spacenet2_paris_val")
    first = SpaceNetEvaluator.from_config(cfg, DATASET)
    second = SpaceNetEvaluator.from_config(cfg, "spacenet2_paris_val")
    assert first["threshold_file"] == str(tmp_path / "score_threshold.json")
    assert second["threshold_file"] is None
    # model_best.pth follows the score at the threshold prediction uses with it: the sweep's
    # best, kept beside it; without a sweep, the configured one
    assert best_metric(cfg) == f"{DATASET}/spacenet/best_threshold/score"
    cfg.TEST.SPACENET.SWEEP_THRESHOLDS = []
    assert best_metric(cfg) == f"{DATASET}/spacenet/score"
    cfg.TEST.SPACENET.SWEEP_THRESHOLDS = [0.3, 0.5]
    cfg.DATASETS.TEST = ("spacenet2_paris_val",)
    assert SpaceNetEvaluator.from_config(cfg, "spacenet2_paris_val")["threshold_file"]
    assert SpaceNetEvaluator.from_config(cfg, DATASET)["threshold_file"]  # called directly


def test_a_threshold_chosen_with_other_passes_is_warned_about(tmp_path, caplog):
    """The chosen threshold records the test-time augmentation it was chosen with (its scores
    are means over passes); prediction with another setting warns, naming both and the fix. A
    file from before the record counts as one pass."""
    from detectron2.config import get_cfg

    import mnc_d2
    from mnc_d2.inference.threshold import passes_setting, resolve_score_threshold

    cfg = get_cfg()
    mnc_d2.add_mnc_config(cfg)
    cfg.MODEL.WEIGHTS = str(tmp_path / "run" / "model_final.pth")
    assert passes_setting(cfg) == "one pass"
    tta = cfg.clone()
    tta.TEST.AUG.ENABLED, tta.TEST.AUG.MIN_SIZES, tta.TEST.AUG.ROT90 = True, (), True
    assert passes_setting(tta) == "TEST.AUG MIN_SIZES [] MAX_SIZE 4000 FLIP True ROT90 True"
    single = tta.clone()
    single.TEST.AUG.FLIP, single.TEST.AUG.ROT90 = False, False
    assert passes_setting(single) == "one pass"  # enabled, but one pass at the test size
    best = tta.clone()
    best.TEST.AUG.SCORE = "max"  # another meaning of a score: recorded beside the threshold
    assert passes_setting(best) == passes_setting(tta) + " SCORE max"

    threshold_file = tmp_path / "run" / "score_threshold.json"
    ev = SpaceNetEvaluator(DATASET, output_dir=str(tmp_path / "eval"), score_thresh=0.5,
                           sweep_thresholds=(0.2, 0.5, 0.7), simplify_tolerance=0.0,
                           threshold_file=str(threshold_file), passes=passes_setting(tta))
    ev.reset()
    _run_one(ev, 0)
    _run_one(ev, 1)
    ev.evaluate()
    assert json.loads(threshold_file.read_text())["passes"] == passes_setting(tta)
    with caplog.at_level(logging.WARNING, logger="mnc_d2.inference.threshold"):
        assert resolve_score_threshold(tta) == 0.7
        assert not caplog.records
        assert resolve_score_threshold(cfg) == 0.7
        assert len(caplog.records) == 1
        message = caplog.records[0].getMessage()
        assert "chosen with TEST.AUG MIN_SIZES [] " in message and "runs one pass" in message
        assert "--score-thresh" in message
        caplog.clear()
        record = json.loads(threshold_file.read_text())
        del record["passes"]  # written before the record existed
        threshold_file.write_text(json.dumps(record))
        assert resolve_score_threshold(cfg) == 0.7 and not caplog.records
        assert resolve_score_threshold(tta) == 0.7 and len(caplog.records) == 1


def test_polygonisation_keys_reach_the_evaluator_and_the_predictor_defaults():
    """TEST.SPACENET's simplification (1.5 px by default) and regularisation keys are what the
    evaluator polygonises with; the regularised outline of a notched rectangle has its 4 corners
    (no repeated or collinear vertex left)."""
    from detectron2.config import get_cfg

    import mnc_d2

    cfg = get_cfg()
    mnc_d2.add_mnc_config(cfg)
    assert cfg.TEST.SPACENET.SIMPLIFY_TOLERANCE == 1.5
    cfg.TEST.SPACENET.REGULARIZE = True
    cfg.TEST.SPACENET.REGULARIZE_MIN_EDGE = 3.0
    ev = SpaceNetEvaluator(cfg, DATASET)
    assert (ev._simplify, ev._regularize, ev._min_edge) == (1.5, True, 3.0)
    inst = _instances([(10, 10, 50, 40)], [0.9])
    inst.pred_masks[0, 10:12, 25:27] = False  # a 2 px notch in the top edge
    (poly, _), = ev.instances_to_polygons(inst)
    assert len(poly.exterior.coords) - 1 == 4


def test_detections_outside_the_data_are_dropped_as_prediction_drops_them(tmp_path):
    """An image with a collar marked by an internal mask, whole and as a window of the scene
    (own scenes): detections with more than half their area outside the data are not scored
    (tools/predict.py drops them), those with less are."""
    import numpy as np
    import rasterio
    from affine import Affine

    tif = tmp_path / "collar.tif"
    valid = np.full((64, 64), 255, np.uint8)
    valid[:, :20] = 0  # columns 0-19: outside the data
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(tif, "w", driver="GTiff", height=64, width=64, count=1,
                           dtype="uint8", crs="EPSG:32611",
                           transform=Affine(0.3, 0, 0, 0, -0.3, 0)) as dst:
            dst.write(np.full((1, 64, 64), 90, np.uint8))
            dst.write_mask(valid)
    square = "POLYGON ((30 30, 50 30, 50 50, 30 50, 30 30))"
    records = [
        {"file_name": str(tif), "image_id": "AOI_2_Vegas_img1", "height": 64, "width": 64,
         "annotations": [{"wkt_pix": square, "bbox": [30, 30, 50, 50], "category_id": 0}]},
        # the window's columns 0-11 are the scene's 8-19
        {"file_name": str(tif), "image_id": "AOI_2_Vegas_img2", "height": 64, "width": 32,
         "window": [8, 0, 32, 64], "annotations": []},
    ]
    name = "_test_spacenet_eval_collar"
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(thing_classes=["building"])
    try:
        ev = SpaceNetEvaluator(name, output_dir=str(tmp_path), score_thresh=0.5,
                               simplify_tolerance=0.0)
        ev.reset()
        ev.process([records[0]], [{"instances": _instances(
            [(2, 2, 16, 16), (30, 30, 50, 50)], [0.9, 0.9])}])
        # wholly outside; 8 of 20 columns (40%) outside: kept
        inst = Instances((64, 32))
        inst.pred_masks = torch.zeros(2, 64, 32, dtype=torch.bool)
        inst.pred_masks[0, 40:60, 0:10] = True
        inst.pred_masks[1, 10:20, 4:24] = True
        inst.scores = torch.tensor([0.9, 0.9])
        ev.process([records[1]], [{"instances": inst}])
        res = ev.evaluate()["spacenet"]
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    assert (res["TP"], res["FP"], res["FN"]) == (1, 1, 0)
    kept = ev._predictions["AOI_2_Vegas_img2"]
    assert len(kept) == 1 and kept[0][0].bounds == (4.0, 10.0, 24.0, 20.0)
