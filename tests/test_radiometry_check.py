"""The warning for a scene far darker or brighter than the training imagery."""

from __future__ import annotations

import numpy as np
import rasterio

from mnc_d2.data.radiometry import dn_transform
from mnc_d2.inference.radiometry_check import (FAR_FACTOR, radiometry_warning, sample_windows,
                                               scene_levels)

TRAINING = [674.7, 604.1, 479.4]  # a demo model's PIXEL_MEAN (11-bit DNs)


def test_the_warning_names_the_scene_the_values_and_the_likely_cause():
    eight_bit = np.asarray(TRAINING) / 8  # 11-bit DNs stretched to 0-255
    text = radiometry_warning(eight_bit, TRAINING, "uint8", "x.tif")
    assert text.startswith("x.tif: its bands' typical values (84.34, 75.51, 59.92)")
    assert "8x darker" in text and "8-bit data" in text and "674.7, 604.1, 479.4" in text
    reflectance = np.asarray(TRAINING) / 10000
    assert "floating-point data: reflectances?" in radiometry_warning(reflectance, TRAINING,
                                                                      "float32", "r.tif")
    assert "32x brighter" in radiometry_warning(np.asarray(TRAINING) * 32, TRAINING, "uint16",
                                                "s.tif")
    # all zero (undeclared nodata): said so, with the fix, instead of an enormous factor
    zero = radiometry_warning([0.0, 0.0, 0.0], TRAINING, "uint16", "z.tif")
    assert zero.startswith("z.tif: every sampled pixel is 0") and "-a_nodata 0" in zero
    # darker or brighter within the factor, or only some bands far off: no warning
    for levels in (np.asarray(TRAINING) / (FAR_FACTOR * 0.9), np.asarray(TRAINING) * 3,
                   [TRAINING[0] / 10, TRAINING[1], TRAINING[2]], None):
        assert radiometry_warning(levels, TRAINING, "uint16", "y.tif") is None


def test_levels_are_sampled_over_the_scene_without_nodata(tmp_path):
    assert len(sample_windows(5000, 3000)) == 9
    assert all(w.width == 50 and w.col_off == 0 for w in sample_windows(50, 400))
    data = np.full((3, 400, 300), 800, dtype=np.uint16)
    data[:, :, :100] = 0  # a nodata collar: not counted
    path = tmp_path / "s.tif"
    with rasterio.open(path, "w", driver="GTiff", height=400, width=300, count=3,
                       dtype="uint16", nodata=0) as dst:
        dst.write(data)
    with rasterio.open(path) as src:
        assert np.allclose(scene_levels(src, [1, 2, 3], dn_transform("")), 800)
        # through log(1 + DN): the inverse of the logs' mean, the DNs' own level here
        assert np.allclose(scene_levels(src, [3, 2], dn_transform("log")), 800)


def test_the_hard_setting_is_not_warned_about_against_a_default_model(tmp_path):
    """The synthetic `hard` setting (darker roofs, clutter) is imagery a `default` model should
    be run on without a warning: its tiles' levels against the band means of `default` tiles
    (what INPUT.BAND_STATS auto computes from training tiles) stay inside the factor."""
    import glob

    from mnc_d2.synthetic.spacenet2 import generate_city

    levels = {}
    for setting in ("default", "hard"):
        for city in ("vegas", "paris"):
            generate_city(tmp_path / setting, city, 4, seed=3, progress=False, setting=setting)
        found = []
        for path in sorted(glob.glob(str(tmp_path / setting / "*" / "RGB-PanSharpen" / "*.tif"))):
            with rasterio.open(path) as src:
                found.append(scene_levels(src, [1, 2, 3], dn_transform("")))
        levels[setting] = np.asarray(found)
    training = levels["default"].mean(axis=0)
    ratios = levels["hard"] / training
    # every band of every tile at least 1.25x inside the factor (the darkest, Paris's red: 0.37)
    assert len(ratios) == 8 and (ratios > 1.25 / FAR_FACTOR).all(), ratios
    assert (ratios < FAR_FACTOR / 1.25).all(), ratios
    for lv in levels["hard"]:
        assert radiometry_warning(lv, training, "uint16", "hard.tif") is None
