"""The miniature world as an evaluation source: specs `miniworld:<split>` (`anchorclip eval --eval_datasets
photo@id=miniworld:test_photo`, the `miniworld` suite) are read here, registered into `anchorclip.evaluation.formats`
like any user's format. The dependency points one way: the world knows the evaluation code, not the reverse.
"""

from __future__ import annotations

import datasets

from anchorclip.evaluation.formats import EvalFormat, SourceInfo, register_eval_format

from .prompts import EVAL_TEMPLATES
from .splits import SPLITS, VERSION, class_names, load_miniworld_split

PREFIX = "miniworld"


def _load_eval_split(name: str, size: int | None = None) -> tuple[datasets.Dataset, SourceInfo]:
    """A miniworld split (generated on first use, `size` rows if given) with its class names and templates."""
    dataset = load_miniworld_split(name, size=size)
    spec = SPLITS[name]
    metadata = {"source": PREFIX, "version": VERSION, "split": name, "group": spec.group}
    if spec.classes is None:  # an image-caption split (retrieval)
        return dataset, SourceInfo(PREFIX, image_column="image", caption_column="caption", metadata=metadata)
    assert spec.label is not None  # set with spec.classes (a labelled split)
    templates = list(EVAL_TEMPLATES[spec.label])
    return dataset, SourceInfo(PREFIX, class_names(name), templates, "image", "label", metadata=metadata)


EVAL_FORMAT = EvalFormat(load=_load_eval_split, num_rows=lambda name: SPLITS[name].size)
# What a command registers without importing the world (it is imported on the first `miniworld:` spec).
EVAL_FORMAT_NAME = f"{__name__}:EVAL_FORMAT"

register_eval_format(PREFIX, EVAL_FORMAT)
