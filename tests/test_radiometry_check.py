"""The warning for a scene far darker or brighter than the training imagery."""

from __future__ import annotations

import numpy as np
import rasterio

from mnc_d2.data.radiometry import dn_transform
from mnc_d2.inference.radiometry_check import (FAR_FACTOR, MATCH_GRID, SAMPLE_PX,
                                               matching_gain_offset, radiometry_warning,
                                               sample_windows, scene_band_stats, scene_levels)

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


def test_matching_statistics_and_the_linear_map(tmp_path):
    """--match-radiometry's per-band mean and spread: the whole scene when it is small (every
    valid pixel, nodata left out), sampled windows beyond MATCH_GRID * SAMPLE_PX a side; the
    map x * gain + offset gives them the training values, and a constant band is only
    shifted."""
    rng = np.random.default_rng(0)
    data = rng.normal(100, 20, size=(2, 300, 200)).clip(1, None).astype(np.float32)
    data[1] = 50.0  # constant
    data[:, :10] = 0  # nodata rows
    path = tmp_path / "s.tif"
    with rasterio.open(path, "w", driver="GTiff", height=300, width=200, count=2,
                       dtype="float32", nodata=0, crs="EPSG:32611",
                       transform=rasterio.Affine(0.3, 0, 0, 0, -0.3, 0)) as dst:
        dst.write(data)
    with rasterio.open(path) as src:
        mean, std = scene_band_stats(src, [1, 2], dn_transform(""))
    valid = data[:, 10:].reshape(2, -1).astype(np.float64)
    assert np.allclose(mean, valid.mean(axis=1)) and np.allclose(std, valid.std(axis=1))
    gain, offset = matching_gain_offset((mean, std), [600.0, 400.0], [300.0, 100.0])
    mapped = valid * gain[:, None] + offset[:, None]
    assert np.allclose(mapped[0].mean(), 600.0) and np.allclose(mapped[0].std(), 300.0)
    assert gain[1] == 1.0 and np.allclose(mapped[1], 400.0)
    assert len(sample_windows(5000, 4000, MATCH_GRID)) == MATCH_GRID ** 2
    assert MATCH_GRID * SAMPLE_PX >= 1000  # a SpaceNet tile (650 or 900 px) is read whole
