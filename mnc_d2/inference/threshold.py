"""Which score threshold prediction and export use (:func:`resolve_score_threshold`).

Apart from :mod:`.predictor` (rasterio, shapely, opencv) and the evaluator (Detectron2, shapely,
pycocotools) so that exporting a model needs neither: e.g. ``tools/export_model.py --device
cuda`` on a GPU machine that has only PyTorch and Detectron2.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

# Written next to the weights by the evaluator's threshold sweep (SpaceNetEvaluator).
THRESHOLD_FILE = "score_threshold.json"


def resolve_score_threshold(cfg, override: float | None = None) -> float:
    """The score threshold for prediction: ``override`` when given; else the best threshold the
    training run's evaluation recorded next to the weights (``score_threshold.json``, written by
    SpaceNetEvaluator's sweep); else TEST.SPACENET.SCORE_THRESH."""
    if override is not None:
        logger.info("score threshold %.3f (given)", override)
        return float(override)
    recorded = Path(cfg.MODEL.WEIGHTS).parent / THRESHOLD_FILE
    if recorded.is_file():
        try:
            value = float(json.loads(recorded.read_text())["score_thresh"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{recorded}: unreadable score threshold ({exc}); delete the file "
                             "or pass --score-thresh") from exc
        logger.info("score threshold %.3f from %s (the training run's best on its validation "
                    "split; --score-thresh overrides)", value, recorded)
        return value
    logger.info("score threshold %.3f (TEST.SPACENET.SCORE_THRESH; no %s next to the weights)",
                cfg.TEST.SPACENET.SCORE_THRESH, THRESHOLD_FILE)
    return float(cfg.TEST.SPACENET.SCORE_THRESH)
