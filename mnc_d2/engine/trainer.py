"""``Trainer``: Detectron2's DefaultTrainer with SpaceNet data, evaluation and checkpoints.

The config set-up shared by the tools is :func:`mnc_d2.engine.setup.setup_cfg`; the multi-band
checkpointer factory lives beside the checkpointer
(:func:`mnc_d2.modeling.checkpoint.build_checkpointer`); ``tools/train_net.py`` holds the entry
point, as in Detectron2's projects."""

from __future__ import annotations

import logging
import os
import weakref
from pathlib import Path

from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer, hooks
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators
from detectron2.utils import comm

from ..data import SpaceNetDatasetMapper
from ..evaluation.spacenet_evaluation import SpaceNetEvaluator
from ..inference.threshold import THRESHOLD_FILE, checkpoint_threshold_file
from ..modeling.checkpoint import build_checkpointer, train_inflated_stem
from ..modeling.tta import with_test_time_augmentation
from ..utils.atomic import atomic_write

logger = logging.getLogger(__name__)


def best_metric(cfg) -> str:
    """The flattened result key the best checkpoint follows: the SpaceNet ``score`` (the
    headline number of the dataset's release, see SpaceNetEvaluator) of the first test set
    (Detectron2 prefixes keys with the dataset name when there are several), at the threshold
    prediction will use with the checkpoint: the sweep's best (``best_threshold/score``, the
    threshold kept beside model_best.pth) when TEST.SPACENET.SWEEP_THRESHOLDS is set, else the
    configured TEST.SPACENET.SCORE_THRESH (``score``). Judged at the configured threshold alone,
    a model whose scores sit below it early in training (every evaluation scoring 0 there) kept
    its first evaluation as model_best.pth, whatever it reached at its own best threshold."""
    key = "spacenet/best_threshold/score" if cfg.TEST.SPACENET.SWEEP_THRESHOLDS else (
        "spacenet/score")
    if len(cfg.DATASETS.TEST) > 1:
        return f"{cfg.DATASETS.TEST[0]}/{key}"
    return key


BEST_PREFIX = "model_best"


class BestCheckpointerKeepingThreshold(hooks.BestCheckpointer):
    """Detectron2's BestCheckpointer (``model_best.pth`` at each new best score) that also keeps
    the score threshold that evaluation chose, as ``score_threshold_model_best.json`` beside
    it: the run's ``score_threshold.json`` is rewritten by every later evaluation, and
    prediction with ``model_best.pth`` reads the checkpoint's own file first
    (:func:`mnc_d2.inference.threshold.threshold_file_for`). Its best score and iteration go
    into the trainer's checkpoints, so that a resumed run keeps comparing against them."""

    def __init__(self, eval_period: int, checkpointer, val_metric: str, output_dir: str):
        super().__init__(eval_period, checkpointer, val_metric, "max", file_prefix=BEST_PREFIX)
        self.output_dir = Path(output_dir)

    def after_step(self):
        best = (self.best_iter, self.best_metric)
        super().after_step()
        self._keep_threshold(best)

    def after_train(self):
        best = (self.best_iter, self.best_metric)
        super().after_train()
        self._keep_threshold(best)

    # Detectron2's BestCheckpointer forgets its best score on --resume, so the first evaluation
    # after it replaced model_best.pth whatever its score: kept in the trainer's checkpoints.
    # (A checkpoint is written before the evaluation of its own step, so it holds the best
    # before that step: a new best found at the very step a run resumes from is compared as
    # the one before it.)
    def state_dict(self) -> dict:
        if self.best_metric is None:
            return {}
        return {"best_metric": float(self.best_metric), "best_iter": int(self.best_iter)}

    def load_state_dict(self, state: dict) -> None:
        self.best_metric = state.get("best_metric")
        self.best_iter = state.get("best_iter")

    def _keep_threshold(self, before) -> None:
        run_file = self.output_dir / THRESHOLD_FILE
        if (self.best_iter, self.best_metric) == before or not run_file.is_file():
            return  # no new best checkpoint (or no sweep)
        with atomic_write(self.output_dir / checkpoint_threshold_file(BEST_PREFIX + ".pth"),
                          "wb") as f:
            f.write(run_file.read_bytes())


class Trainer(DefaultTrainer):
    """DefaultTrainer with the N-band SpaceNet mapper, SpaceNetEvaluator (plus COCO AP when
    TEST.SPACENET.COCO_AP), best checkpoint by the release's headline SpaceNet score,
    multi-band checkpoint loading and a trainable inflated stem.
    Only ``build_*`` hooks are overridden."""

    @classmethod
    def build_model(cls, cfg):
        model = super().build_model(cfg)
        train_inflated_stem(cfg, model)  # before build_optimizer collects trainable parameters
        return model

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Detectron2's evaluation, through test-time augmentation when TEST.AUG.ENABLED."""
        return super().test(cfg, with_test_time_augmentation(cfg, model), evaluators)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=SpaceNetDatasetMapper(cfg, True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name,
                                           mapper=SpaceNetDatasetMapper(cfg, False))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None,
                        threshold_name: str = THRESHOLD_FILE):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        evaluators = [SpaceNetEvaluator(cfg, dataset_name, output_dir=output_folder,
                                        threshold_name=threshold_name)]
        if cfg.TEST.SPACENET.COCO_AP:
            # The C++ COCOeval is not built in the pure-Python detectron2; the Python one gives
            # identical numbers.
            evaluators.append(COCOEvaluator(dataset_name, output_dir=output_folder,
                                            use_fast_impl=False))
        return DatasetEvaluators(evaluators)

    def build_hooks(self):
        # build_hooks is the last build_* call of DefaultTrainer.__init__, made once its
        # checkpointer exists: swap in the multi-band one (same folder, same checkpointables)
        # before the checkpoint hooks capture it.
        self.checkpointer = build_checkpointer(self.cfg, self.model, trainer=weakref.proxy(self))
        ret = super().build_hooks()
        if self.cfg.TEST.EVAL_PERIOD > 0 and comm.is_main_process():
            position = next(i for i, h in enumerate(ret) if isinstance(h, hooks.EvalHook)) + 1
            ret.insert(position, BestCheckpointerKeepingThreshold(
                self.cfg.TEST.EVAL_PERIOD, self.checkpointer, best_metric(self.cfg),
                self.cfg.OUTPUT_DIR))
        return ret
