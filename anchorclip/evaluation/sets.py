"""Evaluation sets and their groups: `id`, `domain_shift`, `zero_shot` (classification) and `retrieval`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import datasets

#: The groups an `EvalSet` belongs to; the results table averages each group's sets. `corruption` /
#: `corruption_val`: ImageNet-C style corrupted copies (`anchorclip.evaluation.corruption_sets`).
GROUPS = ("id", "domain_shift", "zero_shot", "retrieval", "corruption", "corruption_val")
#: The groups of classification sets (all but `retrieval`).
CLASSIFICATION_GROUPS = ("id", "domain_shift", "zero_shot", "corruption", "corruption_val")


@dataclass
class EvalSet:
    """A dataset evaluated zero-shot: a labelled image set (classification) or an image-caption set (retrieval).

    Classification: `class_names` default to the names of the label column's `ClassLabel` feature; `templates`
    default to the trainer's evaluation templates. `class_subset` scores a set whose classes are a subset of a
    larger label space (ImageNet-A/-R, ObjectNet against ImageNet's 1,000 classes): `class_names` are then the
    parent space's names and the set's label `i` is scored by the parent class `class_subset[i]`, or by the
    maximum over the parent classes `class_subset[i]` lists, with the logits of all other classes left out.

    Retrieval (`group="retrieval"`): each row has an image and one caption or a list of captions
    (`caption_column`); image->text and text->image recall@{1,5,10} are measured over the whole set.
    """

    dataset: datasets.Dataset
    group: str = "id"
    class_names: list[str] | None = None
    templates: list[str] | None = None
    image_column: str | None = None
    label_column: str | None = None
    caption_column: str | None = None
    class_subset: list[int | list[int]] | None = None
    metadata: dict = field(default_factory=dict)
    # `(image, row_index, size) -> image` applied to each decoded image before preprocessing (corruptions)
    image_transform: object = None

    def __post_init__(self):
        if self.group not in GROUPS:
            raise ValueError(f"EvalSet group must be one of {GROUPS}, got {self.group!r}.")
        if self.class_subset is not None:
            if not self.class_subset:
                raise ValueError("EvalSet class_subset is empty: it maps each of the set's labels to parent classes.")
            self.class_subset = [list(c) if isinstance(c, (list, tuple)) else [int(c)] for c in self.class_subset]
            if self.class_names is not None:
                bad = [i for group in self.class_subset for i in group if not 0 <= i < len(self.class_names)]
                if bad:
                    raise ValueError(
                        f"EvalSet class_subset names parent classes {bad[:5]} outside the "
                        f"{len(self.class_names)} class names."
                    )

    @property
    def is_retrieval(self) -> bool:
        return self.group == "retrieval"
