"""Shared fixtures. Importing mnc_d2 first applies the compatibility shims."""

from pathlib import Path

import pytest

import mnc_d2

mnc_d2.setup()  # shims before any detectron2 submodule import, registrations

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_SAMPLE = REPO_ROOT.parent / "shared" / "data" / "spacenet_sample"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def spacenet_sample() -> Path:
    """The real SpaceNet tile shipped in ../shared/data (skipped, with the reason, if absent)."""
    if not (SHARED_SAMPLE / "sample_geotiff.tif").exists():
        pytest.skip(f"real SpaceNet sample not found at {SHARED_SAMPLE} (../shared/data is absent)")
    return SHARED_SAMPLE
