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


def test_inside_data_reads_the_owning_tiles_validity():
    """The nodata rule on merged polygons: a representative point on a pixel without data drops
    the building, wherever in the scene and whichever tile's core holds it."""
    from mnc_d2.inference.predictor import _CoreValidity, inside_data

    tiles = tile_grid(300, 200, 128, 32)
    scene = np.ones((200, 300), dtype=bool)
    scene[150:, 200:] = False  # the scene's lower-right corner holds no data
    gaps = {}
    for k, t in enumerate(tiles):
        w = t.window
        valid = scene[w.row_off:w.row_off + w.height, w.col_off:w.col_off + w.width]
        if not valid.all():
            gaps[k] = _CoreValidity(t, valid)
    assert 0 < len(gaps) < len(tiles)
    squares = [box(x, y, x + 6, y + 6) for y in range(0, 194, 7) for x in range(0, 294, 7)]
    keep = inside_data(squares, tiles, gaps)
    points = shapely.get_coordinates(shapely.point_on_surface(squares))
    expected = scene[points[:, 1].astype(int), points[:, 0].astype(int)]
    assert keep.tolist() == expected.tolist() and 0 < (~keep).sum() < len(squares)
    # a building across a tile edge, merged: judged by the whole polygon's point (in data)
    across = box(190, 100, 260, 152)
    assert inside_data([across], tiles, gaps).tolist() == [True]
