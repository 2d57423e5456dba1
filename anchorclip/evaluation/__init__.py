"""Evaluation: sets and their groups, suites of sets as data files, the formats sets come in, metrics.

`EvalSet` and the groups are imported at once; the other public names are loaded on first use.
"""

from __future__ import annotations

from typing import Any

from anchorclip._lazy import load_public, public_dir

from .sets import CLASSIFICATION_GROUPS, GROUPS, EvalSet

_PUBLIC = {
    "EvalFormat": "anchorclip.evaluation.formats",
    "SourceInfo": "anchorclip.evaluation.formats",
    "load_eval_dataset": "anchorclip.evaluation.formats",
    "register_eval_format": "anchorclip.evaluation.formats",
    "SuiteEntry": "anchorclip.evaluation.suites",
    "list_suites": "anchorclip.evaluation.suites",
    "load_suite": "anchorclip.evaluation.suites",
    "load_suite_sets": "anchorclip.evaluation.suites",
    "ZeroShotScorer": "anchorclip.evaluation.zero_shot",
}

__all__ = [
    "CLASSIFICATION_GROUPS",
    "GROUPS",
    "EvalFormat",
    "EvalSet",
    "SourceInfo",
    "SuiteEntry",
    "ZeroShotScorer",
    "list_suites",
    "load_eval_dataset",
    "load_suite",
    "load_suite_sets",
    "register_eval_format",
]


def __getattr__(name: str) -> Any:
    return load_public(__name__, _PUBLIC, name)


def __dir__() -> list[str]:
    return public_dir(__name__, _PUBLIC)
