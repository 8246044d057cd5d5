#!/usr/bin/env python
"""Join runs of one accuracy report into another of the same benchmark, reproducibly.

A control retrained in a work folder of its own, or runs trained on another machine, join a
committed report under a key of their own (e.g. ``..._retrained``) so the committed runs of the
same variant stay. Every entry of the base report stays as it was; the joined runs are copied
unchanged; the summary and ``model_seeds`` are recomputed with ``bench.bench_accuracy``'s own
``summarize``. Nothing is overwritten unless ``--replace`` says so, and the two reports must be
of the same benchmark (setting, test setting, schedule, training tiles, test options).

    python -m bench.merge_reports bench/results/accuracy_default_2400it.json \
        --from .cache/bench/accuracy_control/report_60img_2400it.json \
        --variants mnc5_native_small_anchors_logdn \
        --as mnc5_native_small_anchors_logdn_retrained \
        --output bench/results/accuracy_default_2400it.json

Writes the joined report to ``--output`` (atomically; it may be the base itself) or, without it,
prints it on stdout.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

# what makes two reports the same benchmark
SAME_BENCHMARK = ("setting", "test_setting", "iterations", "train_images_per_city",
                  "test_images_per_city", "test_opts")


def merge_runs(base: dict, other: dict, variants, rename: str | None = None, seeds=None,
               replace: bool = False, base_name: str = "base", other_name: str = "other") -> dict:
    """A copy of report ``base`` with the runs of ``variants`` from report ``other`` added.

    ``rename``: the key the runs get in the result (one variant only); ``seeds``: only these
    model seeds (default: all of ``other``'s). A run already in ``base`` under the same key and
    seed raises unless ``replace``. Raises ``ValueError`` naming the report and key when the
    reports are not of the same benchmark or a variant/seed is missing from ``other``.
    """
    from bench.bench_accuracy import summarize  # heavy (torch, detectron2): only when merging

    for key in SAME_BENCHMARK:
        if base.get(key) != other.get(key):
            raise ValueError(f"{other_name}: its {key} is {other.get(key)!r}, {base_name}'s "
                             f"{base.get(key)!r}; join runs of the same benchmark only")
    variants = list(variants)
    if rename is not None and len(variants) != 1:
        raise ValueError(f"--as {rename!r} renames one variant; {len(variants)} were given")
    out = copy.deepcopy(base)
    runs = out.setdefault("runs", {})
    for name in variants:
        if name not in other.get("runs", {}):
            raise ValueError(f"{other_name} has no runs of {name!r}; it has "
                             f"{sorted(other.get('runs', {}))}")
        have = other["runs"][name]
        wanted = [str(s) for s in seeds] if seeds is not None else list(have)
        missing = [s for s in wanted if s not in have]
        if missing:
            raise ValueError(f"{other_name}: {name!r} has no run of seed(s) {missing}; it has "
                             f"{sorted(have)}")
        key = rename or name
        target = runs.setdefault(key, {})
        clash = [s for s in wanted if s in target]
        if clash and not replace:
            raise ValueError(f"{base_name} already has {key!r} seed(s) {clash}; pass --replace "
                             "to replace them or --as to join them under another key")
        for s in wanted:
            target[s] = copy.deepcopy(have[s])
        logger.info("joined %s seeds %s as %s", name, wanted, key)
    out["summary"] = summarize(runs)
    out["model_seeds"] = sorted({int(s) for by_seed in runs.values() for s in by_seed})
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", help="the report the runs join (e.g. a committed one)")
    parser.add_argument("--from", dest="other", required=True, help="the report they come from")
    parser.add_argument("--variants", nargs="+", required=True)
    parser.add_argument("--as", dest="rename", help="their key in the result (one variant)")
    parser.add_argument("--seeds", type=int, nargs="+", help="only these model seeds")
    parser.add_argument("--replace", action="store_true",
                        help="replace runs the base already has under the same key and seed")
    parser.add_argument("--output", help="write here (atomically) instead of stdout")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
    reports = {}
    for path in (args.base, args.other):
        try:
            reports[path] = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise SystemExit(f"{path}: cannot read it as a report ({e})")
    try:
        merged = merge_runs(reports[args.base], reports[args.other], args.variants, args.rename,
                            args.seeds, args.replace, args.base, args.other)
    except ValueError as e:
        raise SystemExit(str(e))
    text = json.dumps(merged, indent=2)
    if args.output:
        from mnc_d2.utils.atomic import atomic_write

        with atomic_write(args.output) as f:
            f.write(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
