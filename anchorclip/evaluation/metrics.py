"""The suite's metrics as `evaluate` modules, combined with `evaluate.combine`.

Every metric reads the same two things per example: the model's *ranking* (ids best first, truncated to the
largest k asked for) and the *positives* (the ids that count as a hit). Classification: the ranking is over
classes and the one positive is the label (top-k accuracy, mean per-class recall as CLIP_benchmark reports
it). Retrieval: image->text ranks captions with an image's own captions as positives, text->image ranks images
with a caption's one image as positive (recall@k as CLIP_benchmark and Flickr30k/COCO papers report it).
Defined here, not loaded from the Hub, so that evaluation runs offline.
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

_FEATURES = datasets.Features(
    {
        "predictions": datasets.Sequence(datasets.Value("int64")),
        "references": datasets.Sequence(datasets.Value("int64")),
    }
)


class RecallAtK(evaluate.Metric):
    """Fraction of examples with a positive among the first `k` ranked ids (top-k accuracy for one positive)."""

    def __init__(self, k: int, key: str | None = None, **kwargs):
        self.k, self.key = k, key or f"recall@{k}"
        super().__init__(config_name=self.key, keep_in_memory=True, **kwargs)

    def _info(self):
        return evaluate.MetricInfo(
            description=f"Share of examples whose first {self.k} ranked ids contain a positive.",
            citation="",
            features=_FEATURES,
        )

    def _compute(self, predictions, references):
        hits = [bool(set(ranked[: self.k]) & set(positives)) for ranked, positives in zip(predictions, references)]
        return {self.key: float(np.mean(hits)) if hits else float("nan")}


class MeanPerClassRecall(evaluate.Metric):
    """Top-1 recall averaged over the classes present in the references (CLIP_benchmark's `mean_per_class_recall`,
    scikit-learn's balanced accuracy): every class weighs the same however many images it has."""

    def __init__(self, **kwargs):
        super().__init__(keep_in_memory=True, **kwargs)

    def _info(self):
        return evaluate.MetricInfo(
            description="Top-1 recall averaged over the classes present in the references.",
            citation="",
            features=_FEATURES,
        )

    def _compute(self, predictions, references):
        labels = np.array([positives[0] for positives in references])
        correct = np.array([ranked[0] == positives[0] for ranked, positives in zip(predictions, references)])
        if not len(labels):
            return {"mean_per_class_recall": float("nan")}
        return {"mean_per_class_recall": float(np.mean([correct[labels == c].mean() for c in np.unique(labels)]))}


def classification_metrics(num_classes: int) -> evaluate.CombinedEvaluations:
    """top1, top5 (only with more than 5 classes: otherwise it is 1 by construction), mean_per_class_recall."""
    modules = {"top1": RecallAtK(1, "top1"), "mean_per_class_recall": MeanPerClassRecall()}
    if num_classes > 5:
        modules["top5"] = RecallAtK(5, "top5")
    return evaluate.combine(modules)


def retrieval_metrics(direction: str, ks: tuple[int, ...] = (1, 5, 10)) -> evaluate.CombinedEvaluations:
    """`{direction}_recall@k` for each k; direction is `image2text` or `text2image`."""
    return evaluate.combine({f"{direction}_r{k}": RecallAtK(k, f"{direction}_recall@{k}") for k in ks})
