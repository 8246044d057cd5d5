"""Tiling a scene into overlapping windows and merging detections across tile borders."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from shapely.geometry import box

from mnc_d2.inference.tiling import in_core, merge_across_tiles, tile_grid


def test_tile_cores_partition_the_scene():
    tiles = tile_grid(1500, 1000, 650, 128)
    cores = [box(*t.core) for t in tiles]
    assert shapely.union_all(cores).equals(box(0, 0, 1500, 1000))
    assert sum(c.area for c in cores) == pytest.approx(1500 * 1000)
    for t in tiles:  # every core lies inside its tile
        w = t.window
        assert box(w.col_off, w.row_off, w.col_off + w.width, w.row_off + w.height).contains(
            box(*t.core))


def test_building_on_a_tile_border_comes_out_once():
    tiles = tile_grid(1200, 650, 650, 128)  # two columns overlapping in x 550..650
    building = box(590, 100, 620, 140)  # inside both tiles
    kept = [bool(in_core([building], t.core)[0]) for t in tiles]
    assert kept.count(True) == 1
    # A large building cut by both tiles is reassembled.
    left, right = box(400, 300, 650, 400), box(550, 300, 800, 400)
    merged, scores = merge_across_tiles([left, right, box(0, 0, 10, 10)], [0.9, 0.8, 0.7],
                                        [0, 1, 0])
    assert len(merged) == 2 and any(m.equals(box(400, 300, 800, 400)) for m in merged)
    assert sorted(scores) == [0.7, 0.9]


def test_inside_data_weighs_the_area_on_data():
    """The nodata rule on merged polygons: a building with more than half its area on pixels
    without data is dropped, wherever in the scene and however many tiles' cores it spans."""
    from mnc_d2.geometry.on_data import inside_data
    from mnc_d2.inference.predictor import gap_parts

    tiles = tile_grid(300, 200, 128, 32)
    scene = np.ones((200, 300), dtype=bool)
    scene[150:, 200:] = False  # the scene's lower-right corner holds no data
    scene[40:43, 60:200] = False  # and a thin seam without data across three tiles' cores
    gaps = []
    for t in tiles:
        w = t.window
        valid = scene[w.row_off:w.row_off + w.height, w.col_off:w.col_off + w.width]
        if not valid.all():
            gaps.append(gap_parts(t, valid))
    assert 0 < len(gaps) < len(tiles)
    # the parts of all tiles cover exactly the pixels without data, each once
    assert shapely.area(np.concatenate(gaps)).sum() == (~scene).sum()
    corners = [(x, y) for y in range(0, 194, 5) for x in range(0, 294, 5)]
    squares = [box(x, y, x + 6, y + 6) for x, y in corners]
    keep = inside_data(squares, gaps)
    outside = np.array([(~scene[y:y + 6, x:x + 6]).mean() for x, y in corners])
    assert keep.tolist() == (outside <= 0.5).tolist()
    assert 0 < (~keep).sum() < len(squares) and (keep & (outside > 0)).any()
    # a building across tile edges and the seam, merged: judged by the whole polygon
    assert inside_data([box(40, 30, 260, 52), box(190, 140, 210, 160), box(195, 145, 215, 170)],
                       gaps).tolist() == [True, True, False]
