"""SpaceNet scoring: the metric, polygonisation, writers and the Detectron2 evaluator."""

from .spacenet_metric import ScoreResult, SpaceNetCSVError, read_proposal_csv, read_truth_csv, score, score_csv

__all__ = ["ScoreResult", "SpaceNetCSVError", "read_proposal_csv", "read_truth_csv", "score",
           "score_csv"]
