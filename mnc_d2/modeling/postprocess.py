"""Model output -> pixel polygons: the post-processing shared by the SpaceNet evaluator and the
scene predictor (prediction does not pass through the evaluator)."""

from __future__ import annotations

import numpy as np
import torch
from shapely.geometry import Polygon

from ..geometry.polygons import mask_to_polygon


def instances_to_polygons(instances, score_thresh: float = 0.5,
                          simplify_tolerance: float = 1.5, regularize: bool = False,
                          min_edge: float = 0.0) -> list[tuple[Polygon, float]]:
    """Predicted ``Instances`` (CPU; ``pred_masks`` (R, H, W) bool, or probabilities read at
    0.5; ``scores`` (R,)) -> one pixel polygon per instance scoring at least ``score_thresh``
    (its largest part), with the score."""
    if len(instances) == 0:
        return []
    if not instances.has("pred_masks"):
        raise KeyError("instance masks needed: the model output has no 'pred_masks' (is "
                       "MODEL.MASK_ON False?)")
    scores = instances.scores.numpy()
    out = []
    for i in np.flatnonzero(scores >= score_thresh).tolist():
        mask = instances.pred_masks[i]
        mask = (mask if mask.dtype == torch.bool else mask >= 0.5).numpy()
        poly = mask_to_polygon(mask, simplify_tolerance=simplify_tolerance,
                               regularize=regularize, min_edge=min_edge)
        if poly is not None:
            out.append((poly, float(scores[i])))
    return out
