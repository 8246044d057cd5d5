"""Foundation: the package imports, registers, adds config keys, and its shims work."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import mnc_d2
from mnc_d2 import compat


def test_detectron2_submodules_import_after_mnc_d2():
    for name in (
        "detectron2.layers",
        "detectron2.modeling",
        "detectron2.data",
        "detectron2.engine",
        "detectron2.evaluation",
        "detectron2.model_zoo",
        "detectron2.utils.collect_env",
    ):
        importlib.import_module(name)


def test_only_detectron2s_deprecation_messages_are_silenced():
    # in a fresh interpreter: pytest undoes filters that imports set while it collects
    code = """
import warnings
import mnc_d2
mnc_d2.setup()
import torch
with warnings.catch_warnings(record=True) as caught:
    torch.meshgrid(torch.arange(2), torch.arange(3))  # as detectron2's anchor generator does
    from fvcore.transforms.transform import VFlipTransform
    import numpy as np
    read_only = np.zeros((4, 4), np.float32)
    read_only.setflags(write=False)  # as Detectron2's resize returns a mask
    VFlipTransform(4).apply_image(read_only)
    warnings.warn("torch.meshgrid: another message", UserWarning)
    warnings.warn("another deprecation", FutureWarning)
print(sorted(str(w.message) for w in caught))
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert run.stdout.strip() == "['another deprecation', 'torch.meshgrid: another message']"


def test_collect_env_runs():
    """default_setup() logs collect_env(), which reads detectron2._C."""
    from detectron2.utils.collect_env import collect_env_info

    info = collect_env_info()
    assert "detectron2" in info and "PyTorch" in info


def test_add_mnc_config_only_adds_keys():
    from detectron2.config import get_cfg

    plain = get_cfg()
    extended = get_cfg()
    mnc_d2.add_mnc_config(extended)

    def flatten(node, prefix=""):
        out = {}
        for key, value in node.items():
            if isinstance(value, dict):
                out.update(flatten(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    before, after = flatten(plain), flatten(extended)
    assert set(before) < set(after), "add_mnc_config must add keys"
    changed = {k for k in before if before[k] != after[k]}
    assert not changed, f"add_mnc_config changed existing keys: {sorted(changed)}"
    added = set(after) - set(before)
    assert "MODEL.MNC.NUM_STAGES" in added and "INPUT.BANDS" in added
    # A second call changes nothing.
    snapshot = extended.dump()
    mnc_d2.add_mnc_config(extended)
    assert extended.dump() == snapshot


def test_every_added_key_has_a_comment(repo_root: Path):
    """Each key assignment in config.py is preceded by a one-line comment."""
    lines = (repo_root / "mnc_d2" / "config.py").read_text().splitlines()
    uncommented = []
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("_C.") and "=" in stripped and "CN()" not in stripped:
            if not lines[i - 1].strip().startswith("#"):
                uncommented.append(stripped)
    assert not uncommented, f"config keys without a comment: {uncommented}"


# --- shims -----------------------------------------------------------------------------------


def test_pillow_transforms_work():
    """v0.6 uses Image.LINEAR as a default argument; Pillow >= 10 removed it."""
    from detectron2.data import transforms as T

    image = (np.random.RandomState(0).rand(40, 60, 3) * 255).astype(np.uint8)
    resized = T.ResizeTransform(40, 60, 20, 30).apply_image(image)
    assert resized.shape == (20, 30, 3)
    extent = T.ExtentTransform(src_rect=(0, 0, 30, 20), output_size=(10, 15)).apply_image(image)
    assert extent.shape == (10, 15, 3)
    aug = T.AugmentationList([T.ResizeShortestEdge(32, 64), T.RandomFlip(prob=1.0)])
    out = T.AugInput(image)
    aug(out)
    assert out.image.shape[0] == 32


def test_missing_cpp_ops_raise_clear_error():
    if "detectron2._C stand-in" not in compat.applied_shims():
        pytest.skip("this detectron2 has its compiled _C ops; the stand-in is not in use")
    import detectron2._C as ops

    assert ops.has_cuda() is False
    with pytest.raises(NotImplementedError, match="DETECTRON2_SOURCE"):
        ops.deform_conv_forward()


def test_checkpoint_roundtrip_under_weights_only_default(tmp_path: Path):
    """torch >= 2.6 loads with weights_only=True; our extra state must stay loadable."""
    from detectron2.checkpoint import DetectionCheckpointer

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    with torch.no_grad():
        model[0].weight.normal_()
    ckpt = DetectionCheckpointer(model, save_dir=str(tmp_path))
    ckpt.save("model_test", iteration=7, band_stats={"mean": [1.5, 2.5], "std": [3.0, 4.0]})
    fresh = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    extra = DetectionCheckpointer(fresh).load(str(tmp_path / "model_test.pth"))
    assert extra["iteration"] == 7
    assert extra["band_stats"]["std"] == [3.0, 4.0]
    assert torch.equal(fresh[0].weight, model[0].weight)


def test_numpy_aliases_present():
    assert np.int is int and np.float is float


def _ddp_worker(out_dir: str) -> None:
    """Runs in each of 2 CPU processes: gather, DDP gradient averaging, local rank."""
    from detectron2.engine.defaults import create_ddp_model
    from detectron2.utils import comm

    rank = comm.get_rank()
    torch.manual_seed(0)
    model = create_ddp_model(torch.nn.Linear(3, 1, bias=False))
    x = torch.full((1, 3), float(rank + 1))
    model(x).sum().backward()
    grad = model.module.weight.grad.tolist()
    gathered = comm.all_gather({"rank": rank, "local_rank": comm.get_local_rank()})
    Path(out_dir, f"rank{rank}.json").write_text(
        json.dumps({"grad": grad, "gathered": gathered, "world": comm.get_world_size()})
    )


def test_cpu_launch_two_processes_with_ddp(tmp_path: Path):
    from mnc_d2.engine import launch

    if torch.cuda.is_available():
        pytest.skip("CUDA present: launch() delegates to detectron2's NCCL launcher")
    launch(_ddp_worker, 2, dist_url="auto", args=(str(tmp_path),))
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for res in results:
        assert res["world"] == 2
        # DDP averages the gradients of rank 0 (x=1) and rank 1 (x=2): 1.5 everywhere.
        assert res["grad"] == [[1.5, 1.5, 1.5]]
        assert sorted(g["rank"] for g in res["gathered"]) == [0, 1]
        assert sorted(g["local_rank"] for g in res["gathered"]) == [0, 1]


CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_every_config_loads(path):
    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog

    cfg = get_cfg()
    mnc_d2.add_mnc_config(cfg)
    cfg.merge_from_file(str(path))
    assert len(cfg.MODEL.PIXEL_MEAN) == len(cfg.MODEL.PIXEL_STD)
    assert not cfg.INPUT.BANDS or len(cfg.INPUT.BANDS) == len(cfg.MODEL.PIXEL_MEAN)
    for name in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST):
        assert name in DatasetCatalog.list(), f"{path.name} names unregistered dataset {name}"
    if "quick_schedules" in str(path):
        from detectron2.modeling import build_model

        cfg.MODEL.DEVICE = "cpu"
        assert build_model(cfg) is not None


def test_every_mnc_key_is_read_by_the_package():
    """A config key that nothing reads is a dead flag: each MODEL.MNC / TEST.SPACENET key must
    appear in the package's code outside config.py."""
    from detectron2.config import get_cfg

    cfg = get_cfg()
    mnc_d2.add_mnc_config(cfg)
    package = Path(mnc_d2.__file__).parent
    code = "\n".join(p.read_text() for p in package.rglob("*.py") if p.name != "config.py")
    for node, names in ((cfg.MODEL.MNC, "MNC"), (cfg.MODEL.MNC.LOSS_WEIGHTS, "LOSS_WEIGHTS"),
                        (cfg.TEST.SPACENET, "SPACENET")):
        for key, value in node.items():
            if isinstance(value, dict):
                continue
            pattern = rf"(\.{key}\b|\"{key}\")"  # cfg.X.KEY, or "KEY" in a name table
            assert re.search(pattern, code), f"{names}.{key} is read nowhere"


@pytest.mark.parametrize("old,new", [
    ("MODEL.MNC.SCORE_THRESH_TEST", "MODEL.ROI_HEADS.SCORE_THRESH_TEST"),
    ("MODEL.MNC.NMS_THRESH_TEST", "MODEL.ROI_HEADS.NMS_THRESH_TEST"),
    ("MODEL.MNC.DETECTIONS_PER_IMAGE", "TEST.DETECTIONS_PER_IMAGE")])
def test_mnc_0_1_threshold_keys_name_detectron2_s_key(tmp_path, old, new):
    """The MNC head reads Detectron2's threshold keys; a config still setting the old mnc_d2 0.1
    name fails with the key to use, from a file and from the command line."""
    from detectron2.config import get_cfg

    *path, last = old.split(".")
    text = "MODEL:\n  MNC:\n    " + f"{last}: 0.3\n"
    (tmp_path / "old.yaml").write_text(text)
    for merge in (lambda c: c.merge_from_file(str(tmp_path / "old.yaml")),
                  lambda c: c.merge_from_list([old, 0.3])):
        cfg = get_cfg()
        mnc_d2.add_mnc_config(cfg)
        with pytest.raises(KeyError, match=f"{old} was renamed to {new}"):
            merge(cfg)


@pytest.mark.parametrize("opts,message", [
    (["TEST.AUG.ENABLED", "True", "MODEL.ROI_HEADS.NAME", "StandardROIHeads"],
     "TEST.AUG.ENABLED True with MODEL.ROI_HEADS.NAME StandardROIHeads: mnc_d2's test-time"),
    (["MODEL.KEYPOINT_ON", "True"], "MODEL.KEYPOINT_ON True: mnc_d2 predicts building "),
    (["MODEL.MASK_ON", "False"], "MODEL.MASK_ON False with MODEL.ROI_HEADS.NAME MNCROIHeads")])
def test_detectron2_keys_mnc_d2_does_not_act_on_are_refused(tmp_path, opts, message):
    """A Detectron2 setting that nothing here would act on is an error naming it, before a
    model is built (it would otherwise be silently ignored)."""
    from mnc_d2.engine.setup import setup_cfg

    config = str(Path(__file__).resolve().parents[1] / "configs" / "quick_schedules"
                 / "mnc_R_18_FPN_quick_synthetic.yaml")
    base = ["OUTPUT_DIR", str(tmp_path), "INPUT.BAND_STATS", ""]
    assert setup_cfg(config, base, for_training=False).MODEL.MASK_ON  # the plain config loads
    with pytest.raises(ValueError, match=re.escape(message)):
        setup_cfg(config, [*base, *opts], for_training=False)
