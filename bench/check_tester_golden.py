#!/usr/bin/env python
"""Run the golden cases of ``tests/test_spacenet_tester_rules.py`` through the Java tester v2.0.

Prints one JSON object: per case, the tester's per-image TP/FP/FN and mean city F1 next to
mnc_d2's, and whether they agree. Exit status 1 when any case disagrees.

    python -m bench.check_tester_golden [--tester path/to/visualizer-2.0.zip]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from mnc_d2.evaluation.spacenet_metric import score_csv
from tests.test_spacenet_tester_rules import CASES, write_case

from .java_tester import find_jar, run_tester


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tester", help="visualizer-2.0.zip or visualizer.jar")
    args = parser.parse_args()
    jar = find_jar(args.tester)
    if jar is None:
        print(json.dumps({"error": "Java tester not found (needs java and the zip; see "
                                   "bench/java_tester.py)"}))
        return 2
    report, ok = {}, True
    for name, (truth_lines, prop_lines, expected, mean_f1) in sorted(CASES.items()):
        with tempfile.TemporaryDirectory() as tmp:
            truth, props = write_case(Path(tmp), truth_lines, prop_lines)
            java = run_tester(jar, truth, props)
            ours = score_csv(truth, props)
        java_counts = {k: v for k, v in java["per_image"].items() if v is not None}
        our_counts = {r.ImageId: (int(r.tp), int(r.fp), int(r.fn))
                      for r in ours.per_image.itertuples() if r.scored}
        same = java_counts == our_counts and abs((java["f1"] or 0.0) - ours.mean_city_f1) < 1e-6
        ok &= same
        report[name] = {"tester": {"per_image": java_counts, "mean_city_f1": java["f1"]},
                        "mnc_d2": {"per_image": our_counts, "mean_city_f1": ours.mean_city_f1},
                        "agree": same}
    print(json.dumps({"all_agree": ok, "cases": report}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
