"""Evaluation: sets and their groups, suites of sets as data files, the formats sets come in, metrics."""

from .sets import GROUPS, EvalSet

__all__ = ["GROUPS", "EvalSet"]
