#!/usr/bin/env python
"""Install Detectron2 into the current Python environment.

Detectron2 is not published on PyPI. Two sources are supported:

* ``DETECTRON2_SOURCE`` names a git URL (``git+https://...``) or a local checkout: upstream
  detectron2 is pip-installed from it, C++/CUDA ops included. This is what users with internet
  access (and a compiler, and CUDA for GPU ops) do.
* Otherwise the upstream v0.6 Python sources published on PyPI as ``pb1-detectron2==0.6`` are
  downloaded (sha256 pinned), turned into a pure-Python wheel *without* the C++ ops, and
  installed. The C++ ops only serve rotated boxes, deformable convolution and a faster COCO
  evaluation; MNC needs none of them. ``mnc_d2.compat`` supplies the few shims v0.6 needs on
  current torch / numpy / Pillow.

No file of the sdist is edited: its ``setup.py`` is executed with a wrapped ``setuptools.setup``
that drops the extension module and fixes ``package_data`` so the model-zoo configs ship.

The script is idempotent: when the requested detectron2 is already installed it returns at once.
Dependencies are *not* installed here (``--no-deps``): the Makefile installs them from the
pinned constraints file.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

logger = logging.getLogger("install_detectron2")

SDIST_NAME = "pb1-detectron2"
SDIST_VERSION = "0.6"
SDIST_FILE = f"{SDIST_NAME}-{SDIST_VERSION}.tar.gz"
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
# Version suffix of the wheel we build from the sdist; lets us recognise our own build.
PUREPY_SUFFIX = "+purepy"

# The sdist's setup.py pins 2021-era packages (black==21.4b2, future, pydot); the runtime needs
# only these, and the Makefile installs them with exact pins from requirements/constraints.txt.
PUREPY_REQUIRES = [
    "Pillow>=7.1",
    "matplotlib",
    "pycocotools>=2.0.2",
    "termcolor>=1.1",
    "yacs>=0.1.8",
    "tabulate",
    "cloudpickle",
    "tqdm>4.29.0",
    "tensorboard",
    "fvcore>=0.1.5,<0.1.6",
    "iopath>=0.1.7",
    "omegaconf>=2.1",
    "hydra-core>=1.1",
]

# Runs the sdist's own setup.py with setuptools.setup wrapped (see module docstring).
_SETUP_DRIVER = r"""
import glob, os, runpy, sys
import setuptools

requires = {requires!r}
_orig_setup = setuptools.setup

def _purepy_setup(**kw):
    kw.pop("ext_modules", None)
    kw.pop("cmdclass", None)
    configs = glob.glob("detectron2/model_zoo/configs/**/*.yaml", recursive=True)
    configs += glob.glob("detectron2/model_zoo/configs/**/*.py", recursive=True)
    kw["package_data"] = {{"detectron2.model_zoo": [os.path.relpath(p, "detectron2/model_zoo")
                                                     for p in configs]}}
    kw["install_requires"] = requires
    kw.pop("extras_require", None)
    # find_packages() also finds the sdist's tools/ and would install it as a top-level "tools".
    kw["packages"] = [p for p in kw.get("packages", []) if p.split(".")[0] == "detectron2"]
    return _orig_setup(**kw)

setuptools.setup = _purepy_setup
sys.argv = ["setup.py", "bdist_wheel", "--dist-dir", {dist_dir!r}]
runpy.run_path("setup.py", run_name="__main__")
"""


def _installed_detectron2() -> tuple[str | None, str | None]:
    """Return (distribution name, version) of the installed detectron2, or (None, None)."""
    from importlib import metadata

    for dist in ("detectron2", SDIST_NAME):
        try:
            return dist, metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None, None


def _pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    logger.info("running: %s", " ".join(cmd))
    subprocess.run(cmd, check=True)


def _load_pypi_helper():
    """Load tools/pypi_fetch.py by path (it lives beside this script, outside the package)."""
    path = Path(__file__).resolve().parent / "pypi_fetch.py"
    spec = importlib.util.spec_from_file_location("_mnc_d2_pypi", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_purepy_wheel(sdist: Path, dist_dir: Path) -> Path:
    """Build the pure-Python wheel from the sdist; returns the wheel path."""
    dist_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        src = Path(tmp) / f"{SDIST_NAME}-{SDIST_VERSION}"
        driver = _SETUP_DRIVER.format(requires=PUREPY_REQUIRES, dist_dir=str(dist_dir))
        env = dict(os.environ, D2_VERSION_SUFFIX=PUREPY_SUFFIX)
        subprocess.run(
            [sys.executable, "-c", driver], cwd=src, env=env, check=True, stdout=subprocess.DEVNULL
        )
    wheels = sorted(dist_dir.glob("pb1_detectron2-*purepy*.whl"))
    if not wheels:
        raise RuntimeError(f"building the detectron2 wheel left no wheel in {dist_dir}")
    return wheels[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cache-dir",
        default=os.environ.get("MNC_D2_CACHE", ".cache"),
        help="where the sdist and the built wheel are kept (default: ./.cache or $MNC_D2_CACHE)",
    )
    parser.add_argument("--force", action="store_true", help="reinstall even if present")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[install_detectron2] %(message)s")

    source = os.environ.get("DETECTRON2_SOURCE", "").strip()
    dist, version = _installed_detectron2()
    if source:
        if dist == "detectron2" and not args.force:
            logger.info("detectron2 %s already installed (DETECTRON2_SOURCE=%s)", version, source)
            return 0
        # Upstream compiles its C++/CUDA ops against the torch already installed.
        _pip("install", "--no-build-isolation", source)
        return 0
    if dist is not None and not args.force:
        logger.info("%s %s already installed; nothing to do", dist, version)
        return 0
    cache = Path(args.cache_dir).resolve() / "detectron2"
    sdist = _load_pypi_helper().fetch_pinned(SDIST_NAME, SDIST_FILE, SDIST_SHA256, cache)
    wheel = build_purepy_wheel(sdist, cache / "wheels")
    _pip("install", "--no-deps", "--force-reinstall", str(wheel))
    return 0


if __name__ == "__main__":
    sys.exit(main())
