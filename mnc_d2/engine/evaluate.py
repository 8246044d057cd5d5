"""``tools/train_net.py --eval-only``: evaluate trained weights, recording their threshold.

The evaluator's threshold sweep writes the best score threshold for prediction. For the run's
final weights (``OUTPUT_DIR/model_final.pth``) that is the run's ``score_threshold.json``, as at
the end of training; any other checkpoint (comparing ``model_0004999.pth`` with the final one,
``model_best.pth``, weights from elsewhere) gets its own ``score_threshold_<name>.json``, so
evaluating it never replaces the threshold the run's final weights are predicted with, and
prediction with that checkpoint finds its own (:func:`mnc_d2.inference.threshold.
threshold_file_for`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..inference.threshold import THRESHOLD_FILE, checkpoint_threshold_file
from ..modeling.checkpoint import build_checkpointer, load_trained_weights
from .trainer import Trainer

logger = logging.getLogger(__name__)


def eval_threshold_name(cfg, weights: str) -> str:
    """The file in OUTPUT_DIR the evaluation of ``weights`` records its threshold in."""
    final = Path(cfg.OUTPUT_DIR or ".") / "model_final.pth"
    if weights and Path(weights).resolve() == final.resolve():
        return THRESHOLD_FILE
    return checkpoint_threshold_file(weights or "model")


def evaluate_only(cfg, resume: bool = False) -> dict:
    """Build the model, load its weights (``resume``: the run's last checkpoint when it has one,
    else MODEL.WEIGHTS; otherwise MODEL.WEIGHTS, which must fit the model) and evaluate it on
    DATASETS.TEST (through test-time augmentation when TEST.AUG.ENABLED). Returns the results."""
    model = Trainer.build_model(cfg)
    weights = cfg.MODEL.WEIGHTS
    if resume:
        checkpointer = build_checkpointer(cfg, model)
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=True)
        if checkpointer.has_checkpoint():
            weights = checkpointer.get_checkpoint_file()
    else:
        load_trained_weights(cfg, model, weights)
    name = eval_threshold_name(cfg, weights)
    logger.info("evaluating %s; its best score threshold goes to %s", weights,
                Path(cfg.OUTPUT_DIR or ".") / name)
    evaluators = [Trainer.build_evaluator(cfg, dataset, threshold_name=name)
                  for dataset in cfg.DATASETS.TEST]
    return Trainer.test(cfg, model, evaluators)
