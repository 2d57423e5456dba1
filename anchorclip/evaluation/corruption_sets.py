"""ImageNet-C style evaluation: corrupted copies of evaluation sets, the published ImageNet-C, and its report.

Two ways to get corrupted sets, both named `<base>-<corruption>-<severity>` and grouped `corruption` (the 15
test corruptions) or `corruption_val` (speckle noise, gaussian blur, spatter, saturate: the ones choices are
made on, never averaged with the test ones):

- `corrupted_eval_sets`: any evaluation set corrupted on the fly (`--eval_corruptions`). Each image is resized
  and centre-cropped to the model's input side first (ImageNet-C corrupts the 224 px centre crop the models
  see), then corrupted with the spatial parameters scaled by side / 224 (`corruptions.py`), with a seed drawn
  from (seed, corruption, severity, row): the same image gets the same corruption in every run and process.
- `imagenet_c_sets`: the published ImageNet-C (Hendrycks & Dietterich 2019) read from its folder layout
  `<root>/<corruption>/<severity>/<wnid>/*.JPEG` (`--eval_imagenet_c ROOT`).

`corruption_report` turns a run's summary into the field's numbers: mean top-1 over corruptions x severities,
per corruption, per severity, and, given a reference model's errors, the mean corruption error
mCE = mean_c (sum_s err_{c,s} / sum_s err^ref_{c,s}) (in %, as in the paper; AlexNet there).
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image

from .corruptions import SEVERITIES, TEST_CORRUPTIONS, VALIDATION_CORRUPTIONS, corrupt, corruption_names
from .sets import EvalSet

REFERENCE_SIDE = 224  # the side ImageNet-C's parameters were set for
_SET_NAME = re.compile(r"^(?P<base>.+)-(?P<corruption>[a-z_]+)-(?P<severity>[1-5])$")


def group_of(corruption: str) -> str:
    """`corruption` for the 15 test corruptions, `corruption_val` for the 4 validation ones."""
    return "corruption_val" if corruption in VALIDATION_CORRUPTIONS else "corruption"


class CorruptImage:
    """An `EvalSet.image_transform`: resize + centre crop to the model's side, then one corruption (picklable)."""

    def __init__(self, corruption: str, severity: int, seed: int = 0):
        corruption_names([corruption])  # checks the name
        if severity not in SEVERITIES:
            raise ValueError(f"Corruption severity must be one of {SEVERITIES}, got {severity!r}.")
        self.corruption, self.severity, self.seed = corruption, severity, seed

    def __call__(self, image: Image.Image, index: int, size: int) -> Image.Image:
        image = center_crop(image.convert("RGB"), size)
        key = f"{self.seed}/{self.corruption}/{self.severity}/{index}".encode()
        rng = np.random.RandomState(zlib.crc32(key))
        return Image.fromarray(corrupt(image, self.corruption, self.severity, rng, scale=size / REFERENCE_SIDE))

    def __repr__(self) -> str:
        return f"CorruptImage({self.corruption!r}, {self.severity}, seed={self.seed})"


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """Resize the short side to `size` (bicubic), then the centre `size` x `size` (CLIP's evaluation view)."""
    width, height = image.size
    if (width, height) == (size, size):
        return image
    ratio = size / min(width, height)
    resized = (max(size, round(width * ratio)), max(size, round(height * ratio)))
    image = image.resize(resized, Image.Resampling.BICUBIC)
    left, top = (resized[0] - size) // 2, (resized[1] - size) // 2
    return image.crop((left, top, left + size, top + size))


def corrupted_eval_sets(
    eval_sets: dict[str, EvalSet],
    corruptions: str | list[str] = "test",
    severities: tuple[int, ...] | list[int] = SEVERITIES,
    base_sets: list[str] | None = None,
    seed: int = 0,
) -> dict[str, EvalSet]:
    """Corrupted copies `<base>-<corruption>-<severity>` of `base_sets` (default: every `id` set).

    `corruptions`: `test` (the 15), `validation` (the 4), `all`, or a list of names. The copies share the base
    sets' datasets, names and templates; only an `image_transform` is added."""
    names = corruption_names(corruptions)
    if base_sets is None:
        base_sets = [name for name, eval_set in eval_sets.items() if eval_set.group == "id"]
    missing = sorted(set(base_sets) - set(eval_sets))
    if missing:
        raise ValueError(f"No evaluation sets {missing} to corrupt; there are {sorted(eval_sets)}.")
    out = {}
    for base in base_sets:
        source = eval_sets[base]
        if source.is_retrieval:
            raise ValueError(f"Corruptions are scored on classification sets; {base!r} is a retrieval set.")
        for corruption in names:
            for severity in severities:
                metadata = {**source.metadata, "base_set": base, "corruption": corruption, "severity": severity}
                out[f"{base}-{corruption}-{severity}"] = replace(
                    source,
                    group=group_of(corruption),
                    image_transform=CorruptImage(corruption, severity, seed),
                    metadata=metadata,
                )
    return out


def imagenet_c_sets(
    root: str,
    corruptions: str | list[str] = "test",
    severities: tuple[int, ...] | list[int] = SEVERITIES,
    data_root: str | None = None,
) -> dict[str, EvalSet]:
    """The published ImageNet-C under `root` (`<corruption>/<severity>/<wnid>/*.JPEG`, wnids in ImageNet's order),
    scored with OpenAI's curated ImageNet names and 80 templates, as the `imagenet` set of `imagenet-ood`."""
    import os

    from .suites import SuiteEntry, build_eval_set

    out = {}
    for corruption in corruption_names(corruptions):
        for severity in severities:
            folder = os.path.join(root, corruption, str(severity))
            if not os.path.isdir(folder):
                raise FileNotFoundError(f"ImageNet-C: no folder {folder} (layout <root>/<corruption>/<severity>/).")
            entry = SuiteEntry(
                name=f"imagenet-{corruption}-{severity}",
                group=group_of(corruption),
                dataset=folder,
                class_names={"curated": "imagenet1k.json"},
                templates="openai_imagenet",
                metadata={"base_set": "imagenet", "corruption": corruption, "severity": severity},
            )
            out[entry.name] = build_eval_set(entry, data_root)
    return out


def load_reference_errors(path: str, model: str | None = None) -> dict[str, dict[int, float]]:
    """Top-1 errors (0-1) of a reference model by corruption and severity, for mCE.

    `path`: a JSON `{"errors": {corruption: [err at severity 1, ..., 5]}}` (e.g. AlexNet's, as published), or a
    `results.json` of `anchorclip eval` / `train` (the `model` row of `evaluated`, else `finetuned`)."""
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    if "errors" in data:
        return {c: {s: float(e) for s, e in zip(SEVERITIES, errors)} for c, errors in data["errors"].items()}
    evaluated = data.get("evaluated") or {}
    if model is not None or len(evaluated) == 1:
        summary = evaluated[model] if model is not None else next(iter(evaluated.values()))
    elif "finetuned" in data:
        summary = data["finetuned"]
    else:
        raise ValueError(f"{path}: no `errors`, no single `evaluated` model (name one) and no `finetuned` row.")
    table = _by_corruption(summary["sets"])
    if len(table) != 1:
        raise ValueError(f"{path}: the reference has corrupted copies of {sorted(table)}; give one base set.")
    return {c: {s: 1.0 - acc for s, acc in by_s.items()} for c, by_s in next(iter(table.values())).items()}


def corruption_report(summary: dict, reference: dict[str, dict[int, float]] | None = None) -> dict:
    """Per base set: mean top-1 (test corruptions x severities, and the validation ones apart), per corruption,
    per severity, and mCE / per-corruption CE (%) against `reference` errors when given. Accuracies in 0-1."""
    report = {}
    for base, table in _by_corruption(summary["sets"]).items():
        entry = {}
        for group, names in (("corruption", TEST_CORRUPTIONS), ("corruption_val", VALIDATION_CORRUPTIONS)):
            rows = {c: by_s for c, by_s in table.items() if c in names}
            if not rows:
                continue
            cells = [acc for by_s in rows.values() for acc in by_s.values()]
            severities = sorted({s for by_s in rows.values() for s in by_s})
            part = {
                "mean_top1": float(np.mean(cells)),
                "per_corruption": {c: float(np.mean(list(by_s.values()))) for c, by_s in rows.items()},
                "per_severity": {
                    s: float(np.mean([by_s[s] for by_s in rows.values() if s in by_s])) for s in severities
                },
            }
            if reference is not None and group == "corruption":
                ce = {}
                for c, by_s in rows.items():
                    if c not in reference or set(by_s) - set(reference[c]):
                        raise ValueError(f"mCE: the reference has no errors for {c} at severities {sorted(by_s)}.")
                    ce[c] = 100 * sum(1 - acc for acc in by_s.values()) / sum(reference[c][s] for s in by_s)
                part["ce"], part["mce"] = ce, float(np.mean(list(ce.values())))
            entry[group] = part
        report[base] = entry
    return report


def _by_corruption(sets: dict[str, float]) -> dict[str, dict[str, dict[int, float]]]:
    table: dict = {}
    for name, score in sets.items():
        match = _SET_NAME.match(name)
        if match and match["corruption"] in TEST_CORRUPTIONS | VALIDATION_CORRUPTIONS:
            by_c = table.setdefault(match["base"], {}).setdefault(match["corruption"], {})
            by_c[int(match["severity"])] = float(score)
    return table


@dataclass
class CorruptionArguments:
    """The corruption flags `anchorclip train` and `anchorclip eval` share (mixed into their evaluation flags)."""

    eval_corruptions: list[str] = field(
        default_factory=list,
        metadata={"help": "Corrupt the id sets (or --eval_corruption_sets) on the fly: test (the 15 ImageNet-C "
                  "corruptions), validation (the 4 held out), all, or names."},
    )  # fmt: skip
    eval_corruption_severities: list[int] = field(
        default_factory=lambda: list(SEVERITIES), metadata={"help": "Severities to evaluate (1-5)."}
    )
    eval_corruption_sets: list[str] = field(
        default_factory=list, metadata={"help": "Which evaluation sets --eval_corruptions corrupts (default: id)."}
    )
    eval_imagenet_c: str | None = field(
        default=None, metadata={"help": "The published ImageNet-C: ROOT/<corruption>/<severity>/<wnid>/*.JPEG."}
    )
    eval_corruption_reference: str | None = field(
        default=None,
        metadata={
            "help": "mCE reference: JSON {'errors': {corruption: [err_s1..s5]}} or a results.json of one model."
        },
    )
    eval_corruption_seed: int = field(default=0, metadata={"help": "Seed of the on-the-fly corruptions."})


def corruption_sets_from_args(args, eval_sets: dict[str, EvalSet], data_root: str | None = None) -> dict:
    """The corrupted sets the flags ask for (`--eval_corruptions`, `--eval_imagenet_c`); empty if none."""
    out = {}
    corruptions = getattr(args, "eval_corruptions", None)
    if corruptions:
        subset = (
            corruptions[0]
            if len(corruptions) == 1 and corruptions[0] in ("test", "validation", "all")
            else list(corruptions)
        )
        severities = args.eval_corruption_severities
        base_sets = args.eval_corruption_sets or None
        out.update(corrupted_eval_sets(eval_sets, subset, severities, base_sets, args.eval_corruption_seed))
    if getattr(args, "eval_imagenet_c", None):
        subset = corruptions or "test"
        if isinstance(subset, list) and len(subset) == 1 and subset[0] in ("test", "validation", "all"):
            subset = subset[0]
        out.update(imagenet_c_sets(args.eval_imagenet_c, subset, args.eval_corruption_severities, data_root))
    return out


def add_corruption_reports(results: dict, args) -> dict:
    """Add `corruptions` (see `corruption_report`) beside every summary of a results dict that has corrupted sets."""
    reference_path = getattr(args, "eval_corruption_reference", None)
    reference = load_reference_errors(reference_path) if reference_path else None
    summaries = [results.get("zeroshot"), results.get("finetuned"), *(results.get("evaluated") or {}).values()]
    summaries += list((results.get("wise") or {}).values())
    for summary in summaries:
        if summary and _by_corruption(summary.get("sets", {})):
            summary["corruptions"] = corruption_report(summary, reference)
    return results


def miniworld_corruption_sets(
    size: int | None = None, corruptions: str | list[str] = "test", split: str | None = None, seed: int = 0
) -> dict[str, EvalSet]:
    """The miniworld corruption suite: the ID test split (`test_photo`) under the 15 test corruptions x 5
    severities; with `corruptions="validation"`, `finetune_val` under the 4 validation corruptions (the sets
    choices are made on). Images are corrupted at the model's 32 px with spatial parameters scaled by 32 / 224."""
    from anchorclip.miniworld import load_miniworld_split
    from anchorclip.miniworld.prompts import SHAPE_TEMPLATES

    split = split or ("finetune_val" if corruptions == "validation" else "test_photo")
    dataset = load_miniworld_split(split, size=size)  # shape labels; names from its ClassLabel
    base = {split: EvalSet(dataset, group="id", templates=list(SHAPE_TEMPLATES), metadata={"split": split})}
    return corrupted_eval_sets(base, corruptions, seed=seed)
