"""Detectron2's extension convention: ``import mnc_d2`` is all a user does before using
Detectron2, while the torch-free tools never load torch. Each case runs in a fresh interpreter
(this process has long imported everything)."""

from __future__ import annotations

import subprocess
import sys

import pytest


def run_python(code: str, cwd=None) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, cwd=cwd)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip()


def test_import_mnc_d2_then_any_detectron2_import_works():
    code = """
import sys
import mnc_d2
assert "torch" not in sys.modules and "detectron2" not in sys.modules, "import mnc_d2 is heavy"
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T  # v0.6 reads Image.LINEAR at import
import numpy as np
assert T.ResizeTransform(4, 6, 2, 3).apply_image(np.zeros((4, 6, 3), np.uint8)).shape == (2, 3, 3)
names = DatasetCatalog.list()
assert "spacenet2_vegas_train" in names and "spacenet4_atlanta_nadir_val" in names, names
assert MetadataCatalog.get("spacenet2_all_val").version == "spacenet2"
from detectron2.modeling import ROI_HEADS_REGISTRY
assert ROI_HEADS_REGISTRY.get("MNCROIHeads").__module__ == "mnc_d2.modeling.mnc_roi_heads"
import detectron2.engine.defaults as d
assert getattr(d.create_ddp_model, "_mnc_d2_cpu_ok", False)
import detectron2.model_zoo, detectron2.evaluation, detectron2.utils.collect_env
print("ok")
"""
    assert run_python(code) == "ok"


def test_detectron2_imported_before_mnc_d2_still_gets_the_registrations():
    code = """
import detectron2  # the package only (v0.6's submodules need the shims first)
import mnc_d2
from detectron2.data import DatasetCatalog
from detectron2.modeling import ROI_HEADS_REGISTRY
assert "spacenet1_rio_train" in DatasetCatalog.list()
assert ROI_HEADS_REGISTRY.get("MNCROIHeads") is not None
print("ok")
"""
    assert run_python(code) == "ok"


def test_a_failed_setup_step_is_tried_again():
    """A registration that raised once runs again on the next import or setup() call."""
    code = """
import mnc_d2
from mnc_d2 import compat
calls = []
def flaky():
    calls.append(1)
    if len(calls) == 1:
        raise RuntimeError("first try fails")
compat._PENDING["detectron2.data"] = (flaky,) + compat._PENDING["detectron2.data"]
try:
    mnc_d2.setup()
except RuntimeError:
    pass
else:
    raise AssertionError("the failure was swallowed")
mnc_d2.setup()
from detectron2.data import DatasetCatalog
assert len(calls) == 2 and "spacenet2_paris_val" in DatasetCatalog.list()
print("ok")
"""
    assert run_python(code) == "ok"


@pytest.mark.parametrize("tool", ["score.py", "merge_footprints.py", "view.py"])
def test_torch_free_tools_import_neither_torch_nor_detectron2(repo_root, tool):
    out = subprocess.run([sys.executable, "-X", "importtime", str(repo_root / "tools" / tool),
                          "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in out.stderr.splitlines()
                if line.startswith("import time:")}
    assert "mnc_d2" in imported  # the import log is there
    assert "torch" not in imported and "detectron2" not in imported


def test_import_mnc_d2_prints_no_warnings(repo_root):
    code = ("import mnc_d2; mnc_d2.setup(); import mnc_d2.modeling, mnc_d2.engine.trainer, "
            "mnc_d2.inference.predictor")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, cwd=repo_root)
    assert out.returncode == 0 and out.stderr == "", out.stderr[-3000:]


def test_scoring_imports_no_pandas(repo_root, tmp_path):
    """tools/score.py reads CSVs with pyarrow compute kernels; pyarrow's numpy and scalar
    conversions would pull in pandas (a quarter of a second at start-up), so the scorer avoids
    them (mnc_d2/utils/arrow_numpy.py)."""
    truth, props = tmp_path / "t.csv", tmp_path / "p.csv"
    square = '"POLYGON ((0 0 0,30 0 0,30 30 0,0 30 0,0 0 0))"'
    truth.write_text(f"ImageId,BuildingId,PolygonWKT_Pix,PolygonWKT_Geo\nAOI_2_Vegas_img1,0,"
                     f"{square},{square}\n")
    props.write_text(f"ImageId,BuildingId,PolygonWKT_Pix,Confidence\nAOI_2_Vegas_img1,0,"
                     f"{square},0.9\n")
    out = subprocess.run([sys.executable, "-X", "importtime", str(repo_root / "tools" / "score.py"),
                          "--truth", str(truth), "--proposals", str(props), "--json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert '"mean_city_f1": 1.0' in out.stdout
    imported = {line.split("|")[-1].strip().split(".")[0] for line in out.stderr.splitlines()
                if line.startswith("import time:")}
    assert "pyarrow" in imported and "pandas" not in imported
