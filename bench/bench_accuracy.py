#!/usr/bin/env python
"""Accuracy side by side: MNC variants vs Mask R-CNN on a held-out synthetic benchmark.

Every variant trains from scratch with the same backbone, input, schedule and seed on synthetic
SpaceNet-layout data (generation seed --train-seed) and is scored on a benchmark generated with a
different seed (--test-seed), which no model trained on. Besides SpaceNet F1 per city, recall is
reported on slices of the ground truth, read from the generator's Building_Attributes CSV:

* small: footprint under 100 m^2;
* concave: solidity (area / convex-hull area) under 0.85 (L-, U-, T-shaped and courtyards);
* dark: dark roofs (the generator's ``roof_dark`` material, asphalt-dark in RGB, or in the
  hard setting ``roof_dark_nir``, dark in every band);
* other: everything else.

Data settings (``--setting``): ``default`` (the generator the project was developed on) and
``hard`` (denser, smaller buildings, clutter, dark roofs dark in the near infrared too; see
mnc_d2.synthetic.spacenet2). ``--model-seeds 0 1 2`` trains every variant once per seed; the report
gives each run and, per variant, the mean and spread (min, max, sample std) over seeds.

Detections are kept down to a score of 0.05, so each run also reports F1 at the config's own
threshold (TEST.SPACENET.SCORE_THRESH, the headline), the best threshold of a sweep and its F1,
and the calibration of the scores (ECE, reliability bins; mnc_d2.evaluation.calibration).

Prints one JSON object on stdout (logs go to stderr). The default run (60 training tiles per city,
600 iterations per variant) takes about 8 minutes per variant and seed on a 2-core CPU; --quick
trains 200 iterations on 20 tiles per city. Trained runs are cached under
--work and reused (re-evaluated; their training time is the one measured when they trained).

``--test-setting`` scores models trained on ``--setting`` on the other setting's benchmark
(transfer to imagery drawn differently; the models must be trained already).

``--test-opts KEY VALUE ...`` changes inference only (keys in ``INFERENCE_KEYS``): cached models
are re-evaluated with them, and the report (its name and ``test_opts``) says which were used.

    python -m bench.bench_accuracy --quick [--variants mnc5 mask_rcnn ...]
    python -m bench.bench_accuracy --setting hard --model-seeds 0 1 2 --variants mnc5 mask_rcnn
    python -m bench.bench_accuracy --variants mnc5_box_cls --model-seeds 0 1 2 \
        --test-opts MODEL.MNC.NMS_AFTER_VOTING False
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import shapely

import mnc_d2

mnc_d2.setup()  # shims and registrations before anything else of detectron2
from detectron2.data import DatasetCatalog
from detectron2.evaluation import inference_on_dataset
from detectron2.utils.env import seed_all_rng

from mnc_d2.data import register_spacenet_instances
from mnc_d2.synthetic.spacenet2 import GSD_M, ensure_synthetic
from mnc_d2.engine.setup import setup_cfg
from mnc_d2.engine.trainer import Trainer
from mnc_d2.modeling.checkpoint import build_checkpointer
from mnc_d2.modeling.tta import with_test_time_augmentation
from mnc_d2.evaluation.calibration import best_threshold, reliability, threshold_sweep
from mnc_d2.evaluation.polygon_metrics import matched_pair_metrics
from mnc_d2.evaluation.polygon_metrics import summarize as summarize_shapes
from mnc_d2.evaluation.spacenet_evaluation import SpaceNetEvaluator
from mnc_d2.evaluation.spacenet_metric import read_truth_csv, score
from mnc_d2.utils.atomic import atomic_write

from bench.bench_demo import cpu_model
from bench.layout import data_dir, run_dir, setting_suffix
from bench.merge_reports import SAME_BENCHMARK

QUICK = "configs/quick_schedules/"
# Two anchor sizes per FPN level, half the config's (16 px at P2) and below: 8 px anchors.
SMALL_ANCHORS = ["MODEL.ANCHOR_GENERATOR.SIZES", "[[8,16],[16,32],[32,64],[64,128],[128,256]]"]
EIGHT_BAND = ["INPUT.BANDS", "[1,2,3,4,5,6,7,8]",
              "MODEL.PIXEL_MEAN", "[400.,400.,400.,400.,400.,400.,400.,400.]",
              "MODEL.PIXEL_STD", "[200.,200.,200.,200.,200.,200.,200.,200.]",
              "DATASETS.TRAIN", "('spacenet2_all_train_8band',)"]
NATIVE = ["INPUT.MIN_SIZE_TRAIN", "(650,)", "INPUT.MAX_SIZE_TRAIN", "650",
          "INPUT.MIN_SIZE_TEST", "650", "INPUT.MAX_SIZE_TEST", "650",
          "INPUT.CROP.ENABLED", "True", "INPUT.CROP.TYPE", "absolute",
          "INPUT.CROP.SIZE", "[416,416]"]
# The tiles upsampled by 4/3 (650 -> 867 px) for training and testing, trained on random 416 x 416
# windows as NATIVE is: a 3 m building 13 px wide instead of 10, two and a half cells of the
# finest FPN level (stride 4) become three and a quarter.
UPSAMPLED = ["INPUT.MIN_SIZE_TRAIN", "(867,)", "INPUT.MAX_SIZE_TRAIN", "867",
             "INPUT.MIN_SIZE_TEST", "867", "INPUT.MAX_SIZE_TEST", "867",
             "INPUT.CROP.ENABLED", "True", "INPUT.CROP.TYPE", "absolute",
             "INPUT.CROP.SIZE", "[416,416]"]
# A fully convolutional mask head in the cascade (not the paper's fc head), as wide as the Mask
# R-CNN baseline's (two 3 x 3 convs of 64 channels), with the configs' 14 x 14 mask.
CONV_MASK = ["MODEL.MNC.MASK_HEAD", "conv", "MODEL.MNC.MASK_NUM_CONV", "2",
             "MODEL.MNC.MASK_CONV_DIM", "64"]
ROOF_GAIN = ["INPUT.AUGMENT.ROOF_GAIN.PROB", "0.3", "INPUT.AUGMENT.ROOF_GAIN.RANGE", "(0.1, 0.5)",
             "INPUT.AUGMENT.ROOF_GAIN.BAND_SPREAD", "2.0"]
# The RPN trained on each image's hardest anchors (mnc_d2.modeling.HardMiningRPN).
RPN_OHEM = ["MODEL.PROPOSAL_GENERATOR.NAME", "HardMiningRPN"]
# Hard example mining in the MNC heads: each image's 32 training RoIs are the highest-loss of 128
# sampled (MODEL.MNC.OHEM_CANDIDATES; the demo config samples 32 of its 200 proposals).
ROI_OHEM = ["MODEL.MNC.OHEM_CANDIDATES", "128"]
# The model normalises log(1 + DN) instead of the DNs (INPUT.DN_TRANSFORM log); the base config's
# INPUT.BAND_STATS auto then computes the statistics of the logs.
LOG_DN = ["INPUT.DN_TRANSFORM", "log"]
# Scale jitter at training time (INPUT.AUGMENT.SCALE_RANGE): each 650 px tile resized by a factor
# drawn uniformly from 2/3 to 3/2 (bounds reciprocal to each other) before the 416 px window is cut,
# so the model sees buildings from two thirds to one and a half times their drawn size.
SCALE_JITTER = ["INPUT.AUGMENT.SCALE_RANGE", "(0.667, 1.5)"]
# Copy-paste (INPUT.AUGMENT.COPY_PASTE, the config's defaults): half the training images get up
# to 20 buildings of another training image, each resized by 2/3 to 3/2 and pasted at a free
# place: buildings of other sizes, closer together and in other surroundings than the training
# city draws them.
COPY_PASTE = ["INPUT.AUGMENT.COPY_PASTE.PROB", "0.5"]
# Copy-paste's buildings resized by a factor log-uniform in 1/2 to 1 instead of 2/3 to 3/2.
COPY_PASTE_DOWN = ["INPUT.AUGMENT.COPY_PASTE.SCALE_RANGE", "(0.5, 1.0)"]
VARIANTS = {
    "mnc5": (QUICK + "mnc_R_18_FPN_demo_synthetic.yaml", []),
    "mnc3": (QUICK + "mnc_R_18_FPN_demo_synthetic.yaml", ["MODEL.MNC.NUM_STAGES", "3"]),
    "mnc5_roialign": (QUICK + "mnc_R_18_FPN_demo_synthetic.yaml",
                      ["MODEL.MNC.ROI_WARP", "roialign"]),
    # With the original's auxiliary box-level classifiers (off by default since mnc_d2 0.2).
    "mnc5_box_cls": (QUICK + "mnc_R_18_FPN_demo_synthetic.yaml",
                     ["MODEL.MNC.LOSS_WEIGHTS.CLS3_BOX", "1.0",
                      "MODEL.MNC.LOSS_WEIGHTS.CLS5_BOX", "1.0"]),
    # RoI warping without the cascade's box gradient (warp-with vs warp-without gradient).
    "mnc5_no_box_grad": (QUICK + "mnc_R_18_FPN_demo_synthetic.yaml", ["MODEL.MNC.BOX_GRAD", "none"]),
    # The head as mnc_d2 0.1 trained it: every RoI's mask gets the classifier
    # gradient, pixel-coordinate box-gradient clamp 0.01, no auxiliary losses, no pooling before
    # the fc layers (7 x 7 warp), mask voting inside the kept box.
    "mnc5_v01": (QUICK + "mnc_R_18_FPN_demo_synthetic.yaml",
                 ["MODEL.MNC.MASK_GRAD_FG_ONLY", "False", "MODEL.MNC.BOX_GRAD", "coord",
                  "MODEL.MNC.LOSS_WEIGHTS.CLS3_BOX", "0.0", "MODEL.MNC.LOSS_WEIGHTS.CLS5_BOX",
                  "0.0", "MODEL.MNC.LOSS_WEIGHTS.BOX5", "0.0", "MODEL.MNC.CLS_POOL", "",
                  "MODEL.MNC.WARP_SIZE", "7", "MODEL.MNC.MASK_VOTING_SPACE", "box"]),
    "mask_rcnn": (QUICK + "mask_rcnn_R_18_FPN_demo_synthetic.yaml", []),
    # The baseline at half the learning rate (SOLVER.BASE_LR 0.005): at 0.01 its classifier can
    # stop calling training RoIs foreground early and keep every score under the 0.5 threshold
    # (section 1h's retraining on another processor), so the baseline is also measured where it
    # trains stably.
    "mask_rcnn_lr005": (QUICK + "mask_rcnn_R_18_FPN_demo_synthetic.yaml",
                        ["SOLVER.BASE_LR", "0.005"]),
    "mnc5_8band": (QUICK + "mnc_R_18_FPN_demo_synthetic.yaml", EIGHT_BAND),
    # Radiometric jitter per image and band (INPUT.AUGMENT.BRIGHTNESS/CONTRAST/GAMMA/BAND_GAIN):
    # what the model learns about dark roofs should not hang on one renderer's exact values.
    "mnc5_photometric": (QUICK + "mnc_R_18_FPN_demo_synthetic.yaml",
                         ["INPUT.AUGMENT.BRIGHTNESS", "(0.7, 1.3)",
                          "INPUT.AUGMENT.CONTRAST", "(0.7, 1.3)",
                          "INPUT.AUGMENT.GAMMA", "(0.6, 1.6)",
                          "INPUT.AUGMENT.BAND_GAIN", "(0.85, 1.15)"]),
    "mnc5_small_anchors": (QUICK + "mnc_R_18_FPN_demo_synthetic.yaml", SMALL_ANCHORS),
    # The RPN trained on each image's hardest anchors (MODEL.PROPOSAL_GENERATOR.NAME
    # HardMiningRPN: online hard example mining) instead of a random draw: small and dark-roofed
    # buildings are lost first by the RPN (section 1b).
    "mnc5_rpn_ohem": (QUICK + "mnc_R_18_FPN_demo_synthetic.yaml", RPN_OHEM),
    # mnc5 with hard example mining in the heads (ROI_OHEM above).
    "mnc5_roi_ohem": (QUICK + "mnc_R_18_FPN_demo_synthetic.yaml", ROI_OHEM),
    # log(1 + DN) as input (LOG_DN above): a shadow or a dimmer scene is then an offset, the
    # dark end of the range (dark roofs, asphalt, shadow) is spread out.
    "mnc5_logdn": (QUICK + "mnc_R_18_FPN_demo_synthetic.yaml", LOG_DN),
    # sqrt(DN) (INPUT.DN_TRANSFORM sqrt): a milder spreading of the dark end than the log's.
    "mnc5_sqrtdn": (QUICK + "mnc_R_18_FPN_demo_synthetic.yaml", ["INPUT.DN_TRANSFORM", "sqrt"]),
    # The convolutional mask head (MODEL.MNC.MASK_HEAD conv, CONV_MASK above): outlines from a
    # head that keeps the warp's spatial layout.
    "mnc5_conv_mask": (QUICK + "mnc_R_18_FPN_demo_synthetic.yaml", CONV_MASK),
    # The tiles' native 650 px instead of 416 px (a 3 m building: 10 px instead of 6), trained
    # on random 416 x 416 windows so an iteration costs what a 416 px one does; tested at 650 px.
    "mnc5_native": (QUICK + "mnc_R_18_FPN_demo_synthetic.yaml", NATIVE),
    "mnc5_native_small_anchors": (QUICK + "mnc_R_18_FPN_demo_synthetic.yaml",
                                  NATIVE + SMALL_ANCHORS),
    # The RGB two levers and log(1 + DN) as input.
    "mnc5_native_small_anchors_logdn": (QUICK + "mnc_R_18_FPN_demo_synthetic.yaml",
                                        NATIVE + SMALL_ANCHORS + LOG_DN),
    # The same plus roof recolouring (ROOF_GAIN above): the log makes a darker roof an offset,
    # the recolouring shows the heads roofs darker than the training city's (defined; not in the
    # committed reports).
    "mnc5_native_small_anchors_logdn_roofgain": (QUICK + "mnc_R_18_FPN_demo_synthetic.yaml",
                                                 NATIVE + SMALL_ANCHORS + LOG_DN + ROOF_GAIN),
    # The same plus scale jitter (SCALE_JITTER above): buildings down to two thirds of the
    # smallest the training city draws (defined; not in the committed reports).
    "mnc5_native_small_anchors_logdn_scale": (QUICK + "mnc_R_18_FPN_demo_synthetic.yaml",
                                              NATIVE + SMALL_ANCHORS + LOG_DN + SCALE_JITTER),
    # The same plus copy-paste (COPY_PASTE above).
    "mnc5_native_small_anchors_logdn_copypaste": (QUICK + "mnc_R_18_FPN_demo_synthetic.yaml",
                                                  NATIVE + SMALL_ANCHORS + LOG_DN + COPY_PASTE),
    # The same with the convolutional mask head (CONV_MASK above): the copy-paste recipe with the
    # head whose outlines met the shape goal at 600 iterations.
    "mnc5_native_small_anchors_logdn_copypaste_conv_mask": (
        QUICK + "mnc_R_18_FPN_demo_synthetic.yaml",
        NATIVE + SMALL_ANCHORS + LOG_DN + COPY_PASTE + CONV_MASK),
    # The same with a mask head half as wide (two 3 x 3 convs of 32 channels instead of 64): the
    # head runs on every proposal at stages 2 and 4, and at 64 channels it is most of what the
    # recipe costs over Mask R-CNN at inference (BENCHMARKS section 8e); at 32 its FLOPs per
    # RoI fall from 28.9 to 10.8 M (the first conv reads the FPN's 64 channels).
    "mnc5_native_small_anchors_logdn_copypaste_conv_mask32": (
        QUICK + "mnc_R_18_FPN_demo_synthetic.yaml",
        NATIVE + SMALL_ANCHORS + LOG_DN + COPY_PASTE + CONV_MASK
        + ["MODEL.MNC.MASK_CONV_DIM", "32"]),
    # The same with the pasted buildings only made smaller, by 1/2 to 1 (COPY_PASTE_DOWN
    # above): buildings down to half the smallest side the training city draws.
    "mnc5_native_small_anchors_logdn_copypaste_down": (
        QUICK + "mnc_R_18_FPN_demo_synthetic.yaml",
        NATIVE + SMALL_ANCHORS + LOG_DN + COPY_PASTE + COPY_PASTE_DOWN),
    # The copy-paste model on tiles upsampled by 4/3 instead of at native size (UPSAMPLED
    # above): small buildings seen at more pixels in training and at test.
    "mnc5_upsampled_small_anchors_logdn_copypaste": (
        QUICK + "mnc_R_18_FPN_demo_synthetic.yaml",
        UPSAMPLED + SMALL_ANCHORS + LOG_DN + COPY_PASTE),
    # All three levers together: 8 bands, native resolution, small anchors.
    "mnc5_8band_native_small_anchors": (QUICK + "mnc_R_18_FPN_demo_synthetic.yaml",
                                        EIGHT_BAND + NATIVE + SMALL_ANCHORS),
    # The three levers and the convolutional mask head.
    "mnc5_8band_native_small_anchors_conv_mask": (QUICK + "mnc_R_18_FPN_demo_synthetic.yaml",
                                                  EIGHT_BAND + NATIVE + SMALL_ANCHORS + CONV_MASK),
    # The same without the classifier's joint fc (MODEL.MNC.CLS_JOINT False, the original's
    # layout): that ReLU layer died in two of three seeds of the variant above.
    "mnc5_8band_native_small_anchors_conv_mask_concat": (
        QUICK + "mnc_R_18_FPN_demo_synthetic.yaml",
        EIGHT_BAND + NATIVE + SMALL_ANCHORS + CONV_MASK + ["MODEL.MNC.CLS_JOINT", "False"]),
    # The same at half the learning rate (SOLVER.BASE_LR 0.005): at 0.01 the classifier's last
    # ReLU fc layer died early in two of three seeds (bench/diagnose_units.py).
    "mnc5_8band_native_small_anchors_conv_mask_lr005": (
        QUICK + "mnc_R_18_FPN_demo_synthetic.yaml",
        EIGHT_BAND + NATIVE + SMALL_ANCHORS + CONV_MASK + ["SOLVER.BASE_LR", "0.005"]),
    # The three levers and the hard-mining RPN.
    "mnc5_8band_native_small_anchors_rpn_ohem": (
        QUICK + "mnc_R_18_FPN_demo_synthetic.yaml",
        EIGHT_BAND + NATIVE + SMALL_ANCHORS + RPN_OHEM),
    # The three levers and band dropout of red edge and NIR (half the images): what the model
    # learns about dark roofs must also hold without the bands where one sensor's signature sits.
    "mnc5_8band_native_small_anchors_nirdrop": (
        QUICK + "mnc_R_18_FPN_demo_synthetic.yaml",
        EIGHT_BAND + NATIVE + SMALL_ANCHORS + ["INPUT.AUGMENT.BAND_DROPOUT.PROB", "0.5",
                                               "INPUT.AUGMENT.BAND_DROPOUT.BANDS", "(6, 7, 8)"]),
    # The three levers and roof recolouring (INPUT.AUGMENT.ROOF_GAIN): 30% of the training
    # buildings get a roof darker by 0.1-0.5 with each band's gain spread by up to 2x either
    # way, so the model cannot find roofs by one city's roof spectra alone.
    "mnc5_8band_native_small_anchors_roofgain": (
        QUICK + "mnc_R_18_FPN_demo_synthetic.yaml",
        EIGHT_BAND + NATIVE + SMALL_ANCHORS + ROOF_GAIN),
    # The RGB two levers and the same roof recolouring.
    "mnc5_native_small_anchors_roofgain": (QUICK + "mnc_R_18_FPN_demo_synthetic.yaml",
                                           NATIVE + SMALL_ANCHORS + ROOF_GAIN),
    # The baseline trained the same way (the three levers), so the MNC-vs-Mask R-CNN comparison
    # is between equals.
    "mask_rcnn_8band_native_small_anchors": (QUICK + "mask_rcnn_R_18_FPN_demo_synthetic.yaml",
                                             EIGHT_BAND + NATIVE + SMALL_ANCHORS),
    # The same at half the learning rate, the schedule of the best MNC
    # (mnc5_8band_native_small_anchors_conv_mask_lr005), whose mask head is convolutional too.
    "mask_rcnn_8band_native_small_anchors_lr005": (
        QUICK + "mask_rcnn_R_18_FPN_demo_synthetic.yaml",
        EIGHT_BAND + NATIVE + SMALL_ANCHORS + ["SOLVER.BASE_LR", "0.005"]),
    # The baseline with the hard-mining RPN (mnc5_rpn_ohem's), trained the same way.
    "mask_rcnn_rpn_ohem": (QUICK + "mask_rcnn_R_18_FPN_demo_synthetic.yaml", RPN_OHEM),
    # The baseline trained with the RGB two levers (native resolution, small anchors).
    "mask_rcnn_native_small_anchors": (QUICK + "mask_rcnn_R_18_FPN_demo_synthetic.yaml",
                                       NATIVE + SMALL_ANCHORS),
    # The same plus log(1 + DN) as input (mnc5_native_small_anchors_logdn's), trained the same way.
    "mask_rcnn_native_small_anchors_logdn": (QUICK + "mask_rcnn_R_18_FPN_demo_synthetic.yaml",
                                             NATIVE + SMALL_ANCHORS + LOG_DN),
    # The same plus copy-paste (mnc5_native_small_anchors_logdn_copypaste's), trained the same way.
    "mask_rcnn_native_small_anchors_logdn_copypaste": (
        QUICK + "mask_rcnn_R_18_FPN_demo_synthetic.yaml",
        NATIVE + SMALL_ANCHORS + LOG_DN + COPY_PASTE),
}
CITIES = ["vegas", "paris"]
SHAPE_KEYS = ("iou", "ciou", "n_ratio", "polis", "mta", "boundary_f")  # summarised over seeds
# Config keys that change inference only: --test-opts may set them on cached models (the two
# INPUT keys resize the test tiles, e.g. up to score imagery whose buildings are smaller than the
# training tiles').
INFERENCE_KEYS = ("INPUT.MIN_SIZE_TEST", "INPUT.MAX_SIZE_TEST",
                  "MODEL.RPN.POST_NMS_TOPK_TEST", "MODEL.MNC.NMS_AFTER_VOTING",
                  "MODEL.MNC.MASK_VOTING", "MODEL.MNC.MASK_VOTING_IOU",
                  "MODEL.MNC.MASK_VOTING_SPACE",
                  "MODEL.MNC.MASK_THRESHOLD", "MODEL.MNC.TEST_NUM_STAGES",
                  "MODEL.MNC.TEST_CASCADE_MIN_SCORE", "MODEL.MNC.TEST_CASCADE_TOPK",
                  "MODEL.MNC.TEST_CASCADE_NMS",
                  "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "MODEL.ROI_HEADS.NMS_THRESH_TEST",
                  "TEST.DETECTIONS_PER_IMAGE", "TEST.SPACENET.SIMPLIFY_TOLERANCE",
                  "TEST.SPACENET.REGULARIZE", "TEST.SPACENET.REGULARIZE_MIN_EDGE",
                  "TEST.SPACENET.ALIGN_NEIGHBOURS", "TEST.SPACENET.ALIGN_NEIGHBOURS_GAP",
                  "TEST.AUG.ENABLED", "TEST.AUG.MIN_SIZES", "TEST.AUG.MAX_SIZE",
                  "TEST.AUG.FLIP", "TEST.AUG.ROT90", "TEST.AUG.SCORE")


def opts_tag(test_opts) -> str:
    """The name suffix of an evaluation with inference overrides ("" without): its report's
    and its proposals folder's, e.g. "_NMS_AFTER_VOTING-False"."""
    return "".join(f"_{k.rsplit('.', 1)[1]}-{v}" for k, v in zip(test_opts[0::2], test_opts[1::2]))


def eval_dir(run: Path, test_root: Path, test_opts=()) -> Path:
    """Where a run's evaluation on ``test_root`` writes its proposals (one folder per city):
    one folder per benchmark and inference overrides, so an evaluation with --test-opts leaves
    the config's own evaluation (which diagnose_slices.py and bench_paired_shape.py read) as
    it was."""
    return run / f"bench_eval_{test_root.name}{opts_tag(test_opts)}"


def check_test_opts(opts: list[str]) -> list[str]:
    """KEY VALUE pairs of inference-only keys; anything else is an error naming the key."""
    if len(opts) % 2:
        raise SystemExit(f"--test-opts takes KEY VALUE pairs, got {opts}")
    for key in opts[0::2]:
        if key not in INFERENCE_KEYS:
            raise SystemExit(f"--test-opts {key}: not an inference-only key (cached models would "
                             f"be evaluated as if trained with it); allowed: {INFERENCE_KEYS}")
    return list(opts)


def variant_cfg(name: str, out_dir: Path, iters: int, seed: int = 0, test_opts=()):
    """The frozen config of one variant; also written to ``out_dir/config.yaml`` (the file
    tools/predict.py and bench/bench_predict.py take). ``test_opts``: inference-only overrides;
    with them the run's config.yaml is left as trained (later tools read it as the run's)."""
    config, opts = VARIANTS[name]
    opts = [*opts, *test_opts]
    # DATASETS.TEST is emptied: the benchmark evaluates on its own held-out set, so the
    # trainer's end-of-training evaluation on the training seed's val split is skipped.
    cfg = setup_cfg(config, ["OUTPUT_DIR", str(out_dir), "SEED", str(seed),
                             "SOLVER.MAX_ITER", str(iters),
                             "SOLVER.STEPS", f"({int(iters * 0.8)},)", *opts,
                             "DATASETS.TEST", "()"])
    out_dir.mkdir(parents=True, exist_ok=True)
    if not test_opts:
        with atomic_write(out_dir / "config.yaml") as f:
            f.write(cfg.dump())
    return cfg


SWEEP = [round(0.05 * k, 2) for k in range(1, 20)]


def prepare_data(root: Path, seed: int, images: int, setting: str) -> Path:
    ensure_synthetic(root, CITIES, images, seed, setting)
    return root


def slice_flags(spacenet_root: Path) -> pd.DataFrame:
    frames = []
    for aoi in sorted(spacenet_root.glob("AOI_*_Train")):
        attrs = pd.read_csv(aoi / "summaryData" / f"{aoi.name}_Building_Attributes.csv")
        frames.append(attrs)
    attrs = pd.concat(frames, ignore_index=True)
    # Flags, not classes: a building can be small and dark, or concave and dark.
    attrs["small"] = attrs.area_m2 < 100
    attrs["concave"] = attrs.solidity < 0.85
    attrs["dark"] = attrs.roof.isin(["roof_dark", "roof_dark_nir"])
    return attrs


def benchmark_truth(test_root: Path) -> tuple[list[str], pd.DataFrame]:
    """The benchmark's city folder names and their truth (summary CSV rows), in the order the
    scorer reads them (sorted cities, each city's rows in file order)."""
    cities = sorted(p.name for p in (test_root / "spacenet").glob("AOI_*_Train"))
    if not cities:
        raise SystemExit(f"{test_root}/spacenet: no AOI_*_Train folder")
    truth = [read_truth_csv(test_root / "spacenet" / c / "summaryData" /
                            f"{c}_Building_Solutions.csv") for c in cities]
    return cities, pd.concat(truth, ignore_index=True)


def benchmark_datasets(test_root: Path, product: str) -> tuple[list[str], pd.DataFrame]:
    """The benchmark's cities registered as datasets (one per city), and their truth
    (:func:`benchmark_truth`)."""
    cities, truth = benchmark_truth(test_root)
    names = []
    for city in cities:
        name = f"_bench_{test_root.name}_{city}_{product}"
        if name not in DatasetCatalog.list():
            register_spacenet_instances(name, test_root / "spacenet" / city, product=product)
        names.append(name)
    return names, truth


def evaluate_model(cfg, weights: str, test_root: Path, product: str, attrs: pd.DataFrame,
                   test_opts=()) -> dict:
    model = Trainer.build_model(cfg)
    build_checkpointer(cfg, model).load(weights)
    model = with_test_time_augmentation(cfg, model)  # TEST.AUG.ENABLED (--test-opts)
    names, truth = benchmark_datasets(test_root, product)
    evaluator_dir = eval_dir(Path(cfg.OUTPUT_DIR), test_root, test_opts)
    props = []
    for name in names:
        sn = cfg.TEST.SPACENET  # low-score detections are kept for the sweep
        evaluator = SpaceNetEvaluator(name, output_dir=str(evaluator_dir / name),
                                      score_thresh=min(SWEEP),
                                      simplify_tolerance=sn.SIMPLIFY_TOLERANCE,
                                      regularize=sn.REGULARIZE, rules=sn.RULES)
        inference_on_dataset(model, Trainer.build_test_loader(cfg, name), evaluator)
        props.append(pd.read_csv(evaluator_dir / name / "spacenet_proposals.csv"))
    prop = pd.concat(props, ignore_index=True)
    prop["geometry"] = shapely.from_wkt(prop["PolygonWKT_Pix"].to_numpy())
    floor = score(truth, prop)
    sweep = threshold_sweep(floor, prop, truth, SWEEP)
    thresh = cfg.TEST.SPACENET.SCORE_THRESH
    headline = prop[prop.Confidence >= thresh].reset_index(drop=True)
    result = score(truth, headline)
    out = result.to_json()
    out["score_thresh"] = thresh
    out["recall_slices"], out["slice_counts"] = slice_recall(result, truth, attrs)
    out["best_threshold"] = best_threshold(sweep)
    out["calibration"] = reliability(prop.Confidence.to_numpy()[floor.proposal_kept],
                                     (floor.proposal_match >= 0)[floor.proposal_kept])
    out["shape"] = shape_by_slice(result, truth, headline, attrs)
    return out


def slice_recall(result, truth: pd.DataFrame, attrs: pd.DataFrame) -> tuple[dict, dict]:
    """Recall and truth count of each slice (small, concave, dark; "other": none of them) of
    the scored truth buildings (``result``: :func:`score` of ``truth``)."""
    kept = truth.assign(matched=result.truth_matched, kept=result.truth_kept)
    kept = kept[kept.kept].merge(attrs, on=["ImageId", "BuildingId"], how="left")
    recall = {flag: round(float(kept[kept[flag]].matched.mean()), 4)
              for flag in ("small", "concave", "dark") if kept[flag].any()}
    other = ~(kept.small | kept.concave | kept.dark)
    recall["other"] = round(float(kept[other].matched.mean()), 4)
    counts = {f: int(kept[f].sum()) for f in ("small", "concave", "dark")}
    counts["other"] = int(other.sum())
    return recall, counts


def shape_by_slice(result, truth: pd.DataFrame, proposals: pd.DataFrame,
                   attrs: pd.DataFrame) -> dict:
    """Polygon shape metrics (mnc_d2.evaluation.polygon_metrics) of the matched pairs, overall
    and per slice of the matched truth building (small, concave, dark, other), in metres."""
    frame, _ = matched_pair_metrics(result, truth, proposals, metres_per_unit=GSD_M)
    truth_rows = result.proposal_match[result.proposal_match >= 0]
    flags = truth.iloc[truth_rows][["ImageId", "BuildingId"]].merge(
        attrs, on=["ImageId", "BuildingId"], how="left")
    flags = flags[["small", "concave", "dark"]].fillna(False).astype(bool).to_numpy()
    other = ~flags.any(axis=1)
    out = {"all": summarize_shapes(frame)["all"]}
    for k, name in enumerate(("small", "concave", "dark")):
        out[name] = summarize_shapes(frame[flags[:, k]])["all"]
    out["other"] = summarize_shapes(frame[other])["all"]
    return out


def _spread(values: list[float]) -> dict:
    """Mean, sample std, min and max of ``values`` (one per seed) and their number, unrounded:
    the tables round once, so a range's ends are the rounded values of the seeds' own rows."""
    arr = np.asarray(values, dtype=float)
    return {"mean": float(arr.mean()), "min": float(arr.min()), "max": float(arr.max()),
            "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0, "n": len(arr)}


def summarize(runs: dict) -> dict:
    """Per variant: mean and spread over seeds of mean city F1, best-threshold F1, ECE and the
    slice recalls. ``runs``: {variant: {seed: run report}}."""
    out = {}
    for name, by_seed in runs.items():
        reports = list(by_seed.values())
        entry = {"mean_city_f1": _spread([r["mean_city_f1"] for r in reports]),
                 "best_threshold_mean_city_f1": _spread(
                     [r["best_threshold"]["mean_city_F1"] for r in reports]),
                 "best_threshold": _spread([r["best_threshold"]["threshold"] for r in reports]),
                 "ECE": _spread([r["calibration"]["ECE"] for r in reports])}
        for flag in ("small", "concave", "dark", "other"):
            values = [r["recall_slices"][flag] for r in reports if flag in r["recall_slices"]]
            if values:
                entry[f"recall_{flag}"] = _spread(values)
        for key in SHAPE_KEYS:
            # over the runs that have matched pairs: none for a run evaluated before shape
            # metrics existed, nor for one that kept no detection at the threshold (``n`` of the
            # spread says how many seeds it covers)
            values = [r["shape"]["all"][key] for r in reports
                      if (r.get("shape") or {}).get("all", {}).get(key) is not None]
            if values:
                entry[f"shape_{key}"] = _spread(values)
        # the L-shaped / courtyard buildings' own pairs, and courtyards' holes found
        for key, part in (("ciou", "concave"), ("mta", "concave"), ("hole_recall", "all")):
            values = [r["shape"][part][key] for r in reports
                      if ((r.get("shape") or {}).get(part) or {}).get(key) is not None]
            if values:
                entry[f"shape_{key}_{part}"] = _spread(values)
        out[name] = entry
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data, few iterations")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--iters", type=int, help="training iterations (default 600, quick 200)")
    parser.add_argument("--images", type=int,
                        help="training tiles per city (default 60, quick 20; the benchmark has "
                             "half as many)")
    parser.add_argument("--work", default=".cache/bench/accuracy")
    parser.add_argument("--train-seed", type=int, default=0)
    parser.add_argument("--test-seed", type=int, default=1)
    parser.add_argument("--model-seeds", type=int, nargs="+", default=[0],
                        help="cfg.SEED values; every variant trains once per seed")
    parser.add_argument("--setting", default="default", choices=["default", "hard"],
                        help="synthetic data setting of both the training and the test data")
    parser.add_argument("--test-opts", nargs="+", default=[], metavar="KEY VALUE",
                        help="inference-only config overrides (INFERENCE_KEYS)")
    parser.add_argument("--test-setting", choices=["default", "hard"],
                        help="score on this setting's benchmark instead of the training "
                             "setting's (transfer: models must already be trained; nothing "
                             "trains)")
    parser.add_argument("--add-to", metavar="REPORT",
                        help="a report of the same setting, test setting, schedule and test "
                             "options (e.g. a committed one) whose runs are kept beside this "
                             "invocation's; a variant and seed run here replaces its entry")
    args = parser.parse_args()
    test_opts = check_test_opts(args.test_opts)
    # Detectron2's default logger writes to stdout; configuring logging first keeps stdout JSON only.
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")
    work = Path(args.work).resolve()
    images = args.images or (20 if args.quick else 60)
    iters = args.iters or (200 if args.quick else 600)
    suffix = setting_suffix(args.setting)
    train_root = prepare_data(data_dir(work, "train", args.train_seed, images, args.setting),
                              args.train_seed, images, args.setting)
    test_setting = args.test_setting or args.setting
    test_root = prepare_data(data_dir(work, "test", args.test_seed, images // 2, test_setting),
                             args.test_seed, images // 2, test_setting)
    attrs = slice_flags(test_root / "spacenet")
    os.environ["DETECTRON2_DATASETS"] = str(train_root)
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU",
              "cpu": cpu_model(), "setting": args.setting, "test_setting": test_setting,
              "iterations": iters, "train_images_per_city": images,
              "test_images_per_city": images // 2, "model_seeds": args.model_seeds,
              "test_opts": test_opts, "runs": {}, "summary": {}}
    tag = f"{images}img_{iters}it{suffix}"
    report_tag = tag + opts_tag(test_opts)
    if test_setting != args.setting:
        report_tag += f"_on_{test_setting}"
    previous = work / f"report_{report_tag}.json"
    if previous.exists():  # runs of earlier invocations (other seeds or variants) are kept
        report["runs"] = json.loads(previous.read_text()).get("runs", {})
    if args.add_to:
        base = json.loads(Path(args.add_to).read_text())
        for key in SAME_BENCHMARK:
            if base.get(key) != report[key]:
                raise SystemExit(f"--add-to {args.add_to}: its {key} is {base.get(key)!r}, this "
                                 f"invocation's {report[key]!r}; add runs to a report of the "
                                 "same benchmark")
        runs = base.get("runs", {})  # its variants first, in its order
        for name, by_seed in report["runs"].items():
            runs.setdefault(name, {}).update(by_seed)
        report["runs"] = runs
    for name in args.variants:
        for seed in args.model_seeds:
            out_dir = run_dir(work / "runs", name, f"{images}img_{iters}it", args.setting,
                              seed)
            if test_setting != args.setting and not (out_dir / "model_final.pth").exists():
                raise SystemExit(f"--test-setting {test_setting}: {out_dir} has no trained "
                                 f"model; train it first (--setting {args.setting})")
            report["runs"].setdefault(name, {})[str(seed)] = run_variant(
                name, out_dir, iters, seed, test_root, attrs, test_opts)
            report["summary"] = summarize(report["runs"])
            report["model_seeds"] = sorted({int(k) for r in report["runs"].values() for k in r})
            # Partial results survive a crash of a later run.
            with atomic_write(work / f"report_{report_tag}.json") as f:
                json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))


def cached_run(name: str, seed: int, setting: str, work: Path, iters: int, images: int,
               test_setting: str | None = None):
    """A run this script trained, for the diagnostic scripts (which train nothing): its folder,
    frozen config, held-out test root (of ``test_setting``, default the training setting's) and
    the image product it reads. Sets DETECTRON2_DATASETS to its training data (which holds the
    band statistics the config names); exits naming the command to train it when it is not
    there."""
    out_dir = run_dir(work / "runs", name, f"{images}img_{iters}it", setting, seed)
    weights = out_dir / "model_final.pth"
    if not weights.exists():
        raise SystemExit(f"{weights} does not exist: train it first with python -m "
                         f"bench.bench_accuracy --setting {setting} --variants {name} "
                         f"--model-seeds {seed}")
    os.environ["DETECTRON2_DATASETS"] = str(data_dir(work, "train", 0, images, setting))
    cfg = variant_cfg(name, out_dir, iters, seed)
    product = "MUL-PanSharpen" if len(cfg.MODEL.PIXEL_MEAN) == 8 else "RGB-PanSharpen"
    test_root = data_dir(work, "test", 1, images // 2, test_setting or setting)
    return out_dir, cfg, test_root, product


def run_variant(name: str, out_dir: Path, iters: int, seed: int, test_root: Path,
                 attrs: pd.DataFrame, test_opts=()) -> dict:
    """Train (unless cached) and evaluate one variant with one model seed."""
    cfg = variant_cfg(name, out_dir, iters, seed, test_opts)
    timing = out_dir / "train_wall_s.json"
    trained_now = not (out_dir / "model_final.pth").exists()
    if trained_now:
        start = time.perf_counter()
        # What default_setup does in tools/train_net.py: without it cfg.SEED is not applied
        # and the initialisation and data order differ from run to run.
        seed_all_rng(cfg.SEED)
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=False)
        trainer.train()
        with atomic_write(timing) as f:
            json.dump({"train_wall_s": round(time.perf_counter() - start, 1),
                       "train_cpu": cpu_model()}, f)
    product = "MUL-PanSharpen" if len(cfg.MODEL.PIXEL_MEAN) == 8 else "RGB-PanSharpen"
    res = evaluate_model(cfg, str(out_dir / "model_final.pth"), test_root, product, attrs,
                         test_opts)
    # A cached model reports the training time measured when it was trained.
    trained = json.loads(timing.read_text()) if timing.exists() else {}
    res["train_wall_s"] = trained.get("train_wall_s")
    # the CPU it was trained on (CPU training is not bit-reproducible across processors);
    # runs trained before this was recorded have none
    res["train_cpu"] = trained.get("train_cpu")
    res["trained_in_this_run"] = trained_now
    res["run_dir"] = str(out_dir)
    return res


if __name__ == "__main__":
    main()
