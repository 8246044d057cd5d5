"""Where bench_accuracy.py keeps what it generates and trains (under its ``--work``), for every
script that reads it: one definition of the folder names instead of one per script.

    <work>/train_seed0_60_hard/spacenet/...   data_dir(work, "train", 0, 60, "hard")
    <work>/test_seed1_30/spacenet/...         data_dir(work, "test", 1, 30, "default")
    <work>/runs/mnc5_60img_600it_hard/seed2   run_dir(work / "runs", "mnc5", "60img_600it",
                                                      "hard", 2)
"""

from __future__ import annotations

from pathlib import Path

SPLITS = ("train", "test")


def setting_suffix(setting: str) -> str:
    """The folder-name suffix of a data setting's data, runs and reports ("" for default)."""
    return "" if setting == "default" else f"_{setting}"


def data_name(split: str, seed: int, images: int, setting: str) -> str:
    """The folder name of generated data: ``split`` ("train" or "test") drawn with generator
    ``seed``, ``images`` tiles per city, in data ``setting``."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: expected one of {SPLITS}")
    return f"{split}_seed{seed}_{images}{setting_suffix(setting)}"


def data_dir(work: Path, split: str, seed: int, images: int, setting: str) -> Path:
    """``work / data_name(...)``: the folder whose ``spacenet/`` holds the SpaceNet layout."""
    return Path(work) / data_name(split, seed, images, setting)


def run_dir(runs: Path, variant: str, tag: str, setting: str, seed: int) -> Path:
    """A trained run: ``runs/<variant>_<tag>[_<setting>]/seed<N>`` (``tag`` e.g.
    "60img_2400it", without the setting's suffix)."""
    return Path(runs) / f"{variant}_{tag}{setting_suffix(setting)}" / f"seed{seed}"
