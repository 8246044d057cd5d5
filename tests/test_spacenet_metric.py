"""Hand-computed golden cases for the SpaceNet metric, both rule sets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mnc_d2.evaluation.spacenet_metric import SpaceNetCSVError, city_of, score_csv

TRUTH_HEADER = "ImageId,BuildingId,PolygonWKT_Pix,PolygonWKT_Geo\n"
PROP_HEADER = "ImageId,BuildingId,PolygonWKT_Pix,Confidence\n"


def rect(x0, y0, x1, y1) -> str:
    return f"POLYGON (({x0} {y0} 0,{x1} {y0} 0,{x1} {y1} 0,{x0} {y1} 0,{x0} {y0} 0))"


def write(tmp_path: Path, name: str, header: str, rows: list[tuple]) -> Path:
    path = tmp_path / name
    lines = [header]
    for row in rows:
        lines.append(",".join(f'"{v}"' if isinstance(v, str) and "(" in v else str(v)
                              for v in row) + "\n")
    path.write_text("".join(lines))
    return path


def run(tmp_path, truth_rows, prop_rows, rules="spacenet"):
    # The PolygonWKT_Geo column holds a polygon as in SpaceNet (the tester skips any line
    # containing "POLYGON EMPTY"); empty truth rows keep POLYGON EMPTY there.
    truth = write(tmp_path, "truth.csv", TRUTH_HEADER, [(*r, r[2]) for r in truth_rows])
    props = write(tmp_path, "props.csv", PROP_HEADER, prop_rows)
    return score_csv(truth, props, rules=rules, full_iou=True)


def counts(result):
    o = result.overall
    return o.tp, o.fp, o.fn


@pytest.mark.parametrize("rules", ["spacenet", "solaris"])
def test_iou_exactly_half_is_not_a_match(tmp_path, rules):
    truth = [("AOI_1_X_img1", 0, rect(0, 0, 10, 10)), ("AOI_1_X_img2", 0, rect(0, 0, 10, 10))]
    props = [("AOI_1_X_img1", 0, rect(0, 0, 10, 5), 0.9),  # IoU 50/100 = 0.5
             ("AOI_1_X_img2", 0, rect(0, 0, 10, 5.1), 0.9)]  # IoU 51/100 = 0.51
    result = run(tmp_path, truth, props, rules)
    assert counts(result) == (1, 1, 1)
    assert result.proposal_match.tolist() == [-1, 1]
    assert result.proposal_iou == pytest.approx([0.5, 0.51])


def test_min_area_boundaries_spacenet(tmp_path):
    truth = [("AOI_1_X_img1", 0, rect(0, 0, 1, 19.9)), ("AOI_1_X_img2", 0, rect(0, 0, 1, 20)),
             ("AOI_1_X_img3", 0, rect(0, 0, 1, 20.1))]
    props = [(i, 0, g, 0.9) for i, _, g in truth]
    result = run(tmp_path, truth, props, "spacenet")
    rows = result.per_image.set_index("ImageId")
    assert rows.loc["AOI_1_X_img1", ["tp", "fp", "fn"]].tolist() == [0, 0, 0]  # ignored
    assert rows.loc["AOI_1_X_img2", ["tp", "fp", "fn"]].tolist() == [1, 0, 0]  # 20 counts
    assert rows.loc["AOI_1_X_img3", ["tp", "fp", "fn"]].tolist() == [1, 0, 0]


def test_min_area_boundaries_solaris(tmp_path):
    truth = [("AOI_1_X_img1", 0, rect(0, 0, 1, 19.9)), ("AOI_1_X_img2", 0, rect(0, 0, 1, 20)),
             ("AOI_1_X_img3", 0, rect(0, 0, 1, 20.1))]
    props = [(i, 0, g, 0.9) for i, _, g in truth]
    result = run(tmp_path, truth, props, "solaris")
    rows = result.per_image.set_index("ImageId")
    assert rows.loc["AOI_1_X_img1", ["tp", "fp", "fn"]].tolist() == [0, 0, 0]
    # truth of area 20 is kept (>= 20), the identical proposal is not (> 20): one FN.
    assert rows.loc["AOI_1_X_img2", ["tp", "fp", "fn"]].tolist() == [0, 0, 1]
    assert rows.loc["AOI_1_X_img3", ["tp", "fp", "fn"]].tolist() == [1, 0, 0]


def test_tester_path_reads_the_rule_set_s_area_fields(tmp_path):
    """A rule set on the tester reader that is strict about the minimum area drops a building of
    exactly 20 px, truth and proposal alike; a field that reader cannot honour is an error."""
    from dataclasses import replace

    from mnc_d2.evaluation.rules import SPACENET

    truth = [("AOI_1_X_img2", 0, rect(0, 0, 1, 20)), ("AOI_1_X_img3", 0, rect(0, 0, 1, 20.1))]
    props = [(i, 0, g, 0.9) for i, _, g in truth]
    strict = replace(SPACENET, name="strict", truth_area_inclusive=False,
                     proposal_area_inclusive=False)
    rows = run(tmp_path, truth, props, strict).per_image.set_index("ImageId")
    assert rows.loc["AOI_1_X_img2", ["tp", "fp", "fn"]].tolist() == [0, 0, 0]
    assert rows.loc["AOI_1_X_img3", ["tp", "fp", "fn"]].tolist() == [1, 0, 0]
    only_truth = replace(SPACENET, name="only_truth", truth_area_inclusive=False)
    rows = run(tmp_path, truth, props, only_truth).per_image.set_index("ImageId")
    assert rows.loc["AOI_1_X_img2", ["tp", "fp", "fn"]].tolist() == [0, 1, 0]
    with pytest.raises(ValueError, match="tester reader .* not 'buffer0'"):
        run(tmp_path, truth, props, replace(SPACENET, invalid_proposal="buffer0"))


@pytest.mark.parametrize("rules", ["spacenet", "solaris"])
def test_confident_mediocre_proposal_wins_no_rematching(tmp_path, rules):
    truth = [("AOI_1_X_img1", 0, rect(0, 0, 10, 10))]
    props = [("AOI_1_X_img1", 0, rect(0, 0, 10, 10), 0.5),  # perfect, low confidence
             ("AOI_1_X_img1", 1, rect(0, 0, 10, 6), 0.9)]  # IoU 0.6, high confidence
    result = run(tmp_path, truth, props, rules)
    assert counts(result) == (1, 1, 0)
    assert result.proposal_match.tolist() == [-1, 0]


def test_confidence_ties_keep_file_order(tmp_path):
    truth = [("AOI_1_X_img1", 0, rect(0, 0, 10, 10))]
    props = [("AOI_1_X_img1", 0, rect(0, 0, 10, 6), 0.7),  # first in file, IoU 0.6
             ("AOI_1_X_img1", 1, rect(0, 0, 10, 10), 0.7)]  # perfect, same confidence
    result = run(tmp_path, truth, props, "spacenet")
    assert result.proposal_match.tolist() == [0, -1]


def test_truth_ties_go_to_first_truth_in_file(tmp_path):
    # The proposal overlaps both truths with IoU 0.6 exactly.
    truth = [("AOI_1_X_img1", 0, rect(0, 0, 10, 10)), ("AOI_1_X_img1", 1, rect(0, 0, 10, 10))]
    props = [("AOI_1_X_img1", 0, rect(0, 0, 10, 6), 0.9)]
    result = run(tmp_path, truth, props)
    assert result.proposal_match.tolist() == [0]
    assert counts(result) == (1, 0, 1)


@pytest.mark.parametrize("rules", ["spacenet", "solaris"])
def test_holes_count_in_area_and_iou(tmp_path, rules):
    ring = "0 0 0,10 0 0,10 10 0,0 10 0,0 0 0"
    thin = f'POLYGON (({ring}),(1 1 0,9 1 0,9 9 0,1 9 0,1 1 0))'  # area 100 - 64 = 36
    courtyard = f'POLYGON (({ring}),(3 3 0,7 3 0,7 7 0,3 7 0,3 3 0))'  # area 84
    truth = [("AOI_1_X_img1", 0, thin), ("AOI_1_X_img2", 0, courtyard)]
    props = [("AOI_1_X_img1", 0, rect(0, 0, 10, 10), 0.9),  # IoU 36/100: FP (TP if holes lost)
             ("AOI_1_X_img2", 0, rect(0, 0, 10, 10), 0.9)]  # IoU 84/100: TP
    result = run(tmp_path, truth, props, rules)
    assert result.proposal_iou == pytest.approx([0.36, 0.84])
    assert counts(result) == (1, 1, 1)


def test_empty_images_and_images_only_in_proposals(tmp_path):
    truth = [("AOI_1_X_img1", -1, "POLYGON EMPTY"), ("AOI_1_X_img2", 0, rect(0, 0, 10, 10))]
    props = [("AOI_1_X_img2", 0, rect(0, 0, 10, 10), 0.9), ("AOI_1_X_img3", 0, rect(0, 0, 9, 9), 0.8),
             ("AOI_1_X_img4", -1, "POLYGON EMPTY", 1.0)]
    result = run(tmp_path, truth, props)
    rows = result.per_image.set_index("ImageId")
    assert sorted(rows.index) == ["AOI_1_X_img1", "AOI_1_X_img2", "AOI_1_X_img3", "AOI_1_X_img4"]
    assert rows.loc["AOI_1_X_img1", ["tp", "fp", "fn"]].tolist() == [0, 0, 0]
    assert rows.loc["AOI_1_X_img3", ["tp", "fp", "fn"]].tolist() == [0, 1, 0]
    assert counts(result) == (1, 1, 0)


def test_no_proposals_at_all(tmp_path):
    truth = [("AOI_1_X_img1", 0, rect(0, 0, 10, 10))]
    result = run(tmp_path, truth, [])
    assert counts(result) == (0, 0, 1)
    assert result.overall.f1 == 0.0 and result.mean_city_f1 == 0.0


def test_per_city_sums_and_mean_of_city_f1(tmp_path):
    # City A: 2 truths, 2 proposals: one TP, one FP, one FN -> P=R=F1=0.5.
    # City B: 1 truth matched perfectly -> F1 = 1.
    truth = [("AOI_2_A_img1", 0, rect(0, 0, 10, 10)), ("AOI_2_A_img2", 0, rect(0, 0, 10, 10)),
             ("AOI_3_B_img1", 0, rect(0, 0, 10, 10))]
    props = [("AOI_2_A_img1", 0, rect(0, 0, 10, 10), 0.9), ("AOI_2_A_img2", 0, rect(50, 50, 60, 60), 0.9),
             ("AOI_3_B_img1", 0, rect(0, 0, 10, 10), 0.9)]
    result = run(tmp_path, truth, props)
    assert result.cities["AOI_2_A"].as_dict() == pytest.approx(
        {"tp": 1, "fp": 1, "fn": 1, "precision": 0.5, "recall": 0.5, "f1": 0.5})
    assert result.cities["AOI_3_B"].f1 == 1.0
    assert result.mean_city_f1 == pytest.approx(0.75)
    # Global sums: TP 2, FP 1, FN 1 -> F1 = 2/3, not the mean of city F1s.
    assert result.overall.f1 == pytest.approx(2 / 3)


def test_city_of():
    assert city_of("AOI_2_Vegas_img1234") == "AOI_2_Vegas"
    assert city_of("AOI_5_Khartoum_img1") == "AOI_5_Khartoum"


def test_self_intersecting_polygons_solaris(tmp_path):
    # (spacenet rules: even-odd regions, golden cases in test_spacenet_tester_rules.py)
    # Self-intersecting at (5.43, 0): raw (signed) area 42, repaired parts 4..10 and a triangle.
    twisted = "POLYGON ((0 0 0,10 0 0,10 10 0,4 10 0,6 -4 0,0 0 0))"
    repaired = ("MULTIPOLYGON (((5.428571428571429 0,4 10,10 10,10 0,5.428571428571429 0)),"
                "((0 0,5.428571428571429 0,6 -4,0 0)))")
    truth = [("AOI_1_X_img1", 0, twisted)]
    props = [("AOI_1_X_img1", 0, repaired, 0.9), ("AOI_1_X_img1", 1, twisted, 0.8)]
    # solaris: the invalid truth (raw area 42 >= 20, kept) gets IoU 0 with everything, so it is
    # never matched; the invalid proposal is buffer(0)-ed and kept (raw area 42 > 20).
    solaris = run(tmp_path, truth, props, "solaris")
    assert counts(solaris) == (0, 2, 1)


# --- bad input ----------------------------------------------------------------------------------


def test_malformed_wkt_names_file_and_line(tmp_path):
    truth = write(tmp_path, "t.csv", TRUTH_HEADER, [("AOI_1_X_img1", 0, rect(0, 0, 10, 10), "x")])
    props = write(tmp_path, "p.csv", PROP_HEADER, [("AOI_1_X_img1", 0, rect(0, 0, 9, 9), 0.9),
                                                  ("AOI_1_X_img1", 1, "POLYGON ((1 2, 3", 0.5)])
    with pytest.raises(SpaceNetCSVError, match=r"p\.csv, line 3: .*not valid WKT"):
        score_csv(truth, props, rules="solaris")


def test_missing_columns(tmp_path):
    truth = write(tmp_path, "t.csv", TRUTH_HEADER, [("AOI_1_X_img1", 0, rect(0, 0, 10, 10), "x")])
    props = tmp_path / "p.csv"
    props.write_text("ImageId,PolygonWKT_Pix\nAOI_1_X_img1,POLYGON EMPTY\n")
    with pytest.raises(SpaceNetCSVError, match=r"lacks column\(s\) \['BuildingId', 'Confidence'\]"):
        score_csv(truth, props, rules="solaris")
    # the tester reads no header: it fails on the row (named)
    with pytest.raises(SpaceNetCSVError, match=r"p\.csv, line 2: .*fewer than three"):
        score_csv(truth, props)


def test_non_numeric_confidence(tmp_path):
    truth = write(tmp_path, "t.csv", TRUTH_HEADER, [("AOI_1_X_img1", 0, rect(0, 0, 10, 10), "x")])
    props = write(tmp_path, "p.csv", PROP_HEADER, [("AOI_1_X_img1", 0, rect(0, 0, 9, 9), "high")])
    with pytest.raises(SpaceNetCSVError, match="line 2: Confidence 'high' is not a number"):
        score_csv(truth, props, rules="solaris")
    # per-scene CSVs joined with cat: the repeated header is named as such
    good = write(tmp_path, "g.csv", PROP_HEADER, [("AOI_1_X_img1", 0, rect(0, 0, 9, 9), 0.9)])
    joined = tmp_path / "joined.csv"
    joined.write_text(good.read_text() + good.read_text())
    with pytest.raises(SpaceNetCSVError, match="line 3: .* that line repeats the header"):
        score_csv(truth, joined, rules="solaris")


def test_nan_confidence_sorts_last(tmp_path):
    truth = [("AOI_1_X_img1", 0, rect(0, 0, 10, 10))]
    props = [("AOI_1_X_img1", 0, rect(0, 0, 10, 10), "NaN"), ("AOI_1_X_img1", 1, rect(0, 0, 10, 6), 0.1)]
    result = run(tmp_path, truth, props)
    assert result.proposal_match.tolist() == [-1, 0]


def test_empty_file(tmp_path):
    truth = tmp_path / "t.csv"
    truth.write_text("")
    props = write(tmp_path, "p.csv", PROP_HEADER, [])
    with pytest.raises(SpaceNetCSVError, match="t.csv is empty; expected a header line"):
        score_csv(truth, props)


def test_duplicate_rows_are_scored_separately(tmp_path, caplog):
    truth = [("AOI_1_X_img1", 0, rect(0, 0, 10, 10))]
    props = [("AOI_1_X_img1", 0, rect(0, 0, 10, 10), 0.9)] * 2
    result = run(tmp_path, truth, props)
    assert counts(result) == (1, 1, 0)
    assert "has 1 duplicate row(s)" in caplog.text
    # the same ImageId,BuildingId with another polygon is not a duplicate; a third copy is
    caplog.clear()
    props = props + [("AOI_1_X_img1", 0, rect(0, 0, 10, 11), 0.9), props[0]]
    result = run(tmp_path, truth, props)
    assert counts(result) == (1, 3, 0)
    assert "has 2 duplicate row(s)" in caplog.text


def test_score_cli_json_imports_only_what_it_needs(tmp_path, repo_root):
    """``tools/score.py --json`` (tester rules) starts in a fraction of a second: it never
    imports torch, pandas (pyarrow converts through it), tabulate (tables only), numpy.ma
    (``np.unique`` pulls it in) or pyarrow.compute's wrappers (the kernels are called by name)."""
    truth = write(tmp_path, "t.csv", TRUTH_HEADER, [("AOI_2_Vegas_img1", 0, rect(0, 0, 10, 10), "x")])
    props = write(tmp_path, "p.csv", PROP_HEADER, [("AOI_2_Vegas_img1", 0, rect(0, 0, 10, 9), 0.9),
                                                  ("AOI_2_Vegas_img1", 1, rect(0, 0, 10, 9), 0.9)])
    code = ("import runpy, sys; script = sys.argv[4]; sys.argv = ['score.py', '--truth', "
            "sys.argv[1], '--proposals', sys.argv[2], '--json', '--per-image', sys.argv[3]]\n"
            "try:\n    runpy.run_path(script, run_name='__main__')\nexcept SystemExit:\n"
            "    pass\n"
            "heavy = ('torch', 'pandas', 'tabulate', 'numpy.ma', 'pyarrow.compute')\n"
            "print(sorted(m for m in heavy if m in sys.modules), file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code, str(truth), str(props),
                          str(tmp_path / "pi.csv"), str(repo_root / "tools" / "score.py")],
                         check=True, capture_output=True, text=True, timeout=120)
    assert json.loads(out.stdout)["overall"]["tp"] == 1
    assert out.stderr.strip().splitlines()[-1] == "[]"


def test_score_cli_json(tmp_path, repo_root):
    truth = write(tmp_path, "t.csv", TRUTH_HEADER, [("AOI_2_Vegas_img1", 0, rect(0, 0, 10, 10), "x")])
    props = write(tmp_path, "p.csv", PROP_HEADER, [("AOI_2_Vegas_img1", 0, rect(0, 0, 10, 9), 0.9)])
    per_image = tmp_path / "per_image.csv"
    out = subprocess.run(
        [sys.executable, str(repo_root / "tools" / "score.py"), "--truth", str(truth),
         "--proposals", str(props), "--json", "--per-image", str(per_image)],
        check=True, capture_output=True, text=True,
    )
    data = json.loads(out.stdout)
    assert set(data) == {"rules", "group_by", "overall", "mean_city_f1", "cities"}
    assert data["group_by"] == "city"
    assert data["overall"]["tp"] == 1 and data["cities"]["AOI_2_Vegas"]["f1"] == 1.0
    assert per_image.read_text().startswith("ImageId,city,scored,tp,fp,fn")
    bad = subprocess.run(
        [sys.executable, str(repo_root / "tools" / "score.py"), "--truth", str(tmp_path / "nope.csv"),
         "--proposals", str(props)], capture_output=True, text=True,
    )
    assert bad.returncode == 2 and "nope.csv does not exist" in bad.stderr
