"""Threshold sweep and reliability: the sweep from one scoring equals scoring at each threshold."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import shapely

from mnc_d2.evaluation.calibration import best_threshold, reliability, threshold_sweep
from mnc_d2.evaluation.spacenet_metric import score


def _frames(seed=0):
    rng = np.random.default_rng(seed)
    truth, props = [], []
    for city, n_img in (("Vegas", 4), ("Paris", 3)):
        for i in range(n_img):
            image = f"AOI_{2 if city == 'Vegas' else 3}_{city}_img{i}"
            for b in range(6):
                x, y = rng.uniform(0, 500, 2)
                truth.append((image, b, shapely.box(x, y, x + 30, y + 20)))
                for _ in range(int(rng.integers(0, 3))):  # near and far duplicates
                    dx, dy = rng.normal(0, 8, 2)
                    props.append((image, shapely.box(x + dx, y + dy, x + dx + 30, y + dy + 20),
                                  float(rng.uniform(0.05, 1.0))))
            for _ in range(3):  # pure false positives
                x, y = rng.uniform(0, 500, 2)
                props.append((image, shapely.box(x, y, x + 15, y + 15), float(rng.uniform(0.05, 1))))
        truth.append((f"AOI_{2 if city == 'Vegas' else 3}_{city}_img99", -1, shapely.Polygon()))
    truth = pd.DataFrame(truth, columns=["ImageId", "BuildingId", "geometry"])
    props = pd.DataFrame(props, columns=["ImageId", "geometry", "Confidence"])
    props.insert(1, "BuildingId", range(len(props)))
    return truth, props


def test_sweep_equals_scoring_each_threshold():
    truth, props = _frames()
    thresholds = [0.05, 0.3, 0.5, 0.77, 0.95]
    sweep = threshold_sweep(score(truth, props), props, truth, thresholds)
    for row in sweep.itertuples():
        direct = score(truth, props[props.Confidence >= row.threshold].reset_index(drop=True))
        assert (row.TP, row.FP, row.FN) == (direct.overall.tp, direct.overall.fp,
                                            direct.overall.fn)
        assert row.mean_city_F1 == pytest.approx(direct.mean_city_f1)
    best = best_threshold(sweep)
    assert best["mean_city_F1"] == pytest.approx(sweep.mean_city_F1.max())


def test_reliability_of_perfect_and_overconfident_scores():
    conf = np.array([0.95, 0.95, 0.15, 0.15])
    assert reliability(conf, np.array([True, True, False, False]))["ECE"] == pytest.approx(0.1)
    worst = reliability(np.array([0.95, 0.95]), np.array([False, False]))
    assert worst["ECE"] == pytest.approx(0.95)
    assert worst["bins"] == [{"low": 0.9, "high": 1.0, "count": 2, "mean_confidence": 0.95,
                              "tp_fraction": 0.0}]
