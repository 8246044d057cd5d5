"""How mnc_d2's MNC follows the released MNC code, rule by rule: the README's fidelity table.

Each :class:`Rule` says what the original (the released Caffe code, daijifeng001/MNC, read file by
file: ``lib/pylayer/{proposal_layer,mask_layer,stage_bridge_layer}.py``,
``lib/transform/mask_transform.py``, ``lib/nms/mv_kernel.cu``, ``lib/mnc_config.py``,
``models/VGG16/mnc_5stage/{train,test}.prototxt`` and its ROIWarping layer) does, what mnc_d2
does, and the config keys that decide it. The defaults column is read from the config itself
(``add_mnc_config`` on Detectron2's defaults, and ``configs/Base-MNC-RCNN-FPN.yaml``), so the
table cannot drift from the code; ``tools/render_docs.py`` writes it into README.md and the test
suite checks that README.md holds what it renders. The config comment of each key says the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

BASE_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "Base-MNC-RCNN-FPN.yaml"


@dataclass(frozen=True)
class Rule:
    """One row: ``same`` says whether mnc_d2's default does what the original does."""

    topic: str
    original: str
    ours: str
    keys: tuple[str, ...] = ()
    same: bool = False


RULES: tuple[Rule, ...] = (
    Rule("cascade", "5 stages: box (RPN), mask, masked classification + box regression, mask, "
         "masked classification; stages 4-5 share the weights of 2-3",
         "the same, inside Detectron2's GeneralizedRCNN",
         ("MODEL.MNC.NUM_STAGES", "MODEL.MNC.SHARE_STAGE_WEIGHTS"), True),
    Rule("features", "VGG-16 conv5 (stride 16)",
         "ResNet-FPN; each RoI warped from the FPN level its size selects",
         ("MODEL.BACKBONE.NAME", "MODEL.ROI_HEADS.IN_FEATURES")),
    Rule("RoI warping", "one bilinear sample per cell of a 14 x 14 grid, at the cell's corner, on "
         "box coordinates rounded to the feature grid; gradients to features and boxes",
         "one bilinear sample at each cell's centre on continuous coordinates; gradients to "
         "features and boxes (`roialign`: Detectron2's ROIAlign, no box gradient)",
         ("MODEL.MNC.ROI_WARP", "MODEL.MNC.WARP_SIZE")),
    Rule("classifier input", "the 14 x 14 warp 2 x 2 max-pooled to 7 x 7 before the fcs; the "
         "mask head reads the full warp", "the same", ("MODEL.MNC.CLS_POOL",), True),
    Rule("classifier fcs", "two 4096-wide fcs on the box pathway and two on the masked pathway, "
         "concatenated straight into the classifiers and box regressor",
         "one fc per pathway, then one joint fc on their concatenation, all FC_DIM wide "
         "(CLS_JOINT False: the concatenation straight into the outputs)",
         ("MODEL.MNC.FC_DIM", "MODEL.MNC.CLS_JOINT")),
    Rule("mask head", "fc 256, then a 21 x 21 sigmoid mask (the paper: 28 x 28)",
         "fc MASK_FC_DIM, then an M x M mask; MASK_HEAD `conv`: 3 x 3 convs, an optional 2x "
         "transposed conv and a 1 x 1 predictor instead (Mask R-CNN's layout)",
         ("MODEL.MNC.MASK_HEAD", "MODEL.MNC.MASK_FC_DIM", "MODEL.MNC.MASK_SIZE",
          "MODEL.MNC.MASK_NUM_CONV", "MODEL.MNC.MASK_CONV_DIM")),
    Rule("masking layer", "the classifier's gradient reaches the soft mask it multiplied only for "
         "RoIs whose mask-level label is foreground", "the same",
         ("MODEL.MNC.MASK_GRAD_FG_ONLY",), True),
    Rule("mask-level labels", "foreground when the predicted mask's IoU with the ground truth is "
         ">= 0.5, measured on image-size masks",
         "the same threshold; the IoU measured on the RoI's M x M grid, the ground truth's full "
         "area in the union", ("MODEL.MNC.MASK_FG_IOU",)),
    Rule("box-level classifier", "an auxiliary classifier trained with box labels beside the "
         "mask-level one at stages 3 and 5 (weight 1); unused at test time",
         "off by default (weight 0), see BENCHMARKS.md section 3; a weight > 0 adds it",
         ("MODEL.MNC.LOSS_WEIGHTS.CLS3_BOX", "MODEL.MNC.LOSS_WEIGHTS.CLS5_BOX")),
    Rule("stage-5 box regression", "auxiliary, on the shared box predictor; inference refines "
         "boxes with stage 3's deltas only", "the same", ("MODEL.MNC.LOSS_WEIGHTS.BOX5",), True),
    Rule("cascade gradient to stage 3", "the stage bridge passes the later stages' gradient to "
         "the stage-3 box deltas, each element clamped to 1/512",
         "the same (autograd's chain rule, clamped on the deltas)",
         ("MODEL.MNC.BOX_GRAD", "MODEL.MNC.BOX_GRAD_CLIP_BASE"), True),
    Rule("cascade gradient to the RPN", "the proposal layer passes the stage-2 RoIs' gradient "
         "back to the RPN's box deltas (clipped)",
         "none: Detectron2's proposals are detached, the RPN learns from its own losses only"),
    Rule("stage-4 RoIs", "the refined stage-3 boxes plus the ground-truth boxes",
         "the refined stage-3 boxes, re-matched to the ground truth by box IoU"),
    Rule("RoI sampling", "64 RoIs per image, 30% foreground (box IoU >= 0.5); background from "
         "IoU [0.1, 0.5) (85%) and [0, 0.1) (15%)",
         "Detectron2's sampler: foreground fraction POSITIVE_FRACTION, background any IoU < 0.5; "
         "OHEM_CANDIDATES > 0: the highest-loss RoIs of a larger sample (hard example mining)",
         ("MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "MODEL.ROI_HEADS.POSITIVE_FRACTION",
          "MODEL.MNC.OHEM_CANDIDATES")),
    Rule("mask loss", "per-pixel logistic loss, weight 2", "per-pixel binary cross-entropy "
         "(mean), weight 1", ("MODEL.MNC.LOSS_WEIGHTS.MASK2", "MODEL.MNC.LOSS_WEIGHTS.MASK4")),
    Rule("input values", "8-bit RGB with the per-channel mean subtracted, not scaled",
         "the GeoTIFF's bands as read (INPUT.BANDS, 11-bit DNs and more), "
         "(x - PIXEL_MEAN) / PIXEL_STD; INPUT.DN_TRANSFORM `log` or `sqrt`: of log(1 + DN) or "
         "sqrt(DN) instead",
         ("INPUT.DN_TRANSFORM",)),
    Rule("training augmentation", "horizontal flips (TRAIN.USE_FLIPPED: each image and its "
         "mirror)", "random horizontal and vertical flips and 90-degree rotations per image "
         "(overhead imagery has no up); optional scale jitter, native-resolution crops, "
         "radiometric jitter, band dropout, roof recolouring and copy-paste, off by default",
         ("INPUT.AUGMENT.HFLIP_PROB", "INPUT.AUGMENT.VFLIP_PROB", "INPUT.AUGMENT.ROT90",
          "INPUT.AUGMENT.BAND_DROPOUT.PROB", "INPUT.AUGMENT.ROOF_GAIN.PROB",
          "INPUT.AUGMENT.COPY_PASTE.PROB")),
    Rule("test image scale", "each image resized so that its shorter side is 600 px (the longer "
         "at most 1000)", "INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST (650 px, SpaceNet's tile, in the "
         "R-50 configs); a scene is cut into --tile-size tiles, each resized by the one factor a "
         "whole training image (INPUT.TRAIN_TILE_SIZE) gets, so that smaller tiles keep the "
         "training scale", ("INPUT.MIN_SIZE_TEST", "INPUT.MAX_SIZE_TEST", "INPUT.TRAIN_TILE_SIZE")),
    Rule("test proposals", "300 RPN proposals", "RPN.POST_NMS_TOPK_TEST (the base config: 600, "
         "the Caffe SpaceNet run's \"more proposals\" idea)", ("MODEL.RPN.POST_NMS_TOPK_TEST",)),
    Rule("inference NMS", "stage-3 and stage-5 instances pooled, box NMS at 0.3", "the same",
         ("MODEL.ROI_HEADS.NMS_THRESH_TEST",), True),
    Rule("detections per image", "at most 100", "TEST.DETECTIONS_PER_IMAGE (SpaceNet tiles hold "
         "100+ buildings)", ("TEST.DETECTIONS_PER_IMAGE",)),
    Rule("voters", "every candidate with box IoU >= 0.5 with the kept one, whatever its score",
         "the candidates above SCORE_THRESH_TEST with box IoU >= MASK_VOTING_IOU",
         ("MODEL.MNC.MASK_VOTING_IOU", "MODEL.ROI_HEADS.SCORE_THRESH_TEST")),
    Rule("mask voting", "default (GPU) path: the voters' soft masks pasted at image pixels, "
         "score-weighted mean, the box becomes the voted mask's tight box (the CPU fallback "
         "binarises each voter at 0.4 first)",
         "soft masks averaged the same way, sampled on a 2M x 2M grid over the voters' boxes",
         ("MODEL.MNC.MASK_VOTING", "MODEL.MNC.MASK_VOTING_SPACE"), True),
    Rule("mask threshold", "0.4 (voted masks and their tight boxes)",
         "MASK_THRESHOLD for both", ("MODEL.MNC.MASK_THRESHOLD",)),
    Rule("NMS after voting", "none: two kept candidates can vote onto one building and both be "
         "reported", "box NMS again on the voted boxes", ("MODEL.MNC.NMS_AFTER_VOTING",)),
    Rule("stages 4-5 at inference", "every proposal goes on to stages 4-5",
         "every proposal, or only those whose stage-3 score reaches TEST_CASCADE_MIN_SCORE, "
         "ranks among an image's TEST_CASCADE_TOPK best and/or whose refined box survives NMS "
         "at TEST_CASCADE_NMS (inference shortcuts)",
         ("MODEL.MNC.TEST_CASCADE_MIN_SCORE", "MODEL.MNC.TEST_CASCADE_TOPK",
          "MODEL.MNC.TEST_CASCADE_NMS"), True),
    Rule("3-stage model", "evaluated with the 5-stage inference (shared weights)",
         "on request", ("MODEL.MNC.TEST_NUM_STAGES",), True),
    Rule("test-time augmentation", "one pass per image",
         "one pass, or (TEST.AUG.ENABLED) every pass's candidates (scales, flips, quarter turns) "
         "mapped back and voted together, each building scored by the mean over passes (or, "
         "TEST.AUG.SCORE max, by its best pass)",
         ("TEST.AUG.ENABLED", "TEST.AUG.FLIP", "TEST.AUG.ROT90", "TEST.AUG.SCORE"), True),
)


def _value(cfg, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    if isinstance(node, (list, tuple)):
        return "[" + ", ".join(str(v) for v in node) + "]"
    return repr(node) if isinstance(node, str) else str(node)


def default_configs():
    """(Detectron2's defaults + ``add_mnc_config``, the same + Base-MNC-RCNN-FPN.yaml)."""
    from detectron2.config import get_cfg

    from .config import add_mnc_config

    defaults = get_cfg()
    add_mnc_config(defaults)
    base = defaults.clone()
    base.merge_from_file(str(BASE_CONFIG))
    return defaults, base


def fidelity_table(defaults=None, base=None) -> str:
    """The README's table (Markdown), defaults read from the two configs."""
    if defaults is None or base is None:
        defaults, base = default_configs()
    lines = ["| what | the released MNC code | mnc_d2 | key: default (base config) | as the "
             "original |", "| --- | --- | --- | --- | --- |"]
    for rule in RULES:
        cells = []
        for key in rule.keys:
            value, in_base = _value(defaults, key), _value(base, key)
            cells.append(f"`{key}`: {value}" + (f" ({in_base})" if in_base != value else ""))
        lines.append(f"| {rule.topic} | {rule.original} | {rule.ours} | "
                     f"{'<br>'.join(cells) or 'not configurable'} | "
                     f"{'yes' if rule.same else '**no**'} |")
    return "\n".join(lines)
