"""``MultiBandCheckpointer``: load a 3-band (RGB) checkpoint into an N-band model.

Where a checkpoint tensor and the model's parameter differ only in input channels (3 in the
checkpoint, N in the model: the stem's first convolution), the weight is inflated: for each
model input band that is one of the checkpoint's bands, that band's filter is copied; every
other band gets the mean of the checkpoint's filters. Which file band each checkpoint channel
was trained on is ``INPUT.CHECKPOINT_BANDS`` (1-based file band indices, in the checkpoint's
channel order; empty = the first three entries of INPUT.BANDS). A log line says what was done.

ImageNet checkpoints (Detectron2's Caffe2-format ``ImageNetPretrained`` .pkl files, and torchvision
weights converted by ``tools/convert_torchvision_resnet.py``) are matched to the model by name
heuristics. Detectron2 does that matching before any inflation could happen and drops tensors
whose shapes differ, which would silently leave an N-band stem untrained; here the matching
compares against the 3-channel shape the stem would have, so the stem is matched by name and then
inflated. The MSRA files' ``conv1_b`` (a stem-convolution bias of ~1e-9 that Detectron2's bias-free
stem has no place for) is dropped with a log line instead of being reported as unused.

An inflated stem must train: the filters of the bands the checkpoint lacks (near infrared, red
edge, coastal, yellow) start as the mean of its RGB filters and would keep that forever under
Detectron2's ``FREEZE_AT >= 1``, which the ImageNet configs set. With
``MODEL.BACKBONE.TRAIN_INFLATED_STEM`` (default on), :func:`train_inflated_stem` lets the N-band
input convolution train whenever a checkpoint is loaded into a model of other than 3 bands; the
rest of what FREEZE_AT freezes (res2, frozen batch norm) stays frozen.

Saving is atomic in a local OUTPUT_DIR: each ``model_*.pth`` and the ``last_checkpoint`` tag are
written to a temporary file and renamed into place, so a run killed at any instant (SIGKILL, a
preempted node) leaves the tag naming a complete checkpoint and ``--resume`` continues from it.
fvcore writes both in place, and a kill between truncating and writing the tag left it empty.

For inference (prediction, export, ``--eval-only``) :func:`load_trained_weights` loads strictly
where it matters: Detectron2 loads whatever names match and only logs the rest, so the weights
of another architecture (a Mask R-CNN run's file with an MNC config) gave a model with
randomly initialised heads that predicted buildings without complaint.
"""

from __future__ import annotations

import logging
import os

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts

from ..utils.atomic import atomic_write

logger = logging.getLogger(__name__)


def is_input_filter(tensor: torch.Tensor, num_bands: int) -> bool:
    """Whether a model tensor is a convolution weight reading the N-band input, (O, N, k, k)."""
    return tensor.dim() == 4 and num_bands != 3 and tensor.shape[1] == num_bands


def train_inflated_stem(cfg, model: torch.nn.Module) -> list[str]:
    """Let the N-band input filters train when a 3-band checkpoint inflates them (see the module
    docstring). Call before the optimizer is built. Returns the parameters it unfroze."""
    from ..data.bands import input_bands

    num_bands = len(input_bands(cfg))
    if not (cfg.MODEL.BACKBONE.TRAIN_INFLATED_STEM and cfg.MODEL.WEIGHTS and num_bands != 3):
        return []
    unfrozen = []
    for name, param in model.named_parameters():
        if is_input_filter(param, num_bands) and not param.requires_grad:
            param.requires_grad_(True)
            unfrozen.append(name)
    if unfrozen:
        logger.info("%s: trains although MODEL.BACKBONE.FREEZE_AT=%d freezes the stem: its %d-band "
                    "filters are inflated from a 3-band checkpoint (MODEL.BACKBONE."
                    "TRAIN_INFLATED_STEM)", ", ".join(unfrozen), cfg.MODEL.BACKBONE.FREEZE_AT,
                    num_bands)
    return unfrozen


def inflate_input_channels(weight: torch.Tensor, input_bands: list[int],
                           checkpoint_bands: list[int]) -> torch.Tensor:
    """(O, 3, k, k) weight -> (O, N, k, k) for an N-band input (see module docstring)."""
    if weight.shape[1] != len(checkpoint_bands):
        raise ValueError(f"checkpoint weight has {weight.shape[1]} input channels but "
                         f"INPUT.CHECKPOINT_BANDS lists {len(checkpoint_bands)}")
    mean = weight.mean(dim=1)
    columns = []
    for band in input_bands:
        if band in checkpoint_bands:
            columns.append(weight[:, checkpoint_bands.index(band)])
        else:
            columns.append(mean)
    return torch.stack(columns, dim=1).contiguous()


class MultiBandCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that inflates 3-channel input filters to the model's band count."""

    def __init__(self, model, save_dir: str = "", *, input_bands: list[int],
                 checkpoint_bands: list[int] | None = None, **checkpointables):
        super().__init__(model, save_dir, **checkpointables)
        self.input_bands = [int(b) for b in input_bands]
        self.checkpoint_bands = [int(b) for b in (checkpoint_bands or self.input_bands[:3])]

    def _local(self) -> bool:
        """Whether checkpoints go to a local folder (atomic renames work there)."""
        return "://" not in str(self.save_dir)

    def save(self, name: str, **kwargs) -> None:
        """Write ``{name}.pth`` (model, checkpointables, ``kwargs``) atomically, then tag it."""
        if not self.save_dir or not self.save_to_disk:
            return
        if not self._local():
            return super().save(name, **kwargs)
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        path = os.path.join(self.save_dir, f"{name}.pth")
        logger.info("Saving checkpoint to %s", path)
        with atomic_write(path, "wb") as f:
            torch.save(data, f)
        self.tag_last_checkpoint(os.path.basename(path))

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Name the newest checkpoint in ``last_checkpoint``, atomically in a local folder."""
        if not self._local():
            return super().tag_last_checkpoint(last_filename_basename)
        with atomic_write(os.path.join(self.save_dir, "last_checkpoint"), "w") as f:
            f.write(last_filename_basename)

    def get_checkpoint_file(self) -> str:
        """The checkpoint ``last_checkpoint`` names; a clear error if the tag is empty."""
        path = super().get_checkpoint_file()
        tag = os.path.join(self.save_dir, "last_checkpoint")
        if path and os.path.normpath(path) == os.path.normpath(self.save_dir):
            raise RuntimeError(
                f"{tag} is empty (a run killed while an older version wrote it): write the name "
                "of the newest complete model_*.pth into it, or train without --resume")
        return path

    def _inflatable(self, target: torch.Tensor, value: torch.Tensor | None = None) -> bool:
        """Whether a model tensor is an N-band input filter a 3-band one can inflate."""
        return (is_input_filter(target, len(self.input_bands))
                and (value is None or (value.dim() == 4 and value.shape[1] == 3
                                       and value.shape[0] == target.shape[0]
                                       and value.shape[2:] == target.shape[2:])))

    def _load_model(self, checkpoint):
        self.incompatible = self._load_aligned(checkpoint)  # read by load_trained_weights
        return self.incompatible

    def _load_aligned(self, checkpoint):
        if checkpoint.get("matching_heuristics", False):
            model_state = checkpoint["model"]
            DetectionCheckpointer._convert_ndarray_to_tensor(self, model_state)
            c2 = checkpoint.get("__author__") == "Caffe2"
            bias = model_state.get("conv1_b")
            if c2 and bias is not None and float(bias.abs().max()) < 1e-3:
                del model_state["conv1_b"]
                logger.info("conv1_b dropped: the stem convolution has no bias (max |b| %.1e)",
                            float(bias.abs().max()))
            # Match names against the shapes a 3-band model would have, so an N-band stem is
            # matched (and inflated later) instead of dropped for its shape.
            shapes = {}
            for key, target in self.model.state_dict().items():
                if self._inflatable(target):
                    target = target.new_empty((target.shape[0], 3, *target.shape[2:]))
                shapes[key] = target
            checkpoint["model"] = align_and_update_state_dicts(shapes, model_state,
                                                               c2_conversion=c2)
            checkpoint["matching_heuristics"] = False
        return super()._load_model(checkpoint)

    def _convert_ndarray_to_tensor(self, state_dict: dict) -> None:
        # fvcore calls this on the (name-aligned) checkpoint dict right before comparing shapes
        # with the model, which is the one place where inflation sees final parameter names.
        super()._convert_ndarray_to_tensor(state_dict)
        model_state = self.model.state_dict()
        for key, value in list(state_dict.items()):
            target = model_state.get(key)
            if target is None or not self._inflatable(target, value):
                continue
            state_dict[key] = inflate_input_channels(value, self.input_bands,
                                                     self.checkpoint_bands)
            copied = [b for b in self.input_bands if b in self.checkpoint_bands]
            logger.info("%s: inflated a 3-band checkpoint filter to %d bands: copied RGB filters "
                        "to bands %s, initialised bands %s from their mean", key,
                        target.shape[1], copied,
                        [b for b in self.input_bands if b not in self.checkpoint_bands])


class IncompatibleWeightsError(ValueError):
    """A trained-weights file that does not fit the model its config builds."""


def load_trained_weights(cfg, model, weights: str) -> None:
    """Load the trained ``weights`` into ``cfg``'s ``model`` for inference: every parameter of
    the model must come from the file with its shape, else IncompatibleWeightsError naming the
    file, how many are missing or differ (with examples) and the fix. Tensors of the file the
    model has no place for are only logged (Detectron2's message), as when loading. Empty
    ``weights`` (a config without MODEL.WEIGHTS) is a ValueError saying what to pass."""
    if not weights:
        raise ValueError("MODEL.WEIGHTS is empty: pass the trained model, e.g. "
                         "MODEL.WEIGHTS output/run/model_final.pth")
    checkpointer = build_checkpointer(cfg, model)
    checkpointer.load(weights)
    found = getattr(checkpointer, "incompatible", None)
    if found is None:  # the file held no model state at all
        raise IncompatibleWeightsError(f"MODEL.WEIGHTS {weights} holds no model weights")
    missing = list(found.missing_keys)
    shapes = [key for key, *_ in found.incorrect_shapes]
    if not missing and not shapes:
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} of the model's parameters are not in it (e.g. "
                     f"{', '.join(missing[:3])})")
    if shapes:
        parts.append(f"{len(shapes)} have other shapes (e.g. {', '.join(shapes[:3])})")
    raise IncompatibleWeightsError(
        f"MODEL.WEIGHTS {weights} does not fit the model of this config "
        f"({cfg.MODEL.ROI_HEADS.NAME}, {cfg.MODEL.BACKBONE.NAME}): {' and '.join(parts)}; use "
        "the config.yaml of the run that trained these weights")


def check_trained_weights(cfg) -> None:
    """:func:`load_trained_weights` of ``cfg``'s MODEL.WEIGHTS into its model built on the CPU,
    then dropped: for a process that hands the model to others (the Ray driver), so a file that
    cannot serve is one clear error here instead of a failure in every worker."""
    from detectron2.modeling import build_model

    cpu = cfg.clone()
    cpu.defrost()
    cpu.MODEL.DEVICE = "cpu"
    load_trained_weights(cpu, build_model(cpu).eval(), cpu.MODEL.WEIGHTS)


def build_checkpointer(cfg, model, save_dir: str | None = None, **checkpointables):
    """The checkpointer for ``cfg``'s model: loads 3-band checkpoints into N-band models."""
    from ..data.bands import input_bands

    return MultiBandCheckpointer(model, save_dir if save_dir is not None else cfg.OUTPUT_DIR,
                                 input_bands=input_bands(cfg),
                                 checkpoint_bands=list(cfg.INPUT.CHECKPOINT_BANDS),
                                 **checkpointables)
