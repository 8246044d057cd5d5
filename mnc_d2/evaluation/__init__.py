"""SpaceNet scoring: the metric and its rule sets (torch-free), the threshold sweep and
calibration, the Detectron2 evaluator (:mod:`.spacenet_evaluation`) and score overlays.
Polygons come from :mod:`mnc_d2.geometry`, CSV and GeoJSON files from :mod:`mnc_d2.formats`."""

from .spacenet_metric import ScoreResult, SpaceNetCSVError, read_proposal_csv, read_truth_csv, score, score_csv

__all__ = ["ScoreResult", "SpaceNetCSVError", "read_proposal_csv", "read_truth_csv", "score",
           "score_csv"]
