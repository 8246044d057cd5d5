"""Human-readable tables for SpaceNet scores.

``tabulate`` is imported when a table is made: ``tools/score.py --json`` never pays for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .spacenet_metric import ScoreResult


def score_table(result: ScoreResult) -> str:
    """Per-city and overall TP/FP/FN, precision, recall and F1 as a text table."""
    from tabulate import tabulate

    rows = []
    for name, counts in sorted(result.cities.items()):
        d = counts.as_dict()
        rows.append([name, d["tp"], d["fp"], d["fn"], d["precision"], d["recall"], d["f1"]])
    o = result.overall.as_dict()
    rows.append(["overall (global sums)", o["tp"], o["fp"], o["fn"], o["precision"],
                 o["recall"], o["f1"]])
    group = {"city": "city", "nadir": "nadir segment", "none": "group"}.get(result.group_by,
                                                                           result.group_by)
    table = tabulate(rows, headers=[group, "TP", "FP", "FN", "precision", "recall", "F1"],
                     floatfmt=".4f")
    return (f"{table}\n\nmean {group} F1 ({result.rules} rules, grouped by "
            f"{result.group_by}): {result.mean_city_f1:.4f}")


def polygon_table(summary: dict) -> str:
    """polygon_metrics.summarize's output (overall first, then per group) as a text table."""
    from tabulate import tabulate

    columns = ["pairs", "iou", "ciou", "n_ratio", "polis", "mta", "vertex_error", "boundary_f",
               "hole_recall"]
    headers = ["group", "pairs", "mean IoU", "C-IoU", "N-ratio", "PoLiS m", "MTA deg",
               "corner err", "boundary F", "hole recall"]
    rows = [[name, *(values[c] for c in columns)] for name, values in summary.items()]
    return ("shape of the matched pairs (polygon metrics):\n"
            + tabulate(rows, headers=headers, floatfmt=".3f"))
