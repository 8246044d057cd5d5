"""Score thresholds and score calibration from one SpaceNet scoring (no torch, no Detectron2).

The SpaceNet matching is greedy in order of decreasing confidence, so whether a proposal is a
true positive never depends on proposals of lower confidence. Scoring once with every proposal
above a low floor therefore gives, for any higher threshold t, exactly the counts of scoring only
the proposals with confidence >= t: TP(t) = matched proposals >= t, FP(t) = kept unmatched
proposals >= t, FN(t) = kept truths - TP(t). :func:`threshold_sweep` uses this to report F1 at
every threshold of a grid from a single :func:`~.spacenet_metric.score` call.

:func:`reliability` measures how well the scores are calibrated as the probability that a
detection is a SpaceNet true positive: proposals are binned by confidence, and each bin's mean
confidence is compared with its fraction of true positives; the expected calibration error (ECE)
is the count-weighted mean absolute gap.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .spacenet_metric import ScoreResult


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)


def threshold_sweep(result: ScoreResult, proposals: pd.DataFrame, truth: pd.DataFrame,
                    thresholds) -> pd.DataFrame:
    """F1 at each threshold (see the module docstring) from one scoring.

    ``result`` = ``score(truth, proposals)`` with every proposal above the lowest threshold;
    ``proposals`` needs ImageId and Confidence, ``truth`` ImageId (rows in the order scored).
    Returns one row per threshold: threshold, TP, FP, FN, precision, recall, F1, score (the mean
    of the group F1s under the result's grouping: cities for SpaceNet 1/2, nadir segments for
    SpaceNet 4; the release's headline number) and mean_city_F1 (the same number, under the
    name SpaceNet 2 reports used).
    """
    thresholds = np.asarray(sorted(float(t) for t in thresholds))
    conf = proposals["Confidence"].to_numpy(dtype=float)
    tp_mask = result.proposal_match >= 0
    fp_mask = result.proposal_kept & ~tp_mask
    p_city = np.array([result.group_of(i) for i in proposals["ImageId"].astype(str)])
    t_city = np.array([result.group_of(i) for i in truth["ImageId"].astype(str)])
    cities = sorted(set(t_city) | set(p_city))
    above = conf[None, :] >= thresholds[:, None]  # (T, P)
    rows = {"threshold": thresholds}
    city_f1 = []
    for city in cities:
        in_city = p_city == city
        tp = (above & (tp_mask & in_city)[None]).sum(axis=1)
        fp = (above & (fp_mask & in_city)[None]).sum(axis=1)
        fn = int((result.truth_kept & (t_city == city)).sum()) - tp
        city_f1.append(_f1(tp, fp, fn))
    tp = (above & tp_mask[None]).sum(axis=1)
    fp = (above & fp_mask[None]).sum(axis=1)
    fn = int(result.truth_kept.sum()) - tp
    rows.update(TP=tp, FP=fp, FN=fn,
                precision=np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0),
                recall=np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 0.0),
                F1=_f1(tp, fp, fn),
                score=np.mean(city_f1, axis=0) if city_f1 else np.zeros(len(thresholds)))
    rows["mean_city_F1"] = rows["score"]
    return pd.DataFrame(rows)


def best_threshold(sweep: pd.DataFrame, key: str = "score") -> dict:
    """The sweep row with the highest ``key`` (ties: the lowest threshold), as a dict."""
    row = sweep.iloc[int(np.argmax(sweep[key].to_numpy()))]
    return {k: (float(v) if k not in ("TP", "FP", "FN") else int(v)) for k, v in row.items()}


def reliability(confidences: np.ndarray, is_tp: np.ndarray, bins: int = 10) -> dict:
    """Reliability table and expected calibration error of detection confidences.

    confidences: (P,) in [0, 1]; is_tp: (P,) bool. Returns {"ECE", "bins": [{"low", "high",
    "count", "mean_confidence", "tp_fraction"}]} (empty bins are left out).
    """
    confidences = np.asarray(confidences, dtype=float)
    is_tp = np.asarray(is_tp, dtype=bool)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(confidences, edges[1:-1]), 0, bins - 1)
    table, gap = [], 0.0
    for b in range(bins):
        sel = index == b
        if not sel.any():
            continue
        mean_conf, frac = float(confidences[sel].mean()), float(is_tp[sel].mean())
        gap += sel.sum() * abs(mean_conf - frac)
        table.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": int(sel.sum()),
                      "mean_confidence": mean_conf, "tp_fraction": frac})
    return {"ECE": float(gap / max(len(confidences), 1)), "bins": table}
