"""Starting from ImageNet weights: the MSRA and GN Caffe2 files, torchvision weights converted by
tools/convert_torchvision_resnet.py, and the 8-band stem inflation, on checkpoints written here
with exactly those files' key layouts (nothing can be downloaded)."""

from __future__ import annotations

import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from detectron2.config import get_cfg
from detectron2.modeling import build_model

import mnc_d2
from mnc_d2.modeling.checkpoint import MultiBandCheckpointer, build_checkpointer, inflate_input_channels
from mnc_d2.modeling.torchvision_weights import torchvision_to_detectron2_name

REPO = Path(__file__).resolve().parents[1]
SN2 = REPO / "configs" / "SpaceNet2"


def model_of(config: str):
    cfg = get_cfg()
    mnc_d2.add_mnc_config(cfg)
    cfg.merge_from_file(str(SN2 / config))
    cfg.MODEL.DEVICE = "cpu"
    cfg.INPUT.BAND_STATS = ""
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.PIXEL_MEAN = [0.0] * len(cfg.INPUT.BANDS)
    cfg.MODEL.PIXEL_STD = [1.0] * len(cfg.INPUT.BANDS)
    cfg.freeze()
    return cfg, build_model(cfg)


def caffe2_name(name: str, norm: str) -> str | None:
    """Detectron2 backbone name -> the Caffe2 name in Detectron's ImageNet .pkl files (the
    inverse of Detectron2's c2 conversion; norm "bn" for MSRA, "gn" for R-50-GN)."""
    if name.endswith(("running_mean", "running_var", "num_batches_tracked")):
        return None  # the ImageNet Caffe2 files hold the affine parameters only
    name = name.replace(".shortcut", ".branch1").replace(".conv1.", ".branch2a.", 1) \
        if name.startswith("res") else name
    name = re.sub(r"^(res\d\.\d+)\.conv2\.", r"\1.branch2b.", name)
    name = re.sub(r"^(res\d\.\d+)\.conv3\.", r"\1.branch2c.", name)
    if name.startswith("stem.conv1.norm."):
        prefix = "res_conv1_bn" if norm == "bn" else "conv1_gn"
        return prefix + {"weight": "_s", "bias": "_b"}[name.rsplit(".", 1)[1]]
    if name == "stem.conv1.weight":
        return "conv1_w"
    name = re.sub(r"\.norm\.weight$", f"_{norm}_s", name)
    name = re.sub(r"\.norm\.bias$", f"_{norm}_b", name)
    name = re.sub(r"\.weight$", "_w", name)
    return name.replace(".", "_")


def write_caffe2_file(model, path: Path, norm: str, seed: int = 0) -> dict[str, np.ndarray]:
    """A random checkpoint with the key layout of MSRA/R-50.pkl (norm "bn": conv1_b, fc1000_*)
    or FAIR/R-50-GN.pkl (norm "gn": under "blobs", pred_*). Returns {d2 name: value}."""
    rng = np.random.default_rng(seed)
    blobs, expected = {}, {}
    for name, tensor in model.backbone.bottom_up.state_dict().items():
        c2 = caffe2_name(name, norm)
        if c2 is None:
            continue
        shape = tuple(tensor.shape)
        if name == "stem.conv1.weight":
            shape = (shape[0], 3, *shape[2:])
        value = rng.normal(size=shape).astype(np.float32)
        blobs[c2] = value
        expected[name] = value
    if norm == "bn":
        blobs["conv1_b"] = np.full(64, 1e-9, np.float32)
        blobs["fc1000_w"] = rng.normal(size=(1000, 2048)).astype(np.float32)
        blobs["fc1000_b"] = np.zeros(1000, np.float32)
        data = blobs
    else:
        blobs["pred_w"] = rng.normal(size=(1000, 2048)).astype(np.float32)
        blobs["pred_b"] = np.zeros(1000, np.float32)
        data = {"blobs": blobs}
    with open(path, "wb") as f:
        pickle.dump(data, f)
    return expected


def load(cfg, model, path: Path):
    checkpointer = build_checkpointer(cfg, model, save_dir="")
    return checkpointer._load_model(checkpointer._load_file(str(path)))


def assert_backbone_is(model, expected: dict[str, np.ndarray]):
    """Every learned backbone tensor holds the file's value."""
    state = model.backbone.bottom_up.state_dict()
    assert set(expected) == {k for k in state if not k.endswith(("running_mean", "running_var",
                                                                  "num_batches_tracked"))}
    for name, value in expected.items():
        assert np.array_equal(state[name].numpy(), value), name


@pytest.mark.parametrize("config,norm", [("mnc_R_50_FPN_3x_all_imagenet_msra.yaml", "bn"),
                                         ("mask_rcnn_R_50_FPN_3x_all_imagenet_msra.yaml", "bn"),
                                         ("mnc_R_50_FPN_3x_all_imagenet_gn.yaml", "gn")])
def test_imagenet_caffe2_files_fill_every_backbone_tensor(tmp_path, config, norm):
    cfg, model = model_of(config)
    expected = write_caffe2_file(model, tmp_path / "R-50.pkl", norm)
    incompatible = load(cfg, model, tmp_path / "R-50.pkl")
    missing = [k for k in incompatible.missing_keys if k.startswith("backbone.bottom_up.")]
    assert missing == [] and incompatible.incorrect_shapes == []
    assert_backbone_is(model, expected)
    # FrozenBN without running statistics in the file: identity statistics.
    if norm == "bn":
        norm_layer = model.backbone.bottom_up.stem.conv1.norm
        assert torch.all(norm_layer.running_mean == 0) and torch.all(norm_layer.running_var == 1)


def test_imagenet_configs_name_the_model_zoo_files():
    assert "detectron2://ImageNetPretrained/MSRA/R-50.pkl" in \
        (SN2 / "mnc_R_50_FPN_3x_all_imagenet_msra.yaml").read_text()
    assert "detectron2://ImageNetPretrained/FAIR/R-50-GN.pkl" in \
        (SN2 / "mnc_R_50_FPN_3x_all_imagenet_gn.yaml").read_text()


def test_8band_model_inflates_the_pretrained_stem(tmp_path):
    cfg3, model3 = model_of("mnc_R_50_FPN_3x_all_imagenet_msra.yaml")
    expected = write_caffe2_file(model3, tmp_path / "R-50.pkl", "bn")
    cfg, model = model_of("mnc_R_50_FPN_3x_all_8band_imagenet_msra.yaml")
    incompatible = load(cfg, model, tmp_path / "R-50.pkl")
    assert [k for k in incompatible.missing_keys if k.startswith("backbone.bottom_up.")] == []
    bgr = expected["stem.conv1.weight"]  # checkpoint channels B, G, R = file bands 2, 3, 5
    stem = model.backbone.bottom_up.stem.conv1.weight.detach().numpy()
    assert stem.shape[1] == 8
    for channel, band in enumerate([2, 3, 5]):
        assert np.array_equal(stem[:, band - 1], bgr[:, channel])
    for band in (1, 4, 6, 7, 8):
        assert np.allclose(stem[:, band - 1], bgr.mean(axis=1), atol=1e-6)
    rest = {k: v for k, v in expected.items() if k != "stem.conv1.weight"}
    state = model.backbone.bottom_up.state_dict()
    assert all(np.array_equal(state[k].numpy(), v) for k, v in rest.items())


def test_torchvision_conversion_fills_every_backbone_tensor(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.resnet50(weights=None)
    for module in tv.modules():  # non-trivial running statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    torch.save(tv.state_dict(), tmp_path / "resnet50.pth")
    result = subprocess.run([sys.executable, str(REPO / "tools" / "convert_torchvision_resnet.py"),
                             str(tmp_path / "resnet50.pth"), str(tmp_path / "R-50-tv.pkl")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    cfg, model = model_of("mnc_R_50_FPN_3x_all_imagenet_torchvision.yaml")
    incompatible = load(cfg, model, tmp_path / "R-50-tv.pkl")
    assert [k for k in incompatible.missing_keys if k.startswith("backbone.bottom_up.")] == []
    state = model.backbone.bottom_up.state_dict()
    converted = {torchvision_to_detectron2_name(k): v for k, v in tv.state_dict().items()}
    converted.pop(None)
    assert set(converted) == {k for k in state if not k.endswith("num_batches_tracked")}
    for name, value in converted.items():
        assert torch.equal(state[name], value), name


def test_converter_rejects_what_is_not_a_torchvision_resnet(tmp_path):
    torch.save({"encoder.weight": torch.zeros(3)}, tmp_path / "other.pth")
    result = subprocess.run([sys.executable, str(REPO / "tools" / "convert_torchvision_resnet.py"),
                             str(tmp_path / "other.pth"), str(tmp_path / "out.pkl")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "not a torchvision ResNet" in result.stderr
    assert not (tmp_path / "out.pkl").exists()


def test_stem_inflation(tmp_path):
    rgb = torch.nn.Conv2d(3, 4, 3)
    torch.save({"model": {"conv.weight": rgb.weight.detach().clone()}}, tmp_path / "rgb.pth")
    model = torch.nn.Module()
    model.conv = torch.nn.Conv2d(8, 4, 3, bias=False)
    # MUL band order: 5 = red, 3 = green, 2 = blue.
    MultiBandCheckpointer(model, input_bands=list(range(1, 9)),
                          checkpoint_bands=[5, 3, 2]).load(str(tmp_path / "rgb.pth"))
    w = model.conv.weight.detach()
    assert torch.equal(w[:, 4], rgb.weight[:, 0]) and torch.equal(w[:, 1], rgb.weight[:, 2])
    assert torch.allclose(w[:, 0], rgb.weight.mean(1)) and torch.allclose(w[:, 7], rgb.weight.mean(1))
    with pytest.raises(ValueError, match="CHECKPOINT_BANDS lists 2"):
        inflate_input_channels(rgb.weight, [1, 2, 3], [1, 2])


def _stem_after_one_step(tmp_path, train_inflated: bool):
    """A 4-band R-18 model under FREEZE_AT 2 (stem and res2 frozen, frozen BN) loads a 3-band
    checkpoint's stem and takes one SGD step. Returns (stem before, after), (res2 before, after)
    and whether the stem was given to the optimizer."""
    from detectron2.utils.events import EventStorage

    from mnc_d2.engine.trainer import Trainer

    torch.manual_seed(0)
    rgb = torch.randn(64, 3, 7, 7) * 0.1
    torch.save({"model": {"backbone.bottom_up.stem.conv1.weight": rgb}}, tmp_path / "rgb.pth")
    cfg = get_cfg()
    mnc_d2.add_mnc_config(cfg)
    cfg.merge_from_file(str(REPO / "configs" / "quick_schedules" / "mnc_R_18_FPN_quick_synthetic.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", str(tmp_path / "rgb.pth"),
                         "MODEL.BACKBONE.FREEZE_AT", 2, "MODEL.RESNETS.NORM", "FrozenBN",
                         "INPUT.BANDS", [1, 2, 3, 4], "INPUT.BAND_STATS", "",
                         "MODEL.PIXEL_MEAN", [0.5] * 4, "MODEL.PIXEL_STD", [0.25] * 4,
                         "MODEL.BACKBONE.TRAIN_INFLATED_STEM", train_inflated])
    model = Trainer.build_model(cfg)
    build_checkpointer(cfg, model, save_dir="").load(cfg.MODEL.WEIGHTS)
    optimizer = Trainer.build_optimizer(cfg, model)
    stem = model.backbone.bottom_up.stem.conv1.weight
    res2 = next(model.backbone.bottom_up.res2.parameters())
    before = stem.detach().clone(), res2.detach().clone()
    image = torch.full((4, 128, 128), 0.3)
    image[3, 30:90, 40:100] = 0.9  # a roof seen only in the 4th band
    from detectron2.structures import BitMasks, Boxes, Instances

    inst = Instances((128, 128))
    inst.gt_boxes = Boxes(torch.tensor([[40.0, 30.0, 100.0, 90.0]]))
    inst.gt_classes = torch.zeros(1, dtype=torch.long)
    mask = torch.zeros(1, 128, 128, dtype=torch.bool)
    mask[0, 30:90, 40:100] = True
    inst.gt_masks = BitMasks(mask)
    model.train()
    with EventStorage(0):
        losses = model([{"image": image, "instances": inst, "height": 128, "width": 128}])
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()
    in_optimizer = any(p is stem for g in optimizer.param_groups for p in g["params"])
    return (before[0], stem.detach()), (before[1], res2.detach()), in_optimizer


def test_inflated_stem_trains_where_freeze_at_freezes_the_stem(tmp_path):
    (s0, s1), (r0, r1), in_optimizer = _stem_after_one_step(tmp_path, train_inflated=True)
    assert in_optimizer
    assert torch.allclose(s0[:, 3], s0[:, :3].mean(1), atol=1e-6)  # inflated: NIR = RGB mean
    assert not torch.equal(s0[:, 3], s1[:, 3]), "the new band's filters did not move"
    assert torch.equal(r0, r1), "res2 must stay frozen (FREEZE_AT 2)"
    # Off: the stem stays frozen, as Detectron2's FREEZE_AT says.
    (s0, s1), _, in_optimizer = _stem_after_one_step(tmp_path, train_inflated=False)
    assert not in_optimizer and torch.equal(s0, s1)
