"""``add_mnc_config``: the config keys mnc_d2 adds to Detectron2's defaults.

The function only *adds* keys (it never changes an existing default) so that a plain Detectron2
config and an mnc_d2 config differ only by these keys and by what YAML files set.
"""

from __future__ import annotations

from detectron2.config import CfgNode as CN


def _add_input_keys(cfg: CN) -> None:
    _C = cfg
    # 1-based band indices read from every GeoTIFF, in this order; [] = bands 1..len(PIXEL_MEAN)
    # (with INPUT.BAND_STATS auto: every band of the training files but an alpha band, written
    # into config.yaml).
    _C.INPUT.BANDS = []
    # For a 3-band checkpoint loaded into an N-band model: the 1-based file band each checkpoint
    # channel was trained on, in channel order ([] = the first three INPUT.BANDS).
    _C.INPUT.CHECKPOINT_BANDS = []
    # Names of the INPUT.BANDS, in the same order (e.g. ["red", "green", "blue"]): a scene that
    # names its bands (STAC eo:bands, GeoTIFF band descriptions) is read by these names whatever
    # its band order; [] = by index only.
    _C.INPUT.BAND_NAMES = []
    # Metres per pixel of the training imagery: a scene with other pixels is resampled to it on
    # read by tools/predict.py (a model trained at 0.3 m fails at 0.5 m); 0 = not recorded.
    _C.INPUT.GSD = 0.0
    # Side in pixels of the training images (the release product's tile, DATASETS.GEO's
    # tile_size), recorded at training like INPUT.GSD: tools/predict.py and the export resize
    # every tile by the factor INPUT.MIN/MAX_SIZE_TEST give an image of this side (416 / 650 for
    # the quick configs), so a scene smaller than a tile and any --tile-size are seen at the
    # training scale (Detectron2 resizes each image to MIN_SIZE_TEST: a 300 px scene would be
    # enlarged 2.2x past it); 0 = not recorded (a --tile-size tile stands for it).
    _C.INPUT.TRAIN_TILE_SIZE = 0
    # What DNs become before (x - PIXEL_MEAN) / PIXEL_STD (mnc_d2.data.radiometry): "" = as read
    # (as the original MNC); "log" = log(1 + DN), where a shadow or a dimmer scene is an offset;
    # "sqrt" = sqrt(DN), shot noise's variance-stabilising transform, between the two.
    # PIXEL_MEAN/STD are then statistics of the transformed values (use BAND_STATS auto).
    _C.INPUT.DN_TRANSFORM = ""
    # Per-band normalisation statistics: "" uses MODEL.PIXEL_MEAN/STD as written; "auto" computes
    # them from the training split and writes OUTPUT_DIR/band_stats.json; a path loads that JSON.
    _C.INPUT.BAND_STATS = ""
    # Number of training images sampled when BAND_STATS is "auto" (0 = all of them).
    _C.INPUT.BAND_STATS_MAX_IMAGES = 200
    # Standard deviation the normalised bands get with BAND_STATS (PIXEL_STD = band std / this):
    # 1.0 for from-scratch, GN and torchvision weights; ~57.4 (ImageNet pixel std in 0-255) for
    # the Caffe2 MSRA weights, which expect mean-subtracted, unscaled pixels.
    _C.INPUT.BAND_STATS_TARGET_STD = 1.0
    # Remote-sensing augmentation applied by the SpaceNet mapper at training time.
    _C.INPUT.AUGMENT = CN()
    # Probability of a horizontal flip.
    _C.INPUT.AUGMENT.HFLIP_PROB = 0.5
    # Probability of a vertical flip.
    _C.INPUT.AUGMENT.VFLIP_PROB = 0.5
    # Rotate by a random multiple of 90 degrees (overhead imagery has no "up").
    _C.INPUT.AUGMENT.ROT90 = True
    # Scale jitter: each image is resized by a factor drawn uniformly from this range.
    _C.INPUT.AUGMENT.SCALE_RANGE = (1.0, 1.0)
    # Radiometric jitter (mnc_d2.data.transforms.BandPhotometricTransform), each drawn per image
    # from its range; (1.0, 1.0) = off. BRIGHTNESS: one gain for all bands; CONTRAST: about each
    # band's mean; GAMMA: log-uniform, on each band's own range (bends dark values most);
    # BAND_GAIN: an independent gain per band. Not in the original MNC (no augmentation but flips).
    _C.INPUT.AUGMENT.BRIGHTNESS = (1.0, 1.0)
    # Contrast about each band's mean, drawn from this range.
    _C.INPUT.AUGMENT.CONTRAST = (1.0, 1.0)
    # Gamma on each band's own range (log-uniform from this range).
    _C.INPUT.AUGMENT.GAMMA = (1.0, 1.0)
    # An independent gain per band, drawn from this range.
    _C.INPUT.AUGMENT.BAND_GAIN = (1.0, 1.0)
    # Band dropout (mnc_d2.data.transforms.BandDropTransform): with probability PROB per image,
    # the file bands in BANDS (numbers as in INPUT.BANDS, e.g. (6, 7, 8): red edge and near
    # infrared of WorldView-3) are all set to their PIXEL_MEAN, which normalises to 0, as nodata
    # is. The model must then also find buildings without those bands, so it cannot key on one
    # sensor's signature there alone. PROB 0.0 = off. Not in the original MNC.
    _C.INPUT.AUGMENT.BAND_DROPOUT = CN()
    # Probability per training image that the bands of BANDS are dropped (0.0 = off).
    _C.INPUT.AUGMENT.BAND_DROPOUT.PROB = 0.0
    # The file bands dropped together.
    _C.INPUT.AUGMENT.BAND_DROPOUT.BANDS = ()
    # Roof recolouring (mnc_d2.data.roof_gain.RandomRoofGain): with probability PROB per
    # building of a training image, the pixels of its footprint are multiplied by a gain per band,
    # shared * spread_c: shared log-uniform from RANGE, spread_c log-uniform from
    # [1/BAND_SPREAD, BAND_SPREAD] per band. Roofs of other materials (dark ones above all) on the
    # training city's buildings; walls, shadows and surroundings unchanged. PROB 0.0 = off. Not in
    # the original MNC.
    _C.INPUT.AUGMENT.ROOF_GAIN = CN()
    # Probability per building that its roof is recoloured (0.0 = off).
    _C.INPUT.AUGMENT.ROOF_GAIN.PROB = 0.0
    # Range of the gain shared by all bands (drawn log-uniformly): (0.1, 0.5) makes roofs darker.
    _C.INPUT.AUGMENT.ROOF_GAIN.RANGE = (0.1, 0.5)
    # Each band's own factor around the shared gain (>= 1; 1.0 = the same gain in every band).
    _C.INPUT.AUGMENT.ROOF_GAIN.BAND_SPREAD = 1.0
    # Copy-paste (mnc_d2.data.copy_paste.RandomCopyPaste, after Ghiasi et al. 2021): with
    # probability PROB per training image, buildings of another training image (each with
    # probability OBJECT_PROB, at most MAX_OBJECTS) are resized by a factor log-uniform in
    # SCALE_RANGE and pasted at free places (no overlap with any building, 2 x GAP pixels apart;
    # TRIES positions each). Only the footprint's pixels travel (no shadow, no blending). Needs
    # INPUT.MASK_FORMAT bitmask. PROB 0.0 = off. Not in the original MNC.
    _C.INPUT.AUGMENT.COPY_PASTE = CN()
    # Probability per training image that buildings are pasted into it (0.0 = off).
    _C.INPUT.AUGMENT.COPY_PASTE.PROB = 0.0
    # Probability per building of the donor image that it is pasted.
    _C.INPUT.AUGMENT.COPY_PASTE.OBJECT_PROB = 0.5
    # At most this many buildings pasted per image.
    _C.INPUT.AUGMENT.COPY_PASTE.MAX_OBJECTS = 20
    # Each pasted building's resize factor, drawn log-uniformly (reciprocal bounds: as often
    # smaller as larger).
    _C.INPUT.AUGMENT.COPY_PASTE.SCALE_RANGE = (0.667, 1.5)
    # Margin in pixels (of the image as read) kept clear around every building, pasted or not:
    # a pasted building and any other have at least 2 x GAP pixels between them.
    _C.INPUT.AUGMENT.COPY_PASTE.GAP = 2
    # Random positions tried per building before it is left out.
    _C.INPUT.AUGMENT.COPY_PASTE.TRIES = 10


def _add_backbone_keys(cfg: CN) -> None:
    _C = cfg
    # With MODEL.WEIGHTS and other than 3 bands: the N-band input convolution (inflated from a
    # 3-band checkpoint, see INPUT.CHECKPOINT_BANDS) trains even where FREEZE_AT freezes the stem.
    _C.MODEL.BACKBONE.TRAIN_INFLATED_STEM = True


def _add_mnc_keys(cfg: CN) -> None:
    _C = cfg
    _C.MODEL.MNC = CN()
    # 5 = the paper's 5-stage cascade (box, mask, cls+box, mask, cls); 3 = the 3-stage model.
    _C.MODEL.MNC.NUM_STAGES = 5
    # Stages run at inference (0 = NUM_STAGES). 5 on a 3-stage model runs the 5-stage inference
    # with its shared weights, as the paper evaluates its 3-stage model.
    _C.MODEL.MNC.TEST_NUM_STAGES = 0
    # Inference shortcut: only proposals whose stage-3 foreground score reaches this go on to
    # stages 4-5 (0.0 = all of them, as the original). Their stage-3 instances are kept either
    # way; what is skipped is the stage-5 instance of a proposal stage 3 already scored low.
    _C.MODEL.MNC.TEST_CASCADE_MIN_SCORE = 0.0
    # Inference shortcut: only the proposals among the K best stage-3 foreground scores of an
    # image (ties at the K-th score included) go on to stages 4-5 (0 = all of them, as the
    # original); with TEST_CASCADE_MIN_SCORE too, a proposal must pass both. Their stage-3
    # instances are kept either way. A fixed K bounds the second stage pair's work per tile.
    _C.MODEL.MNC.TEST_CASCADE_TOPK = 0
    # Inference shortcut: stage-3 refined boxes that overlap a better-scored one of their class
    # at this box IoU or more do not go on to stages 4-5 (0.0 = all go on, as the original): their
    # stage-5 instance would nearly repeat the better one's. Stage-3 instances are kept either way.
    # Measured at 0.8 (BENCHMARKS.md section 8c): counts hold, outlines get worse (mask voting
    # has fewer candidates to average), each tile takes less time.
    _C.MODEL.MNC.TEST_CASCADE_NMS = 0.0
    # "warp": differentiable RoI warping (bilinear; gradients reach the box coordinates), one sample
    # at each cell's centre on continuous coordinates (the original: at the cell's corner, on box
    # coordinates rounded to the feature grid); "roialign": Detectron2's ROIAlign on detached
    # boxes (faster, no gradient to boxes).
    _C.MODEL.MNC.ROI_WARP = "warp"
    # Side of the warped feature grid (the original warps conv5 RoIs to 14 x 14).
    _C.MODEL.MNC.WARP_SIZE = 14
    # Pooling of the (masked) warped features before the classifier's fc layers: "max" = 2 x 2
    # max pooling, stride 2 (the original: 14 x 14 -> 7 x 7); "" = none (fc on the full warp).
    # The mask head always reads the full warp, as in the original.
    _C.MODEL.MNC.CLS_POOL = "max"
    # Sampling points per warped cell side in ROIAlign mode (0 = adaptive, as in Detectron2).
    _C.MODEL.MNC.SAMPLING_RATIO = 2
    # Side of the predicted class-agnostic mask (the paper: 28 x 28; the released code: 21 x 21).
    _C.MODEL.MNC.MASK_SIZE = 28
    # Width of the classifier's fcs: one per pathway (box, masked) and a joint one on their
    # concatenation (the original: two 4096-wide fcs per pathway, concatenated into the outputs).
    _C.MODEL.MNC.FC_DIM = 1024
    # True: the pathways' fcs feed one joint fc, which feeds the classifiers and box regressor
    # (mnc_d2's layout); False: the outputs read the two pathways' concatenation directly, the
    # original's layout (with one fc per pathway where it has two). Whichever ReLU layer the
    # outputs read can die in a short schedule and leave the classifier at the class prior
    # (BENCHMARKS.md section 1: the joint one, or without it the pathway ones).
    _C.MODEL.MNC.CLS_JOINT = True
    # Mask head of stages 2 and 4: "fc" = the paper's (a hidden fc of MASK_FC_DIM, then an fc
    # regressing the M x M mask); "conv" = a fully convolutional head (MASK_NUM_CONV 3 x 3 convs
    # of MASK_CONV_DIM, a 2x transposed conv when MASK_SIZE = 2 x WARP_SIZE, a 1 x 1 predictor),
    # Mask R-CNN's layout inside the cascade: a departure from the original MNC, off by default.
    _C.MODEL.MNC.MASK_HEAD = "fc"
    # Width of the mask head's hidden fully connected layer (paper: 256).
    _C.MODEL.MNC.MASK_FC_DIM = 256
    # 3 x 3 convolutions of the "conv" mask head (Mask R-CNN's head: 4).
    _C.MODEL.MNC.MASK_NUM_CONV = 4
    # Channels of those convolutions (Mask R-CNN's head: 256).
    _C.MODEL.MNC.MASK_CONV_DIM = 256
    # Convolutions applied to warped features before the heads (0 = none).
    _C.MODEL.MNC.NUM_CONV = 0
    # Channels of those convolutions.
    _C.MODEL.MNC.CONV_DIM = 256
    # Normalisation of those convolutions ("", "BN", "GN", "SyncBN").
    _C.MODEL.MNC.NORM = ""
    # Stages 4-5 reuse the weights of stages 2-3 (as in the paper); False gives them their own.
    _C.MODEL.MNC.SHARE_STAGE_WEIGHTS = True
    # Masking layer: the classifier's gradient reaches the mask it was masked with only for RoIs
    # whose mask-level label is foreground (the original's MaskLayer); False: for every RoI.
    _C.MODEL.MNC.MASK_GRAD_FG_ONLY = True
    # How the stage-4/5 losses reach the stage-3 box regression through the refined boxes:
    # "delta" = chain rule to the stage-3 box deltas, each element clamped to 1/BOX_GRAD_CLIP_BASE
    # (the original's stage bridge); "coord" = clamp on the pixel-coordinate gradient to
    # BOX_GRAD_CLIP (mnc_d2 <= 0.1); "none" = refined boxes detached.
    _C.MODEL.MNC.BOX_GRAD = "delta"
    # "delta" mode: the element-wise clamp is 1 / this (the original's clip_base: 512).
    _C.MODEL.MNC.BOX_GRAD_CLIP_BASE = 512.0
    # "coord" mode: element-wise clamp of the gradient on box coordinates (pixels).
    _C.MODEL.MNC.BOX_GRAD_CLIP = 0.01
    # Per-stage loss weights (the RPN's are MODEL.RPN.*_LOSS_WEIGHT).
    _C.MODEL.MNC.LOSS_WEIGHTS = CN()
    # Weight of the stage-2 mask loss (the original: 2 on a per-pixel mean).
    _C.MODEL.MNC.LOSS_WEIGHTS.MASK2 = 1.0
    # Weight of the stage-3 mask-level classification loss.
    _C.MODEL.MNC.LOSS_WEIGHTS.CLS3 = 1.0
    # Weight of the stage-3 box-level classifier, an auxiliary loss of the original (there 1.0;
    # 0 = no such head). Off by default: beside the mask-level classifier it held that
    # classifier's scores under 0.5 on our benchmarks (BENCHMARKS.md, diagnostic table).
    _C.MODEL.MNC.LOSS_WEIGHTS.CLS3_BOX = 0.0
    # Weight of the stage-3 box regression loss.
    _C.MODEL.MNC.LOSS_WEIGHTS.BOX3 = 1.0
    # Weight of the stage-4 mask loss.
    _C.MODEL.MNC.LOSS_WEIGHTS.MASK4 = 1.0
    # Weight of the stage-5 mask-level classification loss.
    _C.MODEL.MNC.LOSS_WEIGHTS.CLS5 = 1.0
    # Weight of the stage-5 box-level classifier (the original: 1.0; off by default, as CLS3_BOX).
    _C.MODEL.MNC.LOSS_WEIGHTS.CLS5_BOX = 0.0
    # Weight of the stage-5 box regression on the shared box predictor (auxiliary, as in the
    # original; its deltas are not used at inference).
    _C.MODEL.MNC.LOSS_WEIGHTS.BOX5 = 1.0
    # Mask IoU (predicted stage-2/4 mask vs. ground-truth mask) above which a RoI is labelled
    # foreground for the stage-3/5 classifiers (the paper's mask-level labels, 0.5 there; measured
    # on the RoI's M x M grid here, on image-size masks there).
    _C.MODEL.MNC.MASK_FG_IOU = 0.5
    # Online hard example mining in the heads (Shrivastava, Gupta, Girshick, CVPR 2016; not in the
    # original MNC, which samples its RoIs at random like Detectron2): 0 = off (the original's
    # rule); N > ROI_HEADS.BATCH_SIZE_PER_IMAGE = each image's training RoIs are the
    # BATCH_SIZE_PER_IMAGE with the highest stage 2-3 loss among N sampled ones (at most
    # POSITIVE_FRACTION of them foreground), ranked by a forward pass without gradient.
    _C.MODEL.MNC.OHEM_CANDIDATES = 0
    # Inference: mask voting (each kept mask = score-weighted mean of overlapping candidates).
    _C.MODEL.MNC.MASK_VOTING = True
    # Inference: box IoU above which a candidate votes for a kept instance's mask.
    _C.MODEL.MNC.MASK_VOTING_IOU = 0.5
    # Inference: where votes are averaged: "image" = soft masks on the union of the voters' boxes
    # (a 2M x 2M grid; the original's default GPU path: at image pixels), the kept box becoming
    # the tight box of the voted mask; "box" = inside the kept box. Voters: the candidates above
    # ROI_HEADS.SCORE_THRESH_TEST (the original: every candidate, whatever its score).
    _C.MODEL.MNC.MASK_VOTING_SPACE = "image"
    # Inference: threshold applied to the voted soft mask (also the output masks' binarisation;
    # the original: 0.4).
    _C.MODEL.MNC.MASK_THRESHOLD = 0.5
    # Inference, image-space voting: box NMS (ROI_HEADS.NMS_THRESH_TEST) again on the voted boxes.
    # Voting moves each kept box to its voted mask's tight box, so two kept candidates that
    # overlapped little (a partial box and the full one) can come out as one building twice.
    # The original does not (deviation; False = as the original).
    _C.MODEL.MNC.NMS_AFTER_VOTING = True


def _add_spacenet_eval_keys(cfg: CN) -> None:
    _C = cfg
    _C.TEST.SPACENET = CN()
    # Detections below this score are not turned into polygons (masks are binarised at
    # MODEL.MNC.MASK_THRESHOLD inside the model).
    _C.TEST.SPACENET.SCORE_THRESH = 0.5
    # Score thresholds swept on the evaluation split (best F1 and its threshold are reported and
    # saved with the run as OUTPUT_DIR/score_threshold.json); [] = no sweep.
    _C.TEST.SPACENET.SWEEP_THRESHOLDS = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5,
                                         0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]
    # Douglas-Peucker tolerance in pixels for the traced mask outline (0 = off). 1.5 px (0.5 px
    # before mnc_d2 0.2) removes the pixel staircase at no measurable F1 cost (BENCHMARKS.md
    # section 4: C-IoU 0.12 -> 0.49, max tangent angle error 74 -> 49 degrees on the benchmark).
    _C.TEST.SPACENET.SIMPLIFY_TOLERANCE = 1.5
    # Snap polygon edges to right angles along the building's dominant orientation (rectilinear
    # regularisation): the best shape measured, at a small F1 cost, so off by default.
    _C.TEST.SPACENET.REGULARIZE = False
    # With REGULARIZE: edges shorter than this (pixels) merge into their neighbours (0 = off;
    # 2 measured best with the 1.5 px simplification).
    _C.TEST.SPACENET.REGULARIZE_MIN_EDGE = 2.0
    # Make close, nearly parallel neighbours parallel (mnc_d2.geometry.align): buildings at most
    # ALIGN_NEIGHBOURS_GAP pixels apart whose orientations differ by at most this many degrees
    # turn onto their group's mean orientation (0 = off, the default; measured in BENCHMARKS.md
    # section 4). Not in the original MNC (its polygons came from gdal.Polygonize).
    _C.TEST.SPACENET.ALIGN_NEIGHBOURS = 0.0
    # With ALIGN_NEIGHBOURS: buildings at most this many pixels apart are neighbours.
    _C.TEST.SPACENET.ALIGN_NEIGHBOURS_GAP = 10.0
    # Scoring rules: "spacenet" (the SpaceNet 2 leaderboard) or "solaris" (solaris 0.4.0).
    _C.TEST.SPACENET.RULES = "spacenet"
    # Groups whose F1s are averaged into the score: "city" (SpaceNet 2), "nadir" (SpaceNet 4's
    # Nadir / Off-Nadir / Very-Off-Nadir segments), "none", or "auto" (nadir for SpaceNet 4
    # ImageIds, else city).
    _C.TEST.SPACENET.GROUP_BY = "auto"
    # Also run Detectron2's COCOEvaluator (segm + bbox AP) next to the SpaceNet evaluator.
    _C.TEST.SPACENET.COCO_AP = False
    # Test-time augmentation (mnc_d2.modeling.tta, with Detectron2's TEST.AUG.ENABLED,
    # MIN_SIZES, MAX_SIZE and FLIP): also run each image rotated by 90, 180 and 270 degrees
    # (with FLIP: the 8 flips and rotations of the square; overhead imagery has no up). Not in
    # the original MNC, which tested one pass.
    _C.TEST.AUG.ROT90 = False
    # How a building kept from the pooled passes is scored: "mean", the mean over passes of each
    # pass's best overlapping candidate (0 for a pass without one), so a building one pass alone
    # sees scores less; or "max", the score the head's selection gives it (its best candidate
    # of any pass), so a building one pass finds keeps its score, a false positive too.
    _C.TEST.AUG.SCORE = "mean"


# Keys of mnc_d2 <= 0.1 that shadowed Detectron2's own: merging a config that still sets one
# raises a KeyError naming the key to use instead.
RENAMED_KEYS = {
    "MODEL.MNC.SCORE_THRESH_TEST": "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
    "MODEL.MNC.NMS_THRESH_TEST": "MODEL.ROI_HEADS.NMS_THRESH_TEST",
    "MODEL.MNC.DETECTIONS_PER_IMAGE": "TEST.DETECTIONS_PER_IMAGE",
}


def add_mnc_config(cfg: CN) -> None:
    """Add mnc_d2's keys (data, MNC head, SpaceNet evaluation) to a Detectron2 config.

    Existing keys are never modified; a second call on the same config changes nothing. The MNC
    head's inference thresholds are Detectron2's own keys (``MODEL.ROI_HEADS.SCORE_THRESH_TEST``,
    ``MODEL.ROI_HEADS.NMS_THRESH_TEST``, ``TEST.DETECTIONS_PER_IMAGE``); the mnc_d2 0.1 names
    of those (``RENAMED_KEYS``) raise an error saying so.
    """
    if "MNC" in cfg.MODEL:
        return
    for old, new in RENAMED_KEYS.items():
        cfg.register_renamed_key(old, new, "mnc_d2 >= 0.2 reads Detectron2's own key; a run's "
                                 "config.yaml written by mnc_d2 0.1 needs the same edit")
    _add_input_keys(cfg)
    # Your own scenes and building footprints as datasets (mnc_d2.data.geo_dataset): a YAML file
    # {name: {scenes: [GeoTIFF paths or globs, URLs, STAC documents], labels: footprint file
    # (GeoJSON, GeoPackage, GeoParquet, ...), tile_size: 650, overlap: 0, stac_asset: KEY}},
    # paths relative to the file's folder; its names then go into DATASETS.TRAIN / TEST.
    # "" = none. Not part of the MNC model.
    cfg.DATASETS.GEO = ""
    _add_backbone_keys(cfg)
    _add_mnc_keys(cfg)
    _add_spacenet_eval_keys(cfg)
