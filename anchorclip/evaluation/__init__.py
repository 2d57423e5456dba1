"""Evaluation: sets and their groups, suites of sets as data files, the formats sets come in, metrics."""

from .sets import CLASSIFICATION_GROUPS, GROUPS, EvalSet

__all__ = ["CLASSIFICATION_GROUPS", "GROUPS", "EvalSet"]
