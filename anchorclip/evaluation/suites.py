"""Evaluation suites as data: YAML files that list sets, each with its dataset, group, names and templates.

Which sets a paper's table uses, their curated class names, templates and the ImageNet indices that
ImageNet-A/-R and ObjectNet are scored over are facts with sources, not code: they live as data files under
`anchorclip/assets/suites/` (one YAML per suite, plus `templates/`) and `anchorclip/assets/classnames/`,
each naming its source. A user's own YAML in the same format works the same way.

A set entry::

    - name: imagenet_a
      group: domain_shift                       # id | domain_shift | zero_shot | retrieval
      dataset: clip-benchmark/wds_imagenet-a    # any spec `formats.load_eval_dataset` reads; `:split` allowed
      split: test                               # optional
      image_column: image                       # optional, as label_column
      class_names: {curated: imagenet1k.json}   # | {file: path} | classlabel | folder | source | auto | [a, ...]
      templates: openai_imagenet                # | a data file (.json/.txt) | folder | source | auto | ['a {}.']

`auto` (what `--eval_datasets` uses) takes the source's own names / templates when it has them, else the
label column's `ClassLabel` names / the run's evaluation templates.
      class_subset: imagenet_a_subset.json      # optional: per set label, the parent index or list of indices

A `retrieval` entry (an image-caption set) takes `caption_column` instead of names, templates and subset.

A suite whose sets come from a registered format (`formats.register_eval_format`) names it beside its sets, as
`formats: {prefix: "module:attribute"}`; the module is imported only when a set's spec first uses the prefix.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import yaml

from anchorclip.data import LABEL_COLUMNS, class_names_from_features, find_column
from anchorclip.evaluation.formats import (
    class_names_from_file,
    load_eval_dataset,
    register_eval_format,
    registered_format,
    split_spec,
)
from anchorclip.evaluation.sets import GROUPS, EvalSet
from anchorclip.templates import resolve_templates

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")
SUITES_DIR = os.path.join(ASSETS, "suites")
CLASSNAMES_DIR = os.path.join(ASSETS, "classnames")
TEMPLATES_DIR = os.path.join(SUITES_DIR, "templates")
FROM_SOURCE = ("folder", "source")  # names / templates found in the dataset itself (wds text files, generated sets)
_KEYS = {"name", "group", "dataset", "split", "image_column", "label_column", "class_names", "templates"}
_KEYS |= {"class_subset", "caption_column", "metadata"}


@dataclass
class SuiteEntry:
    """One set of a suite, as written in its YAML; `base_dir` is where the YAML's relative paths start."""

    name: str
    group: str
    dataset: str
    split: str | None = None
    image_column: str | None = None
    label_column: str | None = None
    class_names: object = "classlabel"
    templates: object = None
    class_subset: object = None
    caption_column: str | None = None
    metadata: dict = field(default_factory=dict)
    base_dir: str = SUITES_DIR


def list_suites() -> list[str]:
    """The names of the shipped suites (`imagenet-ood`, `miniworld`, `zeroshot-transfer`)."""
    return sorted(f[: -len(".yaml")] for f in os.listdir(SUITES_DIR) if f.endswith(".yaml"))


def load_suite(name_or_path: str) -> list[SuiteEntry]:
    """Parse a shipped suite (by name) or a user's YAML file into its entries, checking every key and group."""
    path = name_or_path
    if not os.path.isfile(path):
        path = os.path.join(SUITES_DIR, f"{name_or_path}.yaml")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No suite {name_or_path!r}: not a file, nor one of {list_suites()}.")
    with open(path, encoding="utf-8") as file:
        data = yaml.safe_load(file)
    if not isinstance(data, dict) or not isinstance(data.get("sets"), list) or not data["sets"]:
        raise ValueError(f"{path}: a suite is a mapping with a non-empty `sets` list.")
    formats = data.get("formats") or {}
    if not isinstance(formats, dict) or not all(isinstance(v, str) and ":" in v for v in formats.values()):
        raise ValueError(f'{path}: `formats` maps a spec prefix to the "module:attribute" of its EvalFormat.')
    for prefix, eval_format in formats.items():
        register_eval_format(prefix, eval_format)
    entries, seen = [], set()
    for position, raw in enumerate(data["sets"]):
        where = f"{path}: set {position} ({raw.get('name', '?') if isinstance(raw, dict) else raw!r})"
        if not isinstance(raw, dict) or not {"name", "group", "dataset"} <= set(raw):
            raise ValueError(f"{where} needs `name`, `group` and `dataset`.")
        if set(raw) - _KEYS:
            raise ValueError(f"{where} has unknown keys {sorted(set(raw) - _KEYS)}; known: {sorted(_KEYS)}.")
        if raw["group"] not in GROUPS:
            raise ValueError(f"{where}: group {raw['group']!r} is not one of {GROUPS}.")
        if raw["name"] in seen:
            raise ValueError(f"{where}: the name {raw['name']!r} is used twice.")
        seen.add(raw["name"])
        entries.append(SuiteEntry(**raw, base_dir=os.path.dirname(os.path.abspath(path))))
    return entries


def resolve_dataset_spec(spec: str, data_root: str | None = None) -> str:
    """`<data_root>/<last path part of spec>` when that folder exists (CLIP_benchmark's --dataset_root habit).

    `clip-benchmark/wds_imagenet-a` becomes `/data/wds_imagenet-a` if that folder exists, so one suite file
    serves both a Hub download and a local copy. A `:split` suffix is kept; otherwise the spec is unchanged.
    """
    if data_root is None or registered_format(spec) is not None:
        return spec
    path, split = split_spec(spec)
    local = os.path.join(data_root, os.path.basename(path.rstrip("/")))
    if not os.path.isdir(local):
        return spec
    return local if split is None or split == spec else f"{local}:{split}"


def build_eval_set(
    entry: SuiteEntry, data_root: str | None = None, cache_dir: str | None = None, miniworld_size: int | None = None
) -> EvalSet:
    """Load an entry's dataset and turn it into an `EvalSet`, checking names, subset and labels agree.

    With `class_subset`, `class_names` are the parent space's (e.g. ImageNet's 1,000) and the subset must have
    one entry per label of the set (the source's own names, if it has any, count its labels).
    """
    spec = resolve_dataset_spec(entry.dataset, data_root)
    path, split = split_spec(spec, entry.split)
    if registered_format(spec) is not None:  # `<prefix>:<name>` names the set, not a split
        path, split = spec, None
    names_file = _find(entry.class_names["file"], entry.base_dir) if _is_key(entry.class_names, "file") else None
    try:
        dataset, info = load_eval_dataset(
            path, split, class_names_file=names_file, cache_dir=cache_dir, size=miniworld_size
        )
    except Exception as error:
        if data_root is not None or os.path.exists(path):
            raise
        local = os.path.basename(path.rstrip("/"))
        raise ValueError(
            f"Suite set {entry.name!r}: cannot load {spec!r} ({type(error).__name__}: {error}). With a local copy, "
            f"pass --eval_data_root DIR where DIR/{local} holds it."
        ) from error
    metadata = {"suite_set": entry.name, "spec": spec, "format": info.kind, **info.metadata, **entry.metadata}
    if entry.group == "retrieval":
        caption_column = entry.caption_column or info.caption_column
        image_column = entry.image_column or info.image_column
        return EvalSet(
            dataset, "retrieval", image_column=image_column, caption_column=caption_column, metadata=metadata
        )
    label_column = entry.label_column or info.label_column or find_column(dataset, None, LABEL_COLUMNS, "label")
    own_names = info.class_names or class_names_from_features(dataset, label_column)
    mapped = info.class_names if info.kind == "imagefolder" else None  # the ImageFolder applied the file itself
    class_names = _class_names(entry, info.class_names, own_names, names_file, mapped)
    subset = _class_subset(entry.class_subset, entry.base_dir)
    num_labels = len(subset) if subset is not None else len(class_names)
    if own_names is not None and len(own_names) != num_labels:
        what = "class_subset" if subset is not None else "class_names"
        raise ValueError(
            f"Suite set {entry.name!r}: the dataset {spec} has {len(own_names)} classes, {what} has {num_labels}."
        )
    return EvalSet(
        dataset=dataset,
        group=entry.group,
        class_names=class_names,
        templates=_templates(entry.templates, info.templates, entry.base_dir),
        image_column=entry.image_column or info.image_column,
        label_column=label_column,
        class_subset=subset,
        metadata=metadata,
    )


def load_suite_sets(
    name_or_path: str,
    data_root: str | None = None,
    only: list[str] | None = None,
    cache_dir: str | None = None,
    miniworld_size: int | None = None,
) -> dict[str, EvalSet]:
    """A suite's sets as `{name: EvalSet}` (the shape `miniworld_eval_sets` and the trainer's eval dict use)."""
    entries = load_suite(name_or_path)
    if only is not None:
        unknown = sorted(set(only) - {e.name for e in entries})
        if unknown:
            raise ValueError(f"Suite {name_or_path!r} has no sets {unknown}; it has {[e.name for e in entries]}.")
        entries = [e for e in entries if e.name in only]
    return {e.name: build_eval_set(e, data_root, cache_dir, miniworld_size) for e in entries}


def _is_key(spec: object, key: str) -> TypeGuard[dict[str, Any]]:
    """Whether `spec` is a mapping with the one key `key` (e.g. `{"file": ...}`)."""
    return isinstance(spec, dict) and set(spec) == {key}


def _find(name: str, base_dir: str, shipped_dir: str | None = None) -> str:
    """A data file: absolute, else next to the suite YAML, else shipped under `shipped_dir`, else from cwd."""
    candidates = [os.path.join(base_dir, name)] + ([os.path.join(shipped_dir, name)] if shipped_dir else [])
    for candidate in [*candidates, name]:
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(f"Data file {name!r} not found (looked in {[base_dir, shipped_dir, os.getcwd()]}).")


def _class_names(entry: SuiteEntry, source_names, own_names, names_file, mapped) -> list[str]:
    spec = entry.class_names
    if isinstance(spec, list):
        return [str(name) for name in spec]
    if _is_key(spec, "curated"):
        return class_names_from_file(_find(spec["curated"], entry.base_dir, CLASSNAMES_DIR))
    if names_file is not None:
        if mapped is not None:
            return mapped
        # with a class_subset the file lists the parent space, not one name per label of the set
        return class_names_from_file(names_file, None if entry.class_subset is not None else own_names)
    if spec == "auto" and (source_names or own_names) is not None:  # --eval_datasets: whatever the set has
        return list(source_names or own_names)
    if spec in FROM_SOURCE and source_names is not None:
        return list(source_names)
    if spec == "classlabel" and own_names is not None:
        return list(own_names)
    raise ValueError(f"Suite set {entry.name!r}: class_names {spec!r} gives no names for {entry.dataset}.")


def _templates(spec, source_templates, base_dir: str) -> list[str] | None:
    if spec is None or (spec == "auto" and source_templates is None):
        return None  # the trainer's evaluation templates
    if spec == "auto":
        return list(source_templates)
    if spec in FROM_SOURCE:
        if source_templates is None:
            raise ValueError(f"templates: {spec!r}, but the dataset ships no templates.")
        return list(source_templates)
    if isinstance(spec, dict) and _is_key(spec, "file"):
        spec = spec["file"]
    if isinstance(spec, str) and spec.endswith((".json", ".txt")):
        path = _find(spec, base_dir, TEMPLATES_DIR)
        if path.endswith(".json"):
            with open(path, encoding="utf-8") as file:
                data = json.load(file)
            spec = data["templates"] if isinstance(data, dict) else data
        else:
            spec = class_names_from_file(path)  # one template per line, `#` lines skipped
        spec = [t.replace("{c}", "{}") for t in spec]
    return resolve_templates(spec)


def _class_subset(spec, base_dir: str) -> list[int | list[int]] | None:
    if spec is None or isinstance(spec, list):
        return spec
    path = _find(spec, base_dir, CLASSNAMES_DIR)
    if path.endswith(".json"):
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
        return data["class_subset"] if isinstance(data, dict) else data
    rows = [line.replace(",", " ").split() for line in class_names_from_file(path)]
    return [int(row[0]) if len(row) == 1 else [int(i) for i in row] for row in rows]
