"""Config set-up shared by the tools (train_net.py, predict.py, the demo, the benchmarks)."""

from __future__ import annotations

import difflib
import logging
import os
from pathlib import Path

import torch
from detectron2.config import get_cfg

from ..config import add_mnc_config
from ..data import check_band_config, resolve_band_stats
from ..utils.logs import setup_mnc_logger

logger = logging.getLogger(__name__)


def check_config_file(config_file: str) -> None:
    """A missing ``--config-file`` is a FileNotFoundError naming it and the closest configs of
    its folder (Detectron2 would stop on a bare assertion)."""
    path = Path(config_file)
    if path.is_file():
        return
    near = []
    if path.parent.is_dir():
        near = difflib.get_close_matches(path.name, [p.name for p in path.parent.glob("*.yaml")],
                                         n=3, cutoff=0.5)
    hint = (f"; did you mean {', '.join(str(path.parent / n) for n in near)}?" if near else
            "; the shipped configs are under configs/ (SpaceNet1, SpaceNet2, SpaceNet4, "
            "quick_schedules), a trained run's is RUN/config.yaml")
    raise FileNotFoundError(f"--config-file {config_file}: no such file{hint}")


def check_overrides(cfg, opts: list[str]) -> None:
    """Raise a ValueError that says what to change when the KEY VALUE overrides ``opts`` would
    stop yacs on a bare assertion: an option written after them (argparse hands everything
    after the first override to them, so ``--formats geojson`` at the end became a config key),
    a key without its value, or a key the config does not have (with the nearest keys)."""
    for i in range(0, len(opts), 2):
        key = opts[i]
        if key.startswith("-") and key != "--":
            raise ValueError(f"{key} comes after the KEY VALUE overrides, where it is read as a "
                             "config key: put options before the overrides (KEY VALUE pairs "
                             "go last)")
        if i + 1 == len(opts):
            raise ValueError(f"KEY VALUE overrides come in pairs: {key} has no value")
        if cfg.key_is_deprecated(key) or cfg.key_is_renamed(key):
            continue  # yacs says what became of it
        node = cfg
        for part in key.split("."):
            if not isinstance(node, type(cfg)) or part not in node:
                keys = _config_keys(cfg)
                near = difflib.get_close_matches(key, keys, n=3, cutoff=0.75)
                hint = f"; did you mean {', '.join(near)}?" if near else ""
                raise ValueError(f"{key} (a KEY VALUE override) is not a config key{hint}")
            node = node[part]


def _config_keys(node, prefix: str = "") -> list[str]:
    """Every leaf key of a CfgNode, dotted."""
    keys = []
    for name, value in node.items():
        if isinstance(value, type(node)):
            keys += _config_keys(value, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def check_overrides_arg(config_file: str, opts: list[str]) -> None:
    """:func:`check_overrides` against the config file's keys, for tools/train_net.py before any
    process starts."""
    cfg = get_cfg()
    add_mnc_config(cfg)
    cfg.merge_from_file(config_file)
    check_overrides(cfg, _without_separator(opts))


def _without_separator(opts: list[str]) -> list[str]:
    """The overrides without a leading ``--`` (argparse's end-of-options marker)."""
    return list(opts[1:]) if opts[:1] == ["--"] else list(opts)


def check_weights_arg(opts: list[str], resume: bool) -> None:
    """A ``MODEL.WEIGHTS`` override naming a local file that does not exist is a
    FileNotFoundError before any process starts (Detectron2 would stop on a bare assertion after
    building the model and the data). Not checked with ``--resume``: a run with a checkpoint
    ignores it; URLs and catalog names are left to Detectron2."""
    pairs = dict(zip(opts[0::2], opts[1::2]))
    weights = pairs.get("MODEL.WEIGHTS", "")
    if resume or not weights or "://" in weights or Path(weights).is_file():
        return
    raise FileNotFoundError(f"MODEL.WEIGHTS {weights}: no such file (a trained run's weights are "
                            "RUN/model_final.pth)")


def resolve_run_paths(cfg, config_file: str) -> list[str]:
    """Find the files a run's config.yaml names by relative paths (INPUT.BAND_STATS, written as
    ``OUTPUT_DIR/band_stats.json``, and DATASETS.GEO) when the config is used from another
    folder than the one training ran in, or after the run's folder was moved or copied (trained
    on a cluster, predicted on a laptop): a path that does not exist from the working directory
    is looked for relative to the config file's folder, then as a file of that name in it (the
    run's folder, where training writes band_stats.json). Found paths replace the values;
    others stay, for the errors that name them. Returns what it changed, to be logged."""
    here, notes = Path(config_file).resolve().parent, []
    for key in ("INPUT.BAND_STATS", "DATASETS.GEO"):
        node, leaf = key.split(".")
        value = getattr(getattr(cfg, node), leaf)
        if not value or value == "auto" or Path(value).is_absolute() or Path(value).exists():
            continue
        for candidate in (here / value, here / Path(value).name):
            if candidate.is_file():
                notes.append(f"{key} {value} is not under the working directory: using "
                             f"{candidate} (beside {config_file})")
                setattr(getattr(cfg, node), leaf, str(candidate))
                break
    return notes


RUN_FILES = ("band_stats.json", "last_checkpoint", "model_final.pth", "metrics.json")


def evaluate_in_run_folder(cfg, config_file: str) -> list[str]:
    """With a training run's own config.yaml (a folder holding it and what training writes
    there), evaluation writes into that folder: its OUTPUT_DIR, relative to where training ran,
    would otherwise make a new folder under the working directory when used from elsewhere, or
    after the run was copied, and the evaluation's threshold file would not be where
    prediction with the run's weights looks for it. An OUTPUT_DIR given on the command line is
    kept. Returns what it changed, to be logged."""
    config = Path(config_file).resolve()
    if config.name != "config.yaml" or not any((config.parent / f).is_file()
                                               for f in RUN_FILES):
        return []
    if not cfg.OUTPUT_DIR or Path(cfg.OUTPUT_DIR).resolve() == config.parent:
        return []
    note = (f"OUTPUT_DIR {cfg.OUTPUT_DIR} is the run's folder as seen from where it trained: "
            f"using {config.parent}, where {config_file} is")
    cfg.OUTPUT_DIR = str(config.parent)
    return [note]


def setup_cfg(config_file: str, opts: list[str], for_training: bool = True,
              log_to_output: bool = False, needs_datasets: bool = True):
    """Load a config (mnc_d2 keys added), apply overrides, fall back to CPU without CUDA,
    resolve per-band statistics and check the band configuration. Returns the frozen cfg.

    ``needs_datasets`` False (prediction, export: they read no dataset) leaves DATASETS.GEO
    unregistered, so a run's config.yaml works where its training data is not.

    ``log_to_output`` (the tools' processes): before anything is logged, send the ``mnc_d2``
    logger to the console and ``OUTPUT_DIR/log.txt`` the way Detectron2's ``default_setup``
    does for its own logger; without it the band statistics, the mapper's bands and the
    evaluator's SpaceNet lines would reach neither.
    """
    check_config_file(config_file)
    cfg = get_cfg()
    add_mnc_config(cfg)
    cfg.merge_from_file(config_file)
    opts = _without_separator(opts)
    check_overrides(cfg, opts)
    cfg.merge_from_list(opts)
    notes = resolve_run_paths(cfg, config_file)
    if not for_training and "OUTPUT_DIR" not in opts[0::2]:
        notes += evaluate_in_run_folder(cfg, config_file)
    if log_to_output:
        setup_mnc_logger(cfg.OUTPUT_DIR)
    for note in notes:  # once the log goes where OUTPUT_DIR now says
        logger.info(note)
    if cfg.DATASETS.GEO and needs_datasets:  # own scenes and footprints, before DATASETS is read
        from ..data.geo_dataset import register_geo_file

        register_geo_file(cfg.DATASETS.GEO)
        # absolute in the run's config.yaml, so --eval-only finds it from any folder
        cfg.DATASETS.GEO = str(Path(cfg.DATASETS.GEO).resolve())
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
    check_unsupported_keys(cfg)
    if for_training:
        record_imagery(cfg)
    cfg.freeze()
    return cfg


def check_unsupported_keys(cfg) -> None:
    """Detectron2 keys that mnc_d2 does not act on are a ValueError naming the key, not a
    setting silently ignored: test-time augmentation with another head than MNC's (the tools
    run :mod:`mnc_d2.modeling.tta`, which votes the MNC head's candidates), keypoints, and
    ``MODEL.MASK_ON False`` on the MNC head (its masks are part of the cascade: the masked
    classification stages score each instance through its mask)."""
    if cfg.TEST.AUG.ENABLED and cfg.MODEL.ROI_HEADS.NAME != "MNCROIHeads":
        raise ValueError(f"TEST.AUG.ENABLED True with MODEL.ROI_HEADS.NAME "
                         f"{cfg.MODEL.ROI_HEADS.NAME}: mnc_d2's test-time augmentation votes "
                         "the MNC head's candidates (MNCROIHeads); set it False")
    if cfg.MODEL.KEYPOINT_ON:
        raise ValueError("MODEL.KEYPOINT_ON True: mnc_d2 predicts building footprints, not "
                         "keypoints; set it False")
    if cfg.MODEL.ROI_HEADS.NAME == "MNCROIHeads" and not cfg.MODEL.MASK_ON:
        raise ValueError("MODEL.MASK_ON False with MODEL.ROI_HEADS.NAME MNCROIHeads: the "
                         "cascade always predicts masks (its classifier scores each instance "
                         "through its mask); set MODEL.MASK_ON True")


def record_imagery(cfg) -> None:
    """Fill INPUT.BAND_NAMES, INPUT.GSD and INPUT.TRAIN_TILE_SIZE, where the config leaves them
    unset, from the first training dataset's registration (its release product's band names,
    metres per pixel and tile side), so that the run's config.yaml records them and
    tools/predict.py can read other imagery by band name, at the training pixel size and scale.
    Datasets registered without them leave them unset."""
    from detectron2.data import MetadataCatalog

    from ..data.bands import input_bands

    if not cfg.DATASETS.TRAIN:
        return
    meta = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
    names, gsd = meta.get("band_names", None), meta.get("gsd_m", None)
    bands = input_bands(cfg)
    if not cfg.INPUT.BAND_NAMES and names and max(bands) <= len(names):
        cfg.INPUT.BAND_NAMES = [names[b - 1] for b in bands]
        logger.info("INPUT.BAND_NAMES %s (from %s)", list(cfg.INPUT.BAND_NAMES),
                    cfg.DATASETS.TRAIN[0])
    if not cfg.INPUT.GSD and gsd:
        cfg.INPUT.GSD = float(gsd)
    if not cfg.INPUT.TRAIN_TILE_SIZE and meta.get("tile_px", None):
        cfg.INPUT.TRAIN_TILE_SIZE = int(meta.get("tile_px"))
    if len(cfg.DATASETS.TRAIN) > 1:
        from ..data.geo_dataset import warn_mixed_gsd

        warn_mixed_gsd("DATASETS.TRAIN's datasets", {
            n: MetadataCatalog.get(n).get("gsd_m", None) for n in cfg.DATASETS.TRAIN})


EVAL_CONFIG = "config_eval.yaml"


def default_setup_keeping_run_config(cfg, args) -> None:
    """Detectron2's ``default_setup`` (logging, environment, seed, ``OUTPUT_DIR/config.yaml``),
    except that ``--eval-only`` keeps a training run's own ``config.yaml``: Detectron2 writes the
    evaluation's config over it, so an evaluation with ``TEST.AUG.ENABLED True`` (or any other
    override) would silently change what ``tools/predict.py --config-file RUN/config.yaml`` and
    ``tools/export_model.py`` do with the run afterwards. The evaluation's config goes to
    ``OUTPUT_DIR/config_eval.yaml`` instead when it differs."""
    from detectron2.engine import default_setup
    from detectron2.utils import comm

    from ..utils.atomic import atomic_write

    path = Path(cfg.OUTPUT_DIR) / "config.yaml" if cfg.OUTPUT_DIR else None
    keep = args.eval_only and comm.is_main_process() and path is not None and path.is_file()
    kept = path.read_bytes() if keep else None  # only the main process writes config.yaml
    default_setup(cfg, args)
    written = path.read_bytes() if kept is not None else None
    if written == kept:
        return
    with atomic_write(path.with_name(EVAL_CONFIG), "wb") as f:
        f.write(written)
    with atomic_write(path, "wb") as f:
        f.write(kept)
    logger.info("--eval-only: kept the run's %s as it was; this evaluation's config is %s",
                path, path.with_name(EVAL_CONFIG))
