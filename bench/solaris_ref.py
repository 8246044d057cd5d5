"""Load solaris 0.4.0's SpaceNet scorer (``solaris.eval``) for side-by-side comparisons.

The wheel is fetched from PyPI (sha256 pinned) into ``.cache/bench``; only ``solaris/eval`` is
extracted and imported under a bare parent package, because ``solaris/__init__`` imports
TensorFlow-era modules that do not install today. Needs fiona and scipy
(``pip install -r bench/requirements.txt``).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
import zipfile
from pathlib import Path



def _fetch_pinned(*args):
    """tools/pypi_fetch.py's fetch_pinned (the installer's helper). tools/ is not a package, and
    detectron2 installed from its sources adds a top-level "tools" package of its own."""
    path = Path(__file__).resolve().parents[1] / "tools" / "pypi_fetch.py"
    spec = importlib.util.spec_from_file_location("mnc_d2_pypi_fetch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.fetch_pinned(*args)

WHEEL = "solaris-0.4.0-py3-none-any.whl"
WHEEL_SHA256 = "09445946221410ebb2ae807580cf7dea9fe3c9aa3bf045947b61a162d2d3a8df"


def load_solaris_challenges(cache_dir: str | Path = ".cache/bench"):
    """Return the ``solaris.eval.challenges`` module of solaris 0.4.0."""
    cache_dir = Path(cache_dir).resolve()
    root = cache_dir / "solaris-0.4.0"
    if not (root / "solaris" / "eval" / "challenges.py").exists():
        wheel = _fetch_pinned("solaris", WHEEL, WHEEL_SHA256, cache_dir)
        with zipfile.ZipFile(wheel) as zf:
            members = [n for n in zf.namelist() if n.startswith("solaris/eval/")]
            zf.extractall(root, members)
    if "solaris" not in sys.modules:
        package = types.ModuleType("solaris")
        package.__path__ = [str(root / "solaris")]
        sys.modules["solaris"] = package
    return importlib.import_module("solaris.eval.challenges")


def solaris_per_image(truth: str | Path, props: str | Path) -> dict[str, tuple[int, int, int]]:
    """Per-image (TP, FP, FN) of solaris' ``spacenet_buildings_2``, with its exact calls.

    Its per-city aggregation (``float(Series)``) fails on pandas >= 3; the per-image counts it
    sums are what we compare, so we stop before it.
    """
    challenges = load_solaris_challenges(Path(__file__).resolve().parents[1] / ".cache" / "bench")
    evaluator = challenges.Evaluator(ground_truth_vector_file=str(truth))
    evaluator.load_proposal(str(props), conf_field_list=["Confidence"], proposalCSV=True)
    rows = evaluator.eval_iou_spacenet_csv(miniou=0.5, iou_field_prefix="iou_score",
                                           imageIDField="ImageId", min_area=20)
    return {r["imageID"]: (int(r["TruePos"]), int(r["FalsePos"]), int(r["FalseNeg"]))
            for r in rows}


if __name__ == "__main__":  # python -m bench.solaris_ref TRUTH PROPOSALS -> per-image JSON
    import json

    print(json.dumps(solaris_per_image(sys.argv[1], sys.argv[2])))
