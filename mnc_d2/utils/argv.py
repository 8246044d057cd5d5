"""Command-line helpers shared by the tools that take KEY VALUE config overrides."""

from __future__ import annotations

import os
import re

_CONFIG_KEY = re.compile(r"[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+")


def split_config_overrides(paths: list[str] | None, opts: list[str]) -> tuple:
    """``--input a.tif MODEL.WEIGHTS w.pth`` (also export's ``--check-images``): argparse gives
    a list option every word up to the next option, the KEY VALUE overrides included. The
    first word shaped like a config key (``MODEL.WEIGHTS``) that is not a file starts the
    overrides again. Returns (paths or None, opts)."""
    if not paths:
        return paths, opts
    for i, word in enumerate(paths):
        if _CONFIG_KEY.fullmatch(word) and not os.path.isfile(word):
            return paths[:i] or None, paths[i:] + list(opts)
    return paths, opts
