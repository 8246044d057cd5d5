"""Polygon shape metrics on hand-computed cases (mnc_d2.evaluation.polygon_metrics)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
from shapely import affinity
from shapely.geometry import Polygon, box

from mnc_d2.evaluation.polygon_metrics import pair_metrics, summarize, to_metres

SQUARE = box(-1, -1, 1, 1)
L_SHAPE = Polygon([(0, 0), (2, 0), (2, 1), (1, 1), (1, 2), (0, 2)])
COURTYARD = Polygon([(0, 0), (10, 0), (10, 10), (0, 10)], [[(3, 3), (7, 3), (7, 7), (3, 7)]])


def one(pred, truth, **kw) -> dict:
    return pair_metrics([pred], [truth], **kw).iloc[0].to_dict()


def test_identical_polygons_are_perfect():
    m = one(L_SHAPE, L_SHAPE)
    assert m["iou"] == 1 and m["ciou"] == 1 and m["vertex_error"] == 0
    assert m["polis"] == 0 and m["mta"] == pytest.approx(0, abs=1e-9) and m["boundary_f"] == 1


def test_square_against_the_square_rotated_45_degrees():
    """The overlap is a regular octagon: IoU = sqrt(2)/2; every edge is 45 degrees off; each
    vertex lies sqrt(2) - 1 from the other's boundary."""
    m = one(affinity.rotate(SQUARE, 45, origin=(0, 0)), SQUARE)
    assert m["iou"] == pytest.approx(math.sqrt(2) / 2)
    assert m["ciou"] == pytest.approx(math.sqrt(2) / 2)  # 4 vertices each
    assert m["mta"] == pytest.approx(45)
    assert m["polis"] == pytest.approx(math.sqrt(2) - 1)


def test_small_rotation_gives_its_angle():
    m = one(affinity.rotate(SQUARE, 10, origin=(0, 0)), SQUARE)
    assert m["mta"] == pytest.approx(10)


def test_l_shape_against_its_convex_hull():
    """Hull area 3.5 over the L's 3; 5 vertices against 6; the L's inner corner (1, 1) lies
    1/sqrt(2) from the hull's diagonal edge, every other vertex on the other's boundary."""
    hull = L_SHAPE.convex_hull
    m = one(hull, L_SHAPE)
    iou = 3 / 3.5
    assert m["iou"] == pytest.approx(iou)
    assert m["ciou"] == pytest.approx(iou * (1 - 1 / 11))
    assert m["vertex_error"] == 1 and m["pred_vertices"] == 5 and m["truth_vertices"] == 6
    assert m["polis"] == pytest.approx(0.5 * (1 / math.sqrt(2)) / 6)
    assert m["mta"] == pytest.approx(45)  # the diagonal edge against the inner corner's edges


def test_courtyard_against_its_filled_outline():
    filled = Polygon(COURTYARD.exterior)
    m = one(filled, COURTYARD)
    assert m["iou"] == pytest.approx(84 / 100)
    assert m["truth_holes"] == 1 and m["holes_found"] == 0
    assert one(COURTYARD, COURTYARD)["holes_found"] == 1
    # A shifted courtyard still overlaps the truth's hole by IoU 9/23 < 0.5: not found.
    shifted = Polygon(COURTYARD.exterior, [[(4, 4), (8, 4), (8, 8), (4, 8)]])
    assert one(shifted, COURTYARD)["holes_found"] == 0
    summary = summarize(pair_metrics([filled, COURTYARD], [COURTYARD, COURTYARD]))["all"]
    assert summary["hole_recall"] == 0.5 and summary["truth_holes"] == 2


def test_boundary_f_at_a_tolerance():
    truth = box(0, 0, 10, 10)
    assert one(box(0.5, 0, 10.5, 10), truth, tolerance=1.0)["boundary_f"] == 1.0
    # Shifted by 2 m: of the prediction's 40 m of boundary, 9 m of each horizontal edge and 2 m
    # of its left edge lie within 1 m of the truth's boundary (0.5), and the same the other way.
    assert one(box(2, 0, 12, 10), truth, tolerance=1.0)["boundary_f"] == pytest.approx(0.5,
                                                                                       abs=0.03)


def test_bad_input_empty_invalid_and_summary_by_group():
    bowtie = Polygon([(0, 0), (2, 2), (2, 0), (0, 2)])  # self-intersecting: repaired
    frame = pair_metrics([Polygon(), bowtie, SQUARE], [SQUARE, box(0, 0, 2, 2), SQUARE])
    assert frame.iloc[0].isna().all()  # empty prediction: no metrics
    assert 0 < frame.iloc[1]["iou"] < 1
    summary = summarize(frame, groups=["a", "a", "b"])
    assert summary["all"]["pairs"] == 2 and summary["all"]["pairs_skipped"] == 1
    assert summary["b"]["iou"] == 1.0 and summary["b"]["n_ratio"] == 1.0
    assert summary["b"]["hole_recall"] is None  # no truth holes: undefined


def test_degrees_are_reprojected_to_metres():
    """A 0.0001 x 0.0001 degree box at the equator is about 11 m wide in UTM; Mercator and
    feet come back in ground metres too."""
    geo = box(9.0, 0.0, 9.0001, 0.0001)
    (metric,) = to_metres([geo], crs="EPSG:4326")
    width = metric.bounds[2] - metric.bounds[0]
    assert width == pytest.approx(11.13, abs=0.05)
    (scaled,) = to_metres([box(0, 0, 10, 10)], metres_per_unit=0.3)
    assert scaled.area == pytest.approx(9.0)
    with pytest.raises(ValueError, match="ground sample distance"):
        to_metres([geo])
    # Web Mercator's metres are stretched by 1 / cos(latitude): a 10 m square at 40 degrees
    # north spans 13.05 of them, and comes back as 10 m; US survey feet are scaled
    from pyproj import Transformer

    x, y = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True).transform(-74, 40)
    (merc,) = to_metres([box(x, y, x + 10 / np.cos(np.radians(40)), y + 10 / np.cos(
        np.radians(40)))], crs="EPSG:3857")
    assert np.sqrt(merc.area) == pytest.approx(10.0, rel=0.005)
    (feet,) = to_metres([box(980000, 200000, 980010, 200010)], crs="EPSG:2263")
    assert np.sqrt(feet.area) == pytest.approx(10 * 1200 / 3937)


def test_vectorised_over_many_pairs_equals_one_by_one():
    rng = np.random.default_rng(0)
    truths = [affinity.rotate(box(0, 0, w, h), a, origin="centroid")
              for w, h, a in zip(rng.uniform(5, 20, 30), rng.uniform(5, 20, 30),
                                 rng.uniform(0, 90, 30))]
    preds = [shapely.buffer(t, 0.3, join_style="mitre") for t in truths]
    together = pair_metrics(preds, truths)
    alone = [one(p, t) for p, t in zip(preds, truths)]
    for col in ("iou", "ciou", "polis", "mta", "boundary_f"):
        assert np.allclose(together[col], [a[col] for a in alone])


def test_score_tool_reports_polygon_metrics_of_the_matched_pairs(tmp_path, repo_root):
    """tools/score.py --polygon-metrics: shape metrics on the pairs the SpaceNet rules matched
    (the unmatched proposal does not enter), in metres through --gsd, per city and overall."""
    import json
    import subprocess
    import sys

    from mnc_d2.formats.spacenet_csv import spacenet_wkt

    l_px = affinity.scale(L_SHAPE, 10, 10, origin=(0, 0))  # 20 x 20 px L: 6 m x 6 m at 0.3 m
    hull = l_px.convex_hull
    truth = tmp_path / "truth.csv"
    truth.write_text("ImageId,BuildingId,PolygonWKT_Pix,PolygonWKT_Geo\n"
                     f'AOI_2_Vegas_img1,0,"{spacenet_wkt(l_px)}","{spacenet_wkt(l_px)}"\n')
    props = tmp_path / "props.csv"
    far = affinity.translate(hull, 200, 200)
    props.write_text("ImageId,BuildingId,PolygonWKT_Pix,Confidence\n"
                     f'AOI_2_Vegas_img1,0,"{spacenet_wkt(hull)}",0.9\n'
                     f'AOI_2_Vegas_img1,1,"{spacenet_wkt(far)}",0.8\n')
    out = subprocess.run([sys.executable, str(repo_root / "tools" / "score.py"), "--truth",
                          str(truth), "--proposals", str(props), "--polygon-metrics", "--json",
                          "--gsd", "0.3"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    shapes = json.loads(out.stdout)["polygon_metrics"]
    assert shapes["all"]["pairs"] == 1 and set(shapes) == {"all", "AOI_2_Vegas"}
    assert shapes["all"]["iou"] == pytest.approx(3 / 3.5, abs=1e-4)
    assert shapes["all"]["ciou"] == pytest.approx(3 / 3.5 * 10 / 11, abs=1e-4)
    assert shapes["all"]["polis"] == pytest.approx(0.5 * (3 / math.sqrt(2)) / 6, abs=1e-4)
    assert shapes["all"]["mta"] == pytest.approx(45)
    assert shapes["all"]["n_ratio"] == pytest.approx(5 / 6, abs=1e-4)
    text = subprocess.run([sys.executable, str(repo_root / "tools" / "score.py"), "--truth",
                           str(truth), "--proposals", str(props), "--polygon-metrics"],
                          capture_output=True, text=True, timeout=120).stdout
    assert "shape of the matched pairs" in text and "C-IoU" in text


@pytest.mark.parametrize("opts,message", [
    (["--iou-threshold", "1"], "IoU threshold 1.0: use a value in [0, 1)"),
    (["--iou-threshold", "nan"], "IoU threshold nan: use a value in [0, 1)"),
    (["--iou-threshold", "-0.1", "--rules", "solaris"], "IoU threshold -0.1: use a value in"),
    (["--polygon-metrics", "--gsd", "0"], "metres per pixel (--gsd) 0.0: use the imagery's"),
    (["--polygon-metrics", "--gsd", "nan"], "metres per pixel (--gsd) nan: use the imagery's"),
    (["--polygon-metrics", "--boundary-tolerance", "-1"], "boundary tolerance -1.0: use a "
                                                           "positive distance in metres")])
def test_score_tool_refuses_thresholds_and_scales_that_mean_nothing(tmp_path, repo_root, capsys,
                                                                    opts, message):
    """An IoU threshold nothing (or everything) passes, a zero or NaN pixel size, a negative
    boundary tolerance: exit 2 naming the value (they scored 0, printed garbage or crashed in
    shapely); the same pair at the defaults scores."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("score_tool", repo_root / "tools" / "score.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    square = "POLYGON ((0 0, 10 0, 10 10, 0 10, 0 0))"
    truth, props = tmp_path / "truth.csv", tmp_path / "props.csv"
    truth.write_text(f'ImageId,BuildingId,PolygonWKT_Pix,PolygonWKT_Geo\n'
                     f'AOI_2_Vegas_img1,1,"{square}","{square}"\n')
    props.write_text(f'ImageId,BuildingId,PolygonWKT_Pix,Confidence\n'
                     f'AOI_2_Vegas_img1,1,"{square}",0.9\n')
    args = ["--truth", str(truth), "--proposals", str(props)]
    assert tool.main([*args, "--polygon-metrics"]) == 0
    assert "mean city F1 (spacenet rules, grouped by city): 1.0000" in capsys.readouterr().out
    assert tool.main([*args, *opts]) == 2
    assert f"error: {message}" in capsys.readouterr().err
