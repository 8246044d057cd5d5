"""Model output -> pixel polygons: the post-processing shared by the SpaceNet evaluator, the
scene predictor and the exported-model backends (prediction does not pass through the
evaluator). Torch-free: Detectron2 ``Instances`` (torch tensors) and the exported backends'
numpy detections are read the same way."""

from __future__ import annotations

import numpy as np
from shapely.geometry import Polygon

from .align import align_neighbours
from .polygons import masks_to_polygon


def _numpy(value) -> np.ndarray:
    return value if isinstance(value, np.ndarray) else value.numpy()


def instances_to_polygons(instances, score_thresh: float = 0.5,
                          simplify_tolerance: float = 1.5, regularize: bool = False,
                          min_edge: float = 0.0, align_deg: float = 0.0, align_gap: float = 10.0,
                          align_min_score: float | None = None) -> list[tuple[Polygon, float]]:
    """Predicted ``Instances`` (CPU; ``pred_masks`` (R, H, W) bool, or probabilities read at
    0.5; ``scores`` (R,); torch tensors or numpy arrays) -> one pixel polygon per instance
    scoring at least ``score_thresh`` (its largest part), with the score.

    ``align_deg`` > 0: close (``align_gap`` px), nearly parallel neighbours among the polygons
    scoring at least ``align_min_score`` (default ``score_thresh``) are made parallel
    (:func:`mnc_d2.geometry.align.align_neighbours`); the others are returned as traced."""
    if len(instances) == 0:
        return []
    if not instances.has("pred_masks"):
        raise KeyError("instance masks needed: the model output has no 'pred_masks' (is "
                       "MODEL.MASK_ON False?)")
    scores = _numpy(instances.scores)
    above = np.flatnonzero(scores >= score_thresh).tolist()
    stack = _numpy(instances.pred_masks)  # (R, H, W); views of the masks above, no copy
    masks = [stack[i] if stack.dtype == bool else stack[i] >= 0.5 for i in above]
    # All of them traced in one pass; the same polygons as mask_to_polygon one by one.
    polygons = masks_to_polygon(masks, simplify_tolerance=simplify_tolerance,
                                regularize=regularize, min_edge=min_edge)
    out = [(poly, float(scores[i])) for i, poly in zip(above, polygons) if poly is not None]
    if align_deg > 0:
        floor = score_thresh if align_min_score is None else align_min_score
        kept = [k for k, (_, score) in enumerate(out) if score >= floor]
        aligned = align_neighbours([out[k][0] for k in kept], align_deg, align_gap)
        for k, poly in zip(kept, aligned):
            out[k] = (poly, out[k][1])
    return out
