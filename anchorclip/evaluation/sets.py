"""Zero-shot evaluation sets and their groups (`id`, `domain_shift`, `zero_shot`)."""

from __future__ import annotations

from dataclasses import dataclass, field

GROUPS = ("id", "domain_shift", "zero_shot")


@dataclass
class EvalSet:
    """A labelled image dataset evaluated zero-shot with a head built from its class names and templates.

    `class_names` default to the names of the label column's `ClassLabel` feature; `templates` default to
    the trainer's evaluation templates.
    """

    dataset: object
    group: str = "id"
    class_names: list[str] | None = None
    templates: list[str] | None = None
    image_column: str | None = None
    label_column: str | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.group not in GROUPS:
            raise ValueError(f"EvalSet group must be one of {GROUPS}, got {self.group!r}.")
