"""Golden cases for ``rules="spacenet"``: the SpaceNet 2 offline tester v2.0, computed by hand.

Each case writes a truth and a proposal CSV exactly as given (raw lines, so the tester's
string-cutting matters) and states the per-image TP/FP/FN and mean city F1 the tester's rules give;
the arithmetic is in the comments. ``bench/check_tester_golden.py`` runs the same cases through
the Java tester itself when its jar is at hand.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import shapely

from mnc_d2.evaluation.spacenet_metric import SpaceNetCSVError, score, score_csv
from mnc_d2.evaluation.tester_polygons import (even_odd_region, even_odd_regions, read_polygon_csv,
                                               ring_areas)
from mnc_d2.formats.spacenet_csv import wkt_for_tester

TRUTH_HEADER = "ImageId,BuildingId,PolygonWKT_Pix,PolygonWKT_Geo"
PROP_HEADER = "ImageId,BuildingId,PolygonWKT_Pix,Confidence"


def poly(*rings: str, sep: str = "),(") -> str:
    return "POLYGON ((" + sep.join(rings) + "))"


def ring(*points) -> str:
    return ",".join(f"{x} {y} 0" for x, y in points)


def rect(x0, y0, x1, y1) -> str:
    return poly(ring((x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)))


def t_line(image: str, bid, wkt: str) -> str:
    # The Geo column holds a polygon, as in SpaceNet's truth files.
    geo = "POLYGON EMPTY" if "EMPTY" in wkt else wkt
    return f'{image},{bid},"{wkt}","{geo}"'


def p_line(image: str, bid, wkt: str, conf) -> str:
    return f'{image},{bid},"{wkt}",{conf}'


# Bow-tie: edges (0,0)-(30,30) and (30,0)-(0,60) cross at (20,20). Left lobe (0,0),(20,20),(0,60):
# 0.5*|20*60 - 20*0| = 600; right lobe (20,20),(30,30),(30,0): 0.5*|10*-20 - 10*10| = 150. The
# lobes wind in opposite directions, so the tester's area is |600 - 150| = 450 while its even-odd
# region covers both lobes (750).
BOWTIE = poly(ring((0, 0), (30, 30), (30, 0), (0, 60), (0, 0)))
# Same ring traced twice: area 2 x 100 = 200, even-odd region empty (winding 2 everywhere).
TWICE = poly(ring(*[(0, 0), (10, 0), (10, 10), (0, 10)] * 2, (0, 0)))
# One ring: outer square 10x10, in to (2,2), inner square 6x6 in the same direction, back out.
# Terms (x[i-1]+x[i])*(y[i-1]-y[i]): outer -200, (0,0)->(2,2) -4, inner -96 + 24, (2,2)->(0,0) +4
# -> |-272| / 2 = 136. Even-odd: the inner square has winding 2, so the region is 100 - 36 = 64.
LOOPED = poly(ring((0, 0), (10, 0), (10, 10), (0, 10), (0, 0), (2, 2), (8, 2), (8, 8), (2, 8),
                   (2, 2), (0, 0)))
OUTER = ring((0, 0), (10, 0), (10, 10), (0, 10), (0, 0))
THIN_HOLE = ring((1, 1), (9, 1), (9, 9), (1, 9), (1, 1))  # 8x8 = 64
# Hole written with "), (": not split, read as ONE ring of 10 points, not closed back to (0,0):
# terms -200 (outer), (0,0)->(1,1) -1, (9,1)->(9,9) -144, (1,9)->(1,1) +16 -> |-329| / 2 = 164.5.
# Even-odd region (path closed back to (0,0)): 100 - 64 = 36.
SPACED_HOLE = poly(OUTER, THIN_HOLE, sep="), (")
PROPER_HOLE = poly(OUTER, THIN_HOLE)  # area 100 - 64 = 36, region 36
# Unclosed 4x4 square at x 5..9: terms (9,0)->(9,4) 18*-4 = -72 only -> area 36 (closed: 16).
UNCLOSED = poly(ring((5, 0), (9, 0), (9, 4), (5, 4)))
MULTI = ("MULTIPOLYGON (((0 0 0,10 0 0,10 10 0,0 10 0,0 0 0)),"
         "((20 20 0,30 20 0,30 30 0,20 30 0,20 20 0)))")

I = "AOI_1_A_img1"
CASES = {
    # bow-tie truth vs the 20x60 rectangle holding its left lobe: overlap 600,
    # IoU 600 / (1200 + 450 - 600) = 4/7 > 0.5: TP (a repaired bow-tie gives 600/1350: FP).
    "bowtie_truth": ([t_line(I, 0, BOWTIE)], [p_line(I, 0, rect(0, 0, 20, 60), 0.9)],
                     {I: (1, 0, 0)}, 1.0),
    # the same bow-tie as a proposal; its own copy as truth: 750 / (450 + 450 - 750) = 5: TP.
    "bowtie_both": ([t_line(I, 0, BOWTIE)], [p_line(I, 0, BOWTIE, 0.9)], {I: (1, 0, 0)}, 1.0),
    # equal lobes: area 0 -> dropped on both sides; the image has no polygons: not scored.
    "bowtie_equal": ([t_line(I, 0, poly(ring((0, 0), (10, 10), (10, 0), (0, 10), (0, 0))))],
                     [p_line(I, 0, poly(ring((0, 0), (10, 10), (10, 0), (0, 10), (0, 0))), 0.9)],
                     {I: (0, 0, 0)}, 0.0),
    # a ring traced twice has an empty region: nothing overlaps it. FP + FN.
    "ring_twice": ([t_line(I, 0, TWICE)], [p_line(I, 0, rect(0, 0, 10, 10), 0.9)],
                   {I: (0, 1, 1)}, 0.0),
    # looped ring vs its own square: overlap 64, IoU 64 / (100 + 136 - 64) = 0.372: FP + FN;
    # and vs an identical copy: 64 / (136 + 136 - 64) = 0.308: FP + FN as well.
    "looped_ring": ([t_line(I, 0, LOOPED), t_line("AOI_1_A_img2", 0, LOOPED)],
                    [p_line(I, 0, rect(0, 0, 10, 10), 0.9),
                     p_line("AOI_1_A_img2", 0, LOOPED, 0.9)],
                    {I: (0, 1, 1), "AOI_1_A_img2": (0, 1, 1)}, 0.0),
    # proper hole "),(": area 36 both sides, IoU 1: TP. Spaced hole truth vs the proper
    # polygon: 36 / (36 + 164.5 - 36) = 0.219: FP + FN.
    "holes": ([t_line(I, 0, PROPER_HOLE), t_line("AOI_1_A_img2", 0, SPACED_HOLE)],
              [p_line(I, 0, PROPER_HOLE, 0.9), p_line("AOI_1_A_img2", 0, PROPER_HOLE, 0.9)],
              {I: (1, 0, 0), "AOI_1_A_img2": (0, 1, 1)}, 2 * 0.5 * 0.5 / 1.0),
    # only the first polygon of a MULTIPOLYGON counts: a proposal on the second part is an FP.
    "multipolygon": ([t_line(I, 0, MULTI)], [p_line(I, 0, rect(20, 20, 30, 30), 0.9)],
                     {I: (0, 1, 1)}, 0.0),
    # exactly 20 px is kept on both sides (4 x 5); 4 x 4.99 = 19.96 is dropped on both sides.
    "area_20": ([t_line(I, 0, rect(0, 0, 4, 5)), t_line("AOI_1_A_img2", 0, rect(0, 0, 4, 4.99))],
                [p_line(I, 0, rect(0, 0, 4, 5), 0.9),
                 p_line("AOI_1_A_img2", 0, rect(0, 0, 4, 4.99), 0.9)],
                {I: (1, 0, 0), "AOI_1_A_img2": (0, 0, 0)}, 1.0),
    # unclosed ring: area 36 (kept) though it encloses 16; the closed copy (16) is dropped.
    # img2: the unclosed copy as proposal: 16 / (36 + 36 - 16) = 0.286: FP + FN.
    "unclosed": ([t_line(I, 0, UNCLOSED), t_line("AOI_1_A_img2", 0, UNCLOSED)],
                 [p_line(I, 0, rect(5, 0, 9, 4), 0.9), p_line("AOI_1_A_img2", 0, UNCLOSED, 0.9)],
                 {I: (0, 0, 1), "AOI_1_A_img2": (0, 1, 1)}, 0.0),
    # "POLYGON EMPTY" anywhere on the line (here the Geo column) or BuildingId -1 drop a truth.
    "empty_markers": ([f'{I},0,"{rect(0, 0, 10, 10)}","POLYGON EMPTY"',
                       f'AOI_1_A_img2,-1,"{rect(0, 0, 10, 10)}","{rect(0, 0, 10, 10)}"'],
                      [p_line(I, 0, rect(0, 0, 10, 10), 0.9),
                       p_line("AOI_1_A_img2", 0, rect(0, 0, 10, 10), 0.9)],
                      {I: (0, 1, 0), "AOI_1_A_img2": (0, 1, 0)}, 0.0),
    # a city whose images have no polygons still counts in the mean: AOI_2_B F1 1, AOI_1_A 0.
    "empty_city": ([t_line(I, -1, "POLYGON EMPTY"), t_line("AOI_2_B_img1", 0, rect(0, 0, 10, 10))],
                   [p_line("AOI_2_B_img1", 0, rect(0, 0, 10, 10), 0.9)],
                   {I: (0, 0, 0), "AOI_2_B_img1": (1, 0, 0)}, 0.5),
    # candidates need overlapping boxes; touching boxes are candidates but overlap 0: FP + FN.
    # Ties in confidence keep file order; ties in IoU go to the first truth in the file.
    "order": ([t_line(I, 0, rect(0, 0, 10, 10)), t_line(I, 1, rect(0, 0, 10, 10))],
              [p_line(I, 0, rect(0, 0, 10, 6), 0.7), p_line(I, 1, rect(0, 0, 10, 10), 0.7),
               p_line(I, 2, rect(10, 0, 20, 10), 0.9)],
              {I: (2, 1, 0)}, 0.8),
}


def write_case(tmp_path: Path, truth_lines, prop_lines) -> tuple[Path, Path]:
    truth, props = tmp_path / "truth.csv", tmp_path / "props.csv"
    truth.write_text("\n".join([TRUTH_HEADER, *truth_lines]) + "\n")
    props.write_text("\n".join([PROP_HEADER, *prop_lines]) + "\n")
    return truth, props


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_case(tmp_path, name):
    truth_lines, prop_lines, per_image, mean_f1 = CASES[name]
    result = score_csv(*write_case(tmp_path, truth_lines, prop_lines))
    got = {r.ImageId: (int(r.tp), int(r.fp), int(r.fn)) for r in result.per_image.itertuples()}
    assert got == per_image
    assert result.mean_city_f1 == pytest.approx(mean_f1)


def test_bowtie_iou_and_areas_by_hand(tmp_path):
    table = read_polygon_csv(write_case(tmp_path, [t_line(I, 0, BOWTIE)], [])[0], truth=True)
    assert table.areas().tolist() == [450.0]
    assert shapely.area(table.regions(np.array([0]))[0]) == pytest.approx(750.0)
    result = score_csv(*write_case(tmp_path, [t_line(I, 0, BOWTIE)],
                                   [p_line(I, 0, rect(0, 0, 20, 60), 0.9)]), full_iou=True)
    assert result.proposal_iou[0] == pytest.approx(4 / 7)


def test_looped_and_spaced_rings_by_hand(tmp_path):
    lines = [t_line(I, 0, LOOPED), t_line(I, 1, SPACED_HOLE), t_line(I, 2, TWICE),
             t_line(I, 3, UNCLOSED)]
    table = read_polygon_csv(write_case(tmp_path, lines, [])[0], truth=True)
    assert table.areas().tolist() == [136.0, 164.5, 200.0, 36.0]
    regions = shapely.area(table.regions(np.arange(4)))
    assert regions == pytest.approx([64.0, 36.0, 0.0, 16.0])


def test_even_odd_region_of_a_pentagram():
    # A five-pointed star drawn in one stroke: even-odd leaves the central pentagon out.
    angles = np.deg2rad(90 + 144 * np.arange(5))
    star = np.stack([np.cos(angles), np.sin(angles)], axis=1) * 10
    region = even_odd_region(star)
    full = shapely.make_valid(shapely.Polygon(star), method="linework")
    nonzero = shapely.union_all(shapely.get_parts(shapely.polygonize(
        shapely.get_parts(shapely.node(shapely.LineString(np.vstack([star, star[:1]])))))))
    # five tips only: strictly less than the whole star, and the hole is the pentagon
    assert region.area < nonzero.area
    assert region.area + shapely.difference(nonzero, region).area == pytest.approx(nonzero.area)
    assert full.area >= region.area - 1e-9


def _even_odd_one_ring(ring):
    """The even-odd region of one closed path, plainly: node, polygonise, keep the faces whose
    inner point crosses the path an odd number of times, union them."""
    if len(ring) < 3:
        return shapely.Polygon()
    closed = np.vstack([ring, ring[:1]])
    faces = shapely.get_parts(shapely.polygonize(shapely.get_parts(shapely.node(
        shapely.linestrings(closed)))))
    keep = []
    for face in faces:
        px, py = shapely.get_coordinates(shapely.point_on_surface(face))[0]
        crossings = 0
        for (x0, y0), (x1, y1) in zip(closed[:-1], closed[1:]):
            if (y0 > py) != (y1 > py) and px < x0 + (py - y0) * (x1 - x0) / (y1 - y0):
                crossings += 1
        if crossings % 2:
            keep.append(face)
    return shapely.union_all(keep) if keep else shapely.Polygon()


def test_even_odd_regions_of_many_rings_equal_each_ring_alone():
    # All rings go through GEOS and the crossing counts at once: each ring must get exactly the
    # region it gets alone (no face or edge of a neighbour), whatever its shape.
    angles = np.deg2rad(90 + 144 * np.arange(5))
    star = np.stack([np.cos(angles), np.sin(angles)], axis=1) * 10
    rng = np.random.default_rng(5)
    rings = [star, np.array([[0, 0], [30, 30], [30, 0], [0, 60]], float),  # bow-tie
             np.array([[0, 0], [10, 0], [10, 10], [0, 10], [0, 0], [2, 2], [8, 2], [8, 8],
                       [2, 8], [2, 2]], float),  # a loop inside
             np.array([[0, 0], [10, 0], [10, 10], [0, 10]] * 2, float),  # traced twice: empty
             np.array([[0, 0], [5, 5]], float),  # too few points: empty
             np.array([[0, 0], [10, 0], [20, 0]], float)]  # flat: empty
    rings += [rng.uniform(0, 50, (int(rng.integers(3, 12)), 2)) for _ in range(40)]
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rings])])
    coords = np.concatenate(rings)
    pick = np.array([3, 0, 5, 1, 2, 4, *range(6, len(rings))])  # any order, any subset
    batch = even_odd_regions(coords, offsets, pick)
    plain = [_even_odd_one_ring(rings[k]) for k in pick]
    assert all(shapely.equals_exact(a, b, tolerance=0) for a, b in zip(batch, plain))
    assert [shapely.area(batch[k]) for k in (0, 2, 5)] == [0.0, 0.0, 0.0]
    assert shapely.area(batch[3]) == pytest.approx(750.0)  # the bow-tie's two triangles
    assert shapely.area(batch[4]) == pytest.approx(64.0)  # the square less its loop
    assert all(shapely.equals_exact(even_odd_region(rings[k]), b, tolerance=0)
               for k, b in zip(pick, batch))


def test_ring_areas_add_terms_in_point_order():
    # numpy's pairwise sum would add these 12 terms in another order; the tester adds them left
    # to right, which (with these magnitudes) gives a different last bit.
    rng = np.random.default_rng(3)
    pts = rng.uniform(0, 650, size=(12, 2)).round(2)
    java = 0.0
    for i in range(1, len(pts)):
        java += (pts[i - 1, 0] + pts[i, 0]) * (pts[i - 1, 1] - pts[i, 1])
    got = ring_areas(pts, np.array([0, len(pts)]))
    assert got[0] == java / 2  # bit-identical


def test_wkt_for_tester_writes_readable_holes_and_parts():
    shape = shapely.from_wkt("MULTIPOLYGON (((0 0, 10 0, 10 10, 0 10, 0 0), (1 1, 9 1, 9 9, 1 9, "
                             "1 1)), ((20 20, 30 20, 30 30, 20 30, 20 20)))")
    texts = wkt_for_tester(shape, precision=1)
    assert len(texts) == 2 and "),(" in texts[0] and "), (" not in texts[0]
    assert texts[1] == "POLYGON ((20.0 20.0, 30.0 20.0, 30.0 30.0, 20.0 30.0, 20.0 20.0))"


def test_in_memory_scoring_equals_csv_scoring(tmp_path):
    truth_lines, prop_lines, _, _ = CASES["holes"]
    truth, props = write_case(tmp_path, truth_lines, prop_lines)
    from_csv = score_csv(truth, props)
    import pandas as pd

    frame_t = pd.DataFrame({"ImageId": [I, "AOI_1_A_img2"],
                            "geometry": shapely.from_wkt([PROPER_HOLE, PROPER_HOLE])})
    frame_p = frame_t.assign(Confidence=[0.9, 0.9])
    in_memory = score(frame_t, frame_p)
    # shapely keeps both holes properly, so both images match in memory
    assert in_memory.overall.tp == 2 and from_csv.overall.tp == 1


def test_pruning_never_changes_a_match(tmp_path):
    rng = np.random.default_rng(0)
    truth_lines, prop_lines = [], []
    for k in range(300):
        image = f"AOI_{k % 3}_C_img{k // 30}"
        x, y, w, h = *rng.uniform(0, 600, 2), *rng.uniform(3, 40, 2)
        truth_lines.append(t_line(image, k, rect(round(x, 2), round(y, 2), round(x + w, 2),
                                                 round(y + h, 2))))
        dx, dy, s = *rng.normal(0, 4, 2), rng.uniform(0.7, 1.3)
        prop_lines.append(p_line(image, k, rect(round(x + dx, 2), round(y + dy, 2),
                                                round(x + dx + w * s, 2),
                                                round(y + dy + h * s, 2)), rng.random()))
    truth, props = write_case(tmp_path, truth_lines, prop_lines)
    fast, full = score_csv(truth, props), score_csv(truth, props, full_iou=True)
    assert fast.proposal_match.tolist() == full.proposal_match.tolist()
    assert 0 < fast.overall.tp < 300


@pytest.mark.parametrize("line, message", [
    ('AOI_1_A_img1,0', "fewer than three comma-separated fields"),
    ('AOI_1_A_img1,0,"POLYGON ((1 2, 3 4",0.5', r"line 2: polygon text has '\(\(' but no"),
    (f'AOI_1_A_img1,0,"{rect(0, 0, 9, 9)}",high', "line 2: Confidence 'high' is not a number"),
    (f'AOI_1_A_img1,0,"{rect(0, 0, 9, 9)}",nan', "NaN must be written 'NaN'"),
    ('AOI_1_A_img1,0,"POLYGON ((1 2,3 x4,5 6,1 2))",0.5', "coordinate"),
    ('AOI_1_A_img1,0,"POLYGON ((1.2.3 2,3 4,5 6,1.2.3 2))",0.5', "line 2: coordinate '1.2.3'"),
    ('AOI_1_A_img1,0,"POLYGON ((1  2,3 4,5 6,1 2))",0.5', "coordinate ''"),
    ('AOI_1_A_img1,0,"POLYGON ((1 2 3,4,5 6 7,1 2 3))",0.5', "has no y coordinate"),
    (f'AOI_1_A_img1,0,"{MULTI}",0.9', "a MULTIPOLYGON proposal stops it"),
])
def test_lines_the_tester_cannot_read_name_file_and_line(tmp_path, line, message):
    truth, props = write_case(tmp_path, [t_line(I, 0, rect(0, 0, 10, 10))], [line])
    with pytest.raises(SpaceNetCSVError, match=message) as info:
        score_csv(truth, props)
    assert "props.csv" in str(info.value)


def test_truth_passed_as_proposals_says_so(tmp_path):
    truth, _ = write_case(tmp_path, [t_line(I, 0, rect(0, 0, 10, 10))], [])
    with pytest.raises(SpaceNetCSVError, match="has a truth header"):
        score_csv(truth, truth)


def test_several_truth_files_and_an_image_folder(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    t1, props = write_case(tmp_path / "a", [t_line(I, 0, rect(0, 0, 10, 10))],
                           [p_line(I, 0, rect(0, 0, 10, 10), 0.9)])
    t2, _ = write_case(tmp_path / "b", [t_line("AOI_2_B_img1", 0, rect(0, 0, 10, 10))], [])
    pan = tmp_path / "imgs" / "PAN"
    pan.mkdir(parents=True)
    (pan / "PAN_AOI_3_C_img7.tif").write_bytes(b"")
    from mnc_d2.evaluation.spacenet_metric import image_folder_ids

    result = score_csv([t1, t2], props, images=image_folder_ids(tmp_path / "imgs"))
    assert sorted(result.cities) == ["AOI_1_A", "AOI_2_B", "AOI_3_C"]
    assert result.mean_city_f1 == pytest.approx(1 / 3)  # F1 1, 0 (all FN), 0 (no polygons)


def test_threaded_overlay_equals_one_call():
    from mnc_d2.evaluation.spacenet_metric import overlay_areas

    rng = np.random.default_rng(1)
    a = shapely.box(*rng.uniform(0, 50, (2, 500)), *rng.uniform(50, 100, (2, 500)))
    b = shapely.box(*rng.uniform(0, 50, (2, 500)), *rng.uniform(50, 100, (2, 500)))
    for op in (shapely.intersection, shapely.union):
        assert np.array_equal(overlay_areas(op, a, b, min_chunk=100), shapely.area(op(a, b)))


def test_nadir_segments_of_spacenet4_ids():
    from mnc_d2.evaluation.rules import nadir_bin

    collect = "Atlanta_nadir{}_catid_1030010003D22F00_732701_3730989"
    assert [nadir_bin(collect.format(a)) for a in (7, 25, 26, 40, 42, 53)] == [
        "Nadir", "Nadir", "Off-Nadir", "Off-Nadir", "Very-Off-Nadir", "Very-Off-Nadir"]
    with pytest.raises(ValueError, match="names no off-nadir angle"):
        nadir_bin("AOI_2_Vegas_img1")


def test_spacenet4_ids_are_scored_by_nadir_segment(tmp_path, repo_root):
    ids = {a: f"Atlanta_nadir{a}_catid_10300100039AB000_7327{a:02d}_3730989" for a in (7, 30, 50)}
    truth = [t_line(ids[a], k, rect(0, 0, 10, 10 + k)) for a in ids for k in range(2)]
    # Nadir: both found (F1 1); Off-Nadir: one found, one FP (P 0.5, R 0.5, F1 0.5);
    # Very-Off-Nadir: nothing found (F1 0). Mean of the segment F1s = 0.5.
    props = [p_line(ids[7], 0, rect(0, 0, 10, 10), 0.9), p_line(ids[7], 1, rect(0, 0, 10, 11), 0.8),
             p_line(ids[30], 0, rect(0, 0, 10, 10), 0.9), p_line(ids[30], 1, rect(50, 50, 60, 60), 0.8)]
    t, p = write_case(tmp_path, truth, props)
    result = score_csv(t, p)
    assert result.group_by == "nadir"
    assert {k: round(c.f1, 6) for k, c in result.cities.items()} == {
        "Nadir": 1.0, "Off-Nadir": 0.5, "Very-Off-Nadir": 0.0}
    assert result.mean_city_f1 == pytest.approx(0.5)
    overall = score_csv(t, p, group_by="none")
    assert list(overall.cities) == ["all"] and overall.mean_city_f1 == pytest.approx(
        overall.overall.f1) and overall.overall.f1 == pytest.approx(2 * 3 / (2 * 3 + 1 + 3))
    out = subprocess.run([sys.executable, str(repo_root / "tools" / "score.py"), "--truth", str(t),
                          "--proposals", str(p), "--group-by", "nadir"],
                         capture_output=True, text=True, check=True)
    assert "mean nadir segment F1 (spacenet rules, grouped by nadir): 0.5000" in out.stdout


def test_a_mixed_ring_with_a_bad_number_names_file_and_line(tmp_path):
    # Loose characters pass the fast line; the mixed 3- and 2-field points go to the per-point
    # reader, whose error must still name the file and line.
    truth, props = write_case(tmp_path, [t_line(I, 0, rect(0, 0, 10, 10))],
                              ['AOI_1_A_img1,0,"POLYGON ((1.2.3 2 0,3 4,5 6,1 2))",0.5'])
    with pytest.raises(SpaceNetCSVError, match=r"props\.csv, line 2: coordinate '1\.2\.3'"):
        score_csv(truth, props)


def _same_table(a, b):
    for name in ("image", "coords", "ring_offsets", "poly_offsets", "confidence", "row", "line"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.shape == y.shape, name
        if x.dtype == object:
            assert x.tolist() == y.tolist(), name
        else:
            np.testing.assert_array_equal(x, y, err_msg=name)
    assert a.registered == b.registered and a.num_rows == b.num_rows


MIXED_LINES = [
    # usual lines, 3- and 2-field points, spaces after commas, holes
    ("{img},0,\"POLYGON ((0 0 0,10 0 0,10 10 0,0 10 0,0 0 0))\",{tail}"),
    ("{img},1,\"POLYGON ((20 0,30 0, 30 10,20 10,20 0),(22 2,24 2,24 4,22 2))\",{tail}"),
    ("  {img},2,\"POLYGON ((1e1 2E1 0,+3.5 .5 0,7. -0 0,1e1 2E1 0))\",{tail}\x01"),
    # general path: "), (" joins rings, MULTIPOLYGON, mixed point widths, NaN, a d suffix
    ("{img},3,\"POLYGON ((0 0 0,5 0 0,5 5 0,0 0 0), (1 1 0,2 1 0,2 2 0,1 1 0))\",{tail}"),
    ("{img},4,\"MULTIPOLYGON (((40 40 0,50 40 0,50 50 0,40 40 0)))\",{tail}"),
    ("{img},5,\"POLYGON ((60 60 0,70 60,70 70 0,60 60 0))\",{tail}"),
    ("{img},6,\"POLYGON ((80 80 0,90 80 0,90 90 0,80d 80 0))\",{tail}"),
    # no polygon: BuildingId -1, POLYGON EMPTY, no '((' at all
    ("{img},-1,\"POLYGON ((0 0 0,1 0 0,1 1 0,0 0 0))\",{tail}"),
    ("{img},7,POLYGON EMPTY,{tail}"),
    ("{img},8,\"nothing here\",{tail}"),
    # quotes in the id, a non-ASCII id starting with a no-break space, a duplicate line
    ("\"{img}\",9,\"POLYGON ((0 0 0,3 0 0,3 3 0,0 0 0))\",{tail}"),
    ("\xa0{img}\u00e9,10,\"POLYGON ((0 0 0,3 0 0,3 3 0,0 0 0))\",{tail}"),
    ("{img},0,\"POLYGON ((0 0 0,10 0 0,10 10 0,0 10 0,0 0 0))\",{tail}"),
]


@pytest.mark.parametrize("truth", [True, False])
def test_bulk_reader_equals_the_line_by_line_reader(tmp_path, truth, caplog):
    """The whole-column reader (pyarrow) gives the very table of the tester's line-by-line
    string cutting, on every kind of line, in file order, with headers, comments and blank
    lines between them and Windows line ends."""
    from mnc_d2.evaluation.tester_polygons import _read_polygon_csv

    tail = '"POLYGON ((0 0 0,1 0 0,1 1 0,0 0 0))"'  # truth's Geo column
    header = TRUTH_HEADER if truth else PROP_HEADER
    # a MULTIPOLYGON proposal stops the tester (its Confidence is read inside the polygon text)
    templates = [t for t in MIXED_LINES if truth or "MULTIPOLYGON" not in t]
    lines = [header]
    for k, image in enumerate(["AOI_2_Vegas_img1", "AOI_3_Paris_img2", "AOI_2_Vegas_img3"]):
        lines += [template.format(img=image, tail=tail if truth else f"0.{k + 1}{j}")
                  for j, template in enumerate(templates)]
        lines += ["", "# a comment", "IMAGEID,again a header", "   "]
    path = tmp_path / "mixed.csv"
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode("utf-8"))
    with caplog.at_level(logging.WARNING):
        bulk = _read_polygon_csv(path, truth, fast=True)
        warned_bulk = [r.getMessage() for r in caplog.records]
        caplog.clear()
        general = _read_polygon_csv(path, truth, fast=False)
        warned_general = [r.getMessage() for r in caplog.records]
    _same_table(bulk, general)
    # both readers count repeated data lines alike (headers, comments and blanks repeat too but
    # are not rows): in the truth each image's last line repeats its first
    assert warned_bulk == warned_general
    assert any("has 3 duplicate row(s)" in m for m in warned_bulk) == truth
    # three lines per image hold no polygon, but in the truth the "nothing here" line has one
    # in its Geo column (the tester reads the first '((' of the line)
    assert len(bulk) == 3 * (len(templates) - 3 + truth) and len(bulk.registered) == 9


def test_bulk_reader_equals_line_by_line_on_hostile_files(tmp_path):
    from bench.bench_scorer import make_pair
    from mnc_d2.evaluation.tester_polygons import _read_polygon_csv

    truth, props, _ = make_pair(30, 20, 3, tmp_path, True)
    for path, is_truth in ((truth, True), (props, False)):
        _same_table(_read_polygon_csv(path, is_truth, fast=True),
                    _read_polygon_csv(path, is_truth, fast=False))


def test_a_confidence_the_bulk_reader_cannot_convert_is_named(tmp_path):
    # '1-2' passes the loose character check of the bulk reader but is no number: the file is
    # re-read line by line, whose error names the line.
    truth, props = write_case(tmp_path, [t_line(I, 0, rect(0, 0, 10, 10))],
                              [p_line(I, 0, rect(0, 0, 10, 10), 0.5),
                               p_line(I, 1, rect(0, 0, 10, 10), "1-2")])
    with pytest.raises(SpaceNetCSVError, match=r"props\.csv, line 3: Confidence '1-2'"):
        score_csv(truth, props)


def test_a_file_that_is_not_utf8_is_named_with_its_line(tmp_path):
    truth, props = write_case(tmp_path, [t_line(I, 0, rect(0, 0, 10, 10))],
                              [p_line(I, 0, rect(0, 0, 10, 10), 0.5)])
    props.write_bytes(props.read_bytes() + b"AOI_1_A_img\xff,1,\"POLYGON ((0 0,1 0,1 1,0 0))\",1\n")
    with pytest.raises(SpaceNetCSVError, match=r"props\.csv, line 3: byte 0xff is not UTF-8"):
        score_csv(truth, props)



def test_a_byte_order_mark_opening_the_file_is_dropped(tmp_path):
    # spreadsheet programs save CSVs with one; the header must stay a header
    from mnc_d2.evaluation.tester_polygons import _read_polygon_csv

    truth, props = write_case(tmp_path, [t_line(I, 0, rect(0, 0, 10, 10)),
                                         t_line(I, 1, rect(20, 0, 30, 10))],
                              [p_line(I, 0, rect(0, 0, 10, 10), 0.5)])
    plain = score_csv(truth, props).overall
    tables = [_read_polygon_csv(p, p == truth, fast=True) for p in (truth, props)]
    for path in (truth, props):
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    marked = score_csv(truth, props).overall
    assert (marked.tp, marked.fp, marked.fn) == (plain.tp, plain.fp, plain.fn) == (1, 0, 1)
    for path, table in zip((truth, props), tables):
        for fast in (True, False):
            _same_table(_read_polygon_csv(path, path == truth, fast=fast), table)
