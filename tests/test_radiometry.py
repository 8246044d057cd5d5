"""INPUT.DN_TRANSFORM: what DNs become before normalisation, the same in every reader."""

from __future__ import annotations

import json

import numpy as np
import pytest
from affine import Affine

from mnc_d2.data import SpaceNetDatasetMapper, compute_band_stats, resolve_band_stats
from mnc_d2.data.radiometry import dn_transform, dn_transform_from_config
from test_data import _base_cfg, _write_tif

GEO = Affine(0.5, 0, 100, 0, -0.5, 200)


def _tile(path, nodata=None) -> np.ndarray:
    """(3, 8, 8) uint16 DNs written to ``path`` (the top-left pixel 0, the nodata value)."""
    data = (np.arange(3 * 64, dtype=np.uint16).reshape(3, 8, 8) * 10 + 5)
    data[:, 0, 0] = 0
    _write_tif(path, data, GEO, nodata=nodata)
    return data


def _log_cfg(mean=(5.0, 5.5, 6.0)):
    cfg = _base_cfg()
    cfg.INPUT.DN_TRANSFORM = "log"
    cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD = list(mean), [1.0, 1.0, 1.0]
    cfg.INPUT.MIN_SIZE_TEST = cfg.INPUT.MAX_SIZE_TEST = 8  # the test resize keeps 8 x 8
    return cfg


def test_log_transform_and_its_inverse():
    log = dn_transform("log")
    dns = np.array([[0.0, 9.0, 2047.0, -3.0]], np.float32)
    out = log.forward(dns)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, np.log1p([[0.0, 9.0, 2047.0, 0.0]]), rtol=1e-6)
    assert log.inverse([np.log(10.0), 0.0]) == pytest.approx([9.0, 0.0])
    masked = np.ma.array([1.0, 3.0], mask=[False, True])
    assert log.forward(masked).mask.tolist() == [False, True]  # band statistics keep the mask
    root = dn_transform("sqrt")
    np.testing.assert_allclose(root.forward(dns), [[0.0, 3.0, np.sqrt(2047.0), 0.0]], rtol=1e-6)
    assert root.inverse([3.0]) == pytest.approx([9.0])
    with pytest.raises(ValueError, match=r"\[300.0\] lie outside .* \(0 to 256.00\)"):
        root.check_means([300.0, 20.0, 20.0])
    plain = dn_transform("")
    assert plain.identity and plain.forward(dns) is dns and plain.inverse([400]) == [400.0]


def test_bad_transform_and_means_name_the_key():
    with pytest.raises(ValueError, match=r"INPUT.DN_TRANSFORM='ln': choose from '', 'log', "
                                         r"'sqrt'"):
        dn_transform("ln")
    cfg = _log_cfg(mean=(400.0, 400.0, 400.0))  # DN-scale means left from a linear config
    with pytest.raises(ValueError, match=r"MODEL.PIXEL_MEAN=\[400.0.*INPUT.DN_TRANSFORM='log'"
                                         r".*INPUT.BAND_STATS auto"):
        dn_transform_from_config(cfg)
    with pytest.raises(ValueError, match="MODEL.PIXEL_MEAN"):
        SpaceNetDatasetMapper(cfg, is_train=False)  # the mapper's band check refuses it too


def test_mapper_feeds_logs_and_nodata_normalises_to_zero(tmp_path):
    tif = tmp_path / "t.tif"
    data = _tile(tif, nodata=0)
    cfg = _log_cfg()
    record = {"file_name": str(tif), "image_id": "t", "height": 8, "width": 8}
    image = SpaceNetDatasetMapper(cfg, is_train=False)(record)["image"].numpy()
    np.testing.assert_allclose(image[:, 1:, 1:], np.log1p(data[:, 1:, 1:].astype(np.float64)),
                               rtol=1e-6)
    np.testing.assert_allclose(image[:, 0, 0], cfg.MODEL.PIXEL_MEAN, rtol=1e-6)


def test_training_jitter_acts_on_dns_before_the_log(tmp_path):
    """Radiometric jitter and band dropout keep their meaning: a gain of 2 on the DNs is
    log(1 + 2 DN) after the transform (not 2 log(1 + DN)), a dropped band is its PIXEL_MEAN."""
    tif = tmp_path / "t.tif"
    data = _tile(tif, nodata=0).astype(np.float64)
    cfg = _log_cfg()
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (8,), 8
    cfg.INPUT.AUGMENT.HFLIP_PROB = cfg.INPUT.AUGMENT.VFLIP_PROB = 0.0
    cfg.INPUT.AUGMENT.ROT90 = False
    cfg.INPUT.AUGMENT.BRIGHTNESS = (2.0, 2.0)
    cfg.INPUT.AUGMENT.BAND_DROPOUT.PROB = 1.0
    cfg.INPUT.AUGMENT.BAND_DROPOUT.BANDS = (3,)
    cfg.INPUT.BANDS = [1, 2, 3]
    record = {"file_name": str(tif), "image_id": "t", "height": 8, "width": 8,
              "annotations": []}
    image = SpaceNetDatasetMapper(cfg, is_train=True)(record)["image"].numpy()
    np.testing.assert_allclose(image[:2, 1:, 1:], np.log1p(2 * data[:2, 1:, 1:]), rtol=1e-5)
    np.testing.assert_allclose(image[:2, 0, 0], cfg.MODEL.PIXEL_MEAN[:2], rtol=1e-6)  # nodata
    assert np.all(image[2] == np.float32(cfg.MODEL.PIXEL_MEAN[2]))


def test_band_stats_of_the_logs_and_a_mismatched_file(tmp_path):
    tif = tmp_path / "t.tif"
    data = _tile(tif, nodata=0)
    stats = compute_band_stats([str(tif)], [1, 2, 3], transform=dn_transform("log"))
    valid = np.log1p(data.reshape(3, -1)[:, 1:].astype(np.float64))  # nodata left out
    assert stats["dn_transform"] == "log"
    assert stats["mean"] == pytest.approx(valid.mean(1).tolist(), rel=1e-9)
    assert stats["std"] == pytest.approx(valid.std(1).tolist(), rel=1e-6)
    assert compute_band_stats([str(tif)], [1, 2, 3])["dn_transform"] == ""
    saved = tmp_path / "band_stats.json"
    saved.write_text(json.dumps(stats))
    cfg = _base_cfg()
    cfg.INPUT.BANDS, cfg.INPUT.BAND_STATS = [1, 2, 3], str(saved)
    with pytest.raises(ValueError, match=r"band_stats.json holds statistics of DNs with "
                                         r"INPUT.DN_TRANSFORM='log' but the config sets ''"):
        resolve_band_stats(cfg)
    del stats["dn_transform"]  # a file of an earlier version: statistics of the DNs as read
    saved.write_text(json.dumps(stats))
    cfg.INPUT.DN_TRANSFORM = "log"
    with pytest.raises(ValueError, match="INPUT.DN_TRANSFORM=''"):
        resolve_band_stats(cfg)
    cfg.INPUT.DN_TRANSFORM = ""
    assert resolve_band_stats(cfg)["mean"] == cfg.MODEL.PIXEL_MEAN


def test_int8_calibration_tiles_are_logs(tmp_path):
    from mnc_d2.export.quantize import calibration_tiles

    tif = tmp_path / "t.tif"
    data = _tile(tif, nodata=0).astype(np.float64)
    mean = [5.0, 5.5, 6.0]
    (tile,) = calibration_tiles([str(tif)], [1, 2, 3], mean, 10, dn_transform("log"))
    assert tile.shape == (1, 3, 10, 10)  # padded below and right with the means
    np.testing.assert_allclose(tile[0, :, 1:8, 1:8], np.log1p(data[:, 1:, 1:]), rtol=1e-6)
    np.testing.assert_allclose(tile[0, :, 0, 0], mean, rtol=1e-6)
    np.testing.assert_allclose(tile[0, :, 9, 9], mean, rtol=1e-6)
