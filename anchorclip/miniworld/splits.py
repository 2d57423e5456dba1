"""The miniworld splits as Hugging Face datasets, generated in parallel and cached on disk.

Each split is a `SplitSpec`: a seed, a default size, which shapes and styles it draws from, and for
labelled splits which attribute is the label. Splits use different seeds, so they are disjoint samples
of the world (up to the chance that two random draws render the same pixels).

Cache: `$ANCHORCLIP_CACHE/miniworld/<VERSION>/<split>-n<size>-s<seed>/` (default `~/.cache/anchorclip`),
written by `Dataset.save_to_disk` into a temporary folder and renamed, so a killed run leaves no half split.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING

import datasets

from .attributes import ATTRIBUTES, BACKGROUNDS, COLOUR_NAMES, SEEN_SHAPES, SHAPES, STYLES, UNSEEN_SHAPES
from .prompts import EVAL_TEMPLATES
from .world import make_example

if TYPE_CHECKING:
    from anchorclip.evaluation import EvalSet

#: Bumped when rendering, captions or split definitions change: old caches are then simply not found.
VERSION = "v1"


@dataclass(frozen=True)
class SplitSpec:
    name: str
    seed: int
    size: int
    shapes: tuple[str, ...] = SHAPES
    styles: tuple[str, ...] = STYLES
    label: str | None = None  # the attribute that becomes the `label` ClassLabel column
    classes: tuple[str, ...] | None = None  # its class names (the label's ClassLabel names)
    group: str | None = None  # evaluation group (`anchorclip.evaluation.GROUPS`) for test splits


def _test(name, seed, group, label, classes, shapes=SEEN_SHAPES, styles=("photo",)):
    return SplitSpec(f"test_{name}", seed, 1000, shapes, styles, label, classes, group)


#: Every split of the world by name, with its seed, size, shapes, styles and label.
SPLITS = {
    spec.name: spec
    for spec in (
        SplitSpec("pretrain", 1001, 60_000),
        SplitSpec("pool", 1002, 20_000),
        SplitSpec("finetune", 1003, 8_000, SEEN_SHAPES, ("photo",), "shape", SEEN_SHAPES),
        SplitSpec("finetune_val", 1004, 2_000, SEEN_SHAPES, ("photo",), "shape", SEEN_SHAPES),
        _test("photo", 2001, "id", "shape", SEEN_SHAPES),
        _test("sketch", 2002, "domain_shift", "shape", SEEN_SHAPES, styles=("sketch",)),
        _test("painting", 2003, "domain_shift", "shape", SEEN_SHAPES, styles=("painting",)),
        _test("pixel_art", 2004, "domain_shift", "shape", SEEN_SHAPES, styles=("pixel art",)),
        _test("unseen_shapes", 2005, "zero_shot", "shape", UNSEEN_SHAPES, shapes=UNSEEN_SHAPES),
        _test("colour", 2006, "zero_shot", "colour", COLOUR_NAMES, shapes=SHAPES),
        _test("background", 2007, "zero_shot", "background", BACKGROUNDS, shapes=SHAPES),
        # Image-caption retrieval over a held-out sample drawn like the pool (every shape and style): where a
        # finetune keeps, or loses, CLIP's text-image feature space beyond the class names.
        SplitSpec("test_retrieval", 2008, 1000, group="retrieval"),
    )
}
#: The test splits (those with an evaluation group), in table order.
EVAL_SPLITS = tuple(name for name, spec in SPLITS.items() if spec.group is not None)


def cache_root() -> str:
    """`$ANCHORCLIP_CACHE/miniworld/<VERSION>`, defaulting to `~/.cache/anchorclip/miniworld/<VERSION>`."""
    base = os.environ.get("ANCHORCLIP_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "anchorclip")
    return os.path.join(base, "miniworld", VERSION)


def _split_features(spec: SplitSpec) -> datasets.Features:
    features = {"image": datasets.Image(), "caption": datasets.Value("string")}
    features.update({name: datasets.ClassLabel(names=list(values)) for name, values in ATTRIBUTES.items()})
    if spec.label is not None and spec.classes is not None:  # set together (a labelled split)
        features["label"] = datasets.ClassLabel(names=list(spec.classes))
    features["index"] = datasets.Value("int32")
    return datasets.Features(features)


def _png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _generate(spec: SplitSpec, seed: int, ranges: list[tuple[int, int]]):
    # `ranges` is this worker's share of the index space; `from_generator` shards the list across processes.
    for start, stop in ranges:
        for index in range(start, stop):
            example = make_example(seed, index, spec.shapes, spec.styles)
            example["image"] = {"bytes": _png_bytes(example["image"]), "path": None}
            if spec.label is not None and spec.classes is not None:  # set together (a labelled split)
                example["label"] = spec.classes.index(example[spec.label])
            example["index"] = index
            yield example


def _generate_split(spec: SplitSpec, size: int, seed: int, num_proc: int | None = None, cache_dir=None):
    """Render `size` examples of `spec` with `seed` into a `datasets.Dataset` (rows in index order)."""
    chunk = 1000
    ranges = [(start, min(start + chunk, size)) for start in range(0, size, chunk)]
    num_proc = num_proc if num_proc is not None else min(len(ranges), os.cpu_count() or 1)
    return datasets.Dataset.from_generator(
        _generate,
        gen_kwargs={"spec": spec, "seed": seed, "ranges": ranges},
        features=_split_features(spec),
        num_proc=num_proc if num_proc > 1 else None,
        cache_dir=cache_dir,
    )


def load_miniworld_split(
    name: str, size: int | None = None, seed: int | None = None, num_proc: int | None = None
) -> datasets.Dataset:
    """A miniworld split (see `SPLITS`), generated on first use and then read from the disk cache.

    `size` and `seed` default to the split's own; a different seed gives another sample of the same split.
    """
    if name not in SPLITS:
        raise ValueError(f"Unknown miniworld split {name!r}; choose one of {list(SPLITS)}.")
    spec = SPLITS[name]
    size = spec.size if size is None else int(size)
    seed = spec.seed if seed is None else int(seed)
    path = os.path.join(cache_root(), f"{name}-n{size}-s{seed}")
    if not os.path.isdir(path):
        os.makedirs(cache_root(), exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache_root(), prefix=".tmp-") as scratch:
            dataset = _generate_split(spec, size, seed, num_proc, cache_dir=os.path.join(scratch, "arrow"))
            staging = os.path.join(scratch, "saved")
            dataset.save_to_disk(staging)
            del dataset
            try:
                os.rename(staging, path)
            except OSError:  # another process finished the same split first; keep theirs
                shutil.rmtree(staging, ignore_errors=True)
    return datasets.load_from_disk(path)


def class_names(name: str) -> list[str]:
    """The class names of a labelled split's `label` column (the same list for every split of one task)."""
    spec = SPLITS[name]
    if spec.classes is None:
        raise ValueError(f"Split {name!r} has no label column.")
    return list(spec.classes)


def miniworld_eval_sets(
    size_per_set: int | None = None, seed: int | None = None, num_proc: int | None = None
) -> dict[str, EvalSet]:
    """The evaluation sets as `anchorclip.evaluation.EvalSet`s, keyed by split name (`test_photo`, ...).

    Groups: `test_photo` is `id`; `test_sketch`, `test_painting`, `test_pixel_art` are `domain_shift`;
    `test_unseen_shapes`, `test_colour`, `test_background` are `zero_shot`; `test_retrieval` (image-caption
    pairs drawn like the pool) is `retrieval`. `seed` (if given) is added to
    each set's own seed, to draw a second, independent evaluation sample.
    """
    from anchorclip.evaluation import EvalSet

    eval_sets = {}
    for name in EVAL_SPLITS:
        spec = SPLITS[name]
        dataset = load_miniworld_split(name, size_per_set, None if seed is None else spec.seed + seed, num_proc)
        if spec.group == "retrieval":
            eval_sets[name] = EvalSet(
                dataset,
                group="retrieval",
                image_column="image",
                caption_column="caption",
                metadata={"source": "miniworld", "version": VERSION, "split": name},
            )
            continue
        label, classes, group = spec.label, spec.classes, spec.group
        assert label is not None and classes is not None and group is not None  # a labelled test split (_test)
        eval_sets[name] = EvalSet(
            dataset,
            group=group,
            class_names=list(classes),
            templates=list(EVAL_TEMPLATES[label]),
            image_column="image",
            label_column="label",
            metadata={
                "source": "miniworld",
                "version": VERSION,
                "split": name,
                "attribute": spec.label,
                "styles": list(spec.styles),
                "shapes": list(spec.shapes),
            },
        )
    return eval_sets
