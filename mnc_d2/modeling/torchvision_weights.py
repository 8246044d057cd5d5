"""torchvision ResNet weights -> a Detectron2 backbone checkpoint.

Used by ``tools/convert_torchvision_resnet.py``.

torchvision names (``conv1``, ``bn1``, ``layer{1-4}.{block}.conv{k}``/``bn{k}``,
``downsample.0/1``, ``fc``) become Detectron2's ResNet names (``stem.conv1``, ``stem.conv1.norm``,
``res{2-5}.{block}.conv{k}``/``.norm``, ``shortcut``/``shortcut.norm``); the ImageNet classifier
(``fc``) and ``num_batches_tracked`` counters are left out. The result is a .pkl that
Detectron2's checkpointer matches to any ResNet backbone by name (``matching_heuristics``), so the
same file serves MNC and Mask R-CNN, FPN or not, 3 or N bands (the stem is inflated, see
:mod:`.checkpoint`).

The converted model expects what torchvision's did: RGB bands in that order, each normalised to
unit standard deviation (``INPUT.BANDS`` in RGB order, ``INPUT.BAND_STATS_TARGET_STD: 1.0``), the
stride on the 3x3 convolution (``MODEL.RESNETS.STRIDE_IN_1X1: False``) and frozen batch norm.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import torch

from ..utils.atomic import atomic_write

def torchvision_to_detectron2_name(name: str) -> str | None:
    """One torchvision ResNet parameter name -> its Detectron2 name (None = not a backbone key).

    >>> torchvision_to_detectron2_name("layer1.0.downsample.1.running_var")
    'res2.0.shortcut.norm.running_var'
    """
    if name.startswith("fc.") or name.endswith("num_batches_tracked"):
        return None
    if name == "conv1.weight":
        return "stem.conv1.weight"
    match = re.match(r"^bn1\.(.+)$", name)
    if match:
        return f"stem.conv1.norm.{match.group(1)}"
    match = re.match(r"^layer(\d)\.(\d+)\.(.+)$", name)
    if not match:
        raise ValueError(f"{name!r} is not a torchvision ResNet parameter name (conv1, bn1, "
                         "layer1-4, fc); is this a torchvision ResNet state_dict?")
    stage, block, rest = int(match.group(1)) + 1, match.group(2), match.group(3)
    for pattern, repl in ((r"^conv(\d)\.weight$", r"conv\1.weight"),
                          (r"^bn(\d)\.(.+)$", r"conv\1.norm.\2"),
                          (r"^downsample\.0\.weight$", "shortcut.weight"),
                          (r"^downsample\.1\.(.+)$", r"shortcut.norm.\1")):
        if re.match(pattern, rest):
            return f"res{stage}.{block}.{re.sub(pattern, repl, rest)}"
    raise ValueError(f"{name!r}: unknown part {rest!r} of a torchvision ResNet block")


def convert_torchvision_state_dict(state_dict: dict) -> dict[str, np.ndarray]:
    """torchvision ResNet state_dict -> {Detectron2 name: float32 array} (backbone only)."""
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], dict):
        state_dict = state_dict["state_dict"]
    out = {}
    for name, value in state_dict.items():
        new = torchvision_to_detectron2_name(name)
        if new is not None:
            out[new] = value.detach().cpu().float().numpy()
    if "stem.conv1.weight" not in out:
        raise ValueError("no conv1.weight in the file: not a torchvision ResNet state_dict")
    return out


def convert_torchvision_file(src: str | Path, dst: str | Path) -> dict[str, np.ndarray]:
    """Read a torchvision ResNet .pth (e.g. resnet50-11ad3fa6.pth) and write the Detectron2 .pkl
    (atomically). Returns the converted tensors."""
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(f"{src}: no such file (download torchvision's ResNet weights, "
                                "e.g. resnet50-11ad3fa6.pth, where you have internet)")
    if dst.suffix != ".pkl":
        raise ValueError(f"{dst}: the output must end in .pkl (Detectron2 reads name-matched "
                         "checkpoints from .pkl files)")
    model = convert_torchvision_state_dict(torch.load(src, map_location="cpu",
                                                      weights_only=True))
    with atomic_write(dst, "wb") as f:
        pickle.dump({"model": model, "__author__": "torchvision", "matching_heuristics": True},
                    f)
    return model
