"""``Trainer`` (Detectron2's DefaultTrainer with SpaceNet data, evaluation and checkpoints) and
the config set-up shared by ``tools/train_net.py`` and ``tools/predict.py``."""

from __future__ import annotations

import logging
import os
import weakref

import torch
from detectron2.config import get_cfg
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer, default_setup, hooks
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators
from detectron2.utils import comm

from ..config import add_mnc_config
from ..data import SpaceNetDatasetMapper, check_band_config, resolve_band_stats
from ..data.bands import input_bands
from ..evaluation.spacenet_evaluation import SpaceNetEvaluator
from ..modeling.checkpoint import MultiBandCheckpointer

logger = logging.getLogger(__name__)

BEST_METRIC = "spacenet/F1"


def build_checkpointer(cfg, model, save_dir: str | None = None, **checkpointables):
    """A checkpointer that also loads 3-band checkpoints into N-band models."""
    return MultiBandCheckpointer(model, save_dir if save_dir is not None else cfg.OUTPUT_DIR,
                                 input_bands=input_bands(cfg),
                                 checkpoint_bands=list(cfg.INPUT.CHECKPOINT_BANDS),
                                 **checkpointables)


class Trainer(DefaultTrainer):
    """DefaultTrainer with the N-band SpaceNet mapper, SpaceNetEvaluator (plus COCO AP when
    TEST.SPACENET.COCO_AP), best-checkpoint by SpaceNet F1 and multi-band checkpoint loading.
    Only ``build_*`` hooks are overridden."""

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=SpaceNetDatasetMapper(cfg, True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name,
                                           mapper=SpaceNetDatasetMapper(cfg, False))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        evaluators = [SpaceNetEvaluator(cfg, dataset_name, output_dir=output_folder)]
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
            ret.insert(position, hooks.BestCheckpointer(self.cfg.TEST.EVAL_PERIOD,
                                                        self.checkpointer, BEST_METRIC, "max"))
        return ret


def setup_cfg(config_file: str, opts: list[str], for_training: bool = True):
    """Load a config (mnc_d2 keys added), apply overrides, fall back to CPU without CUDA,
    resolve per-band statistics and check the band configuration. Returns the frozen cfg."""
    cfg = get_cfg()
    add_mnc_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("MODEL.DEVICE=%s but CUDA is not available: using the CPU",
                       cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"
    if cfg.INPUT.BAND_STATS == "auto" and not for_training:
        raise ValueError(
            f"{config_file} has INPUT.BAND_STATS 'auto', which computes statistics from the "
            "training data; for evaluation or prediction use the config.yaml written by the "
            "training run (it names the run's band_stats.json)")
    stats = resolve_band_stats(cfg)
    if stats is not None and cfg.INPUT.BAND_STATS == "auto":
        # The saved config.yaml then points at the statistics this run used.
        cfg.INPUT.BAND_STATS = os.path.join(cfg.OUTPUT_DIR, "band_stats.json")
    check_band_config(cfg)
    cfg.freeze()
    return cfg


def train_main(args):
    """Entry point of tools/train_net.py inside each process."""
    cfg = setup_cfg(args.config_file, args.opts, for_training=not args.eval_only)
    default_setup(cfg, args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        build_checkpointer(cfg, model).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()
