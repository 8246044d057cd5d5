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


def check_score_threshold(value: float | None, option: str = "--score-thresh") -> None:
    """A given score threshold outside [0, 1] (a score is a probability; 1.5 keeps nothing):
    ValueError naming the option and the value. None (not given) passes."""
    if value is not None and not 0.0 <= value <= 1.0:
        raise ValueError(f"{option} {value:g} must be in [0, 1] (a score is a probability)")


def checkpoint_threshold_file(weights: str | Path) -> str:
    """The threshold file of one checkpoint other than the run's final weights (``--eval-only
    MODEL.WEIGHTS run/model_0004999.pth`` writes ``score_threshold_model_0004999.json``), so
    that evaluating other checkpoints never replaces the run's own threshold."""
    return f"score_threshold_{Path(weights).stem}.json"


def threshold_file_for(weights: str | Path) -> Path:
    """Where prediction reads the threshold of ``weights``: the checkpoint's own file when an
    evaluation wrote one, else the run's (``score_threshold.json``), both next to the weights."""
    weights = Path(weights)
    own = weights.parent / checkpoint_threshold_file(weights)
    return own if own.is_file() else weights.parent / THRESHOLD_FILE


def passes_setting(cfg) -> str:
    """The test-time augmentation a config runs, as recorded beside a chosen threshold: "one
    pass", or its ``TEST.AUG`` keys. Averaging passes changes what a score means (a building
    seen in some passes only scores less), so a threshold chosen with one setting is not the
    best for another."""
    aug = cfg.TEST.AUG
    flip, rot90 = bool(aug.FLIP), bool(aug.get("ROT90", False))
    sizes = [int(s) for s in aug.MIN_SIZES]
    if not aug.ENABLED or (not sizes and not flip and not rot90):
        return "one pass"
    text = f"TEST.AUG MIN_SIZES {sizes} MAX_SIZE {int(aug.MAX_SIZE)} FLIP {flip} ROT90 {rot90}"
    score = str(aug.get("SCORE", "mean"))
    return text if score == "mean" else f"{text} SCORE {score}"


def resolve_score_threshold(cfg, override: float | None = None) -> float:
    """The score threshold for prediction: ``override`` when given; else the best threshold an
    evaluation recorded next to the weights (:func:`threshold_file_for`: the checkpoint's own
    file, else the run's ``score_threshold.json``, written by SpaceNetEvaluator's sweep); else
    TEST.SPACENET.SCORE_THRESH."""
    if override is not None:
        logger.info("score threshold %.3f (given)", override)
        return float(override)
    recorded = threshold_file_for(cfg.MODEL.WEIGHTS)
    if recorded.is_file():
        try:
            record = json.loads(recorded.read_text())
            value = float(record["score_thresh"])
            # a file without "passes" predates test-time augmentation: chosen with one pass
            chosen_with = str(record.get("passes", "one pass"))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{recorded}: unreadable score threshold ({exc}); delete the file "
                             "or pass --score-thresh") from exc
        if record.get("source", "sweep") == "sweep":
            logger.info("score threshold %.3f from %s (the training run's best on its "
                        "validation split; --score-thresh overrides)", value, recorded)
        else:  # the run's evaluation matched nothing: the configured threshold was recorded
            logger.warning("score threshold %.3f from %s (%s on %s: the model found no "
                           "building there; --score-thresh overrides)", value, recorded,
                           record["source"], record.get("dataset", "its validation split"))
        running = passes_setting(cfg)
        if chosen_with != running:
            logger.warning("%s: the threshold was chosen with %s and this model runs %s (scores "
                           "mean something else); pass --score-thresh, or evaluate with this "
                           "setting again (tools/train_net.py --eval-only) to choose it",
                           recorded, chosen_with, running)
        return value
    logger.info("score threshold %.3f (TEST.SPACENET.SCORE_THRESH; no %s next to the weights)",
                cfg.TEST.SPACENET.SCORE_THRESH, THRESHOLD_FILE)
    return float(cfg.TEST.SPACENET.SCORE_THRESH)
