"""The formats evaluation sets come in, read into a `datasets.Dataset` plus what the source says about itself.

The field's robustness and transfer sets mostly live as CLIP_benchmark webdatasets (a folder, or a Hub repo
`clip-benchmark/wds_*`, of `<split>/0.tar, 1.tar, ...` with `KEY.webp|jpg|png` + `KEY.cls` members and a
`classnames.txt` / `zeroshot_classification_templates.txt` beside them), as ImageFolders (often with WordNet-id
folders), or as ordinary Hub / `save_to_disk` datasets. Every reader here checks the whole source before it is
used and fails naming the file at fault: an evaluation set that is silently shorter, or scored against the
wrong names, gives a number that looks right and is not.

Other sources plug in by name: `register_eval_format("myworld", EvalFormat(load=...))` makes every spec
`myworld:<name>` (in `--eval_datasets`, a suite YAML, a leakage set) read by that loader. The built-in miniature
world registers itself this way (`anchorclip.miniworld.formats`); nothing here imports it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field

import datasets

from anchorclip.data import load_dataset_any
from anchorclip.data_formats import has_metadata, local_format
from anchorclip.templates import resolve_templates

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("webp", "jpg", "jpeg", "png")
WDS_META_FILES = ("classnames.txt", "zeroshot_classification_templates.txt", "dataset_type.txt")
_WNID = re.compile(r"^n\d{8}$")


@dataclass
class SourceInfo:
    """What a source says about itself: class names and templates found in it, the columns to read, its kind."""

    kind: str  # "webdataset", "imagefolder", "dataset" (Hub / save_to_disk), or a registered format's name
    class_names: list[str] | None = None
    templates: list[str] | None = None
    image_column: str | None = None
    label_column: str | None = None
    caption_column: str | None = None
    metadata: dict = field(default_factory=dict)


@dataclass
class EvalFormat:
    """A source read from specs `<prefix>:<name>`: `load(name, size)` returns `(dataset, SourceInfo)`; `size`, if
    not None, asks a source that generates its sets for that many rows. `num_rows(name)`, if given, is a set's
    full size (what `scaled_size` scales)."""

    load: Callable[[str, int | None], tuple[datasets.Dataset, SourceInfo]]
    num_rows: Callable[[str], int] | None = None


# prefix -> the format, or "module:attribute" naming it (imported on the first spec that uses the prefix).
_FORMATS: dict[str, EvalFormat | str] = {}


def register_eval_format(prefix: str, eval_format: EvalFormat | str) -> None:
    """Read every spec `<prefix>:<name>` with `eval_format`: an `EvalFormat`, or `"module:attribute"` naming one,
    imported only when such a spec is first read."""
    if not prefix or ":" in prefix or os.sep in prefix:
        raise ValueError(f"A format prefix is a plain name, not {prefix!r}.")
    _FORMATS[prefix] = eval_format


def registered_format(spec: str) -> tuple[EvalFormat, str] | None:
    """`(format, name)` when `spec` is `<prefix>:<name>` with a registered prefix, else None."""
    prefix, colon, name = spec.partition(":")
    if not colon or prefix not in _FORMATS:
        return None
    eval_format = _FORMATS[prefix]
    if isinstance(eval_format, str):
        import importlib

        module, _, attribute = eval_format.partition(":")
        eval_format = _FORMATS[prefix] = getattr(importlib.import_module(module), attribute)
    return eval_format, name


def scaled_size(spec: str, fraction: float) -> int | None:
    """`fraction` of the registered set `spec`'s rows (at least 8), or None for 1.0 (the whole set)."""
    found = registered_format(spec)
    if fraction == 1.0:
        return None
    num_rows = found[0].num_rows if found is not None else None
    if found is None or num_rows is None:
        raise ValueError(f"{spec!r} is not a registered format's set with a known size: it cannot be scaled.")
    return max(8, round(num_rows(found[1]) * fraction))


def split_spec(spec: str, split: str | None = None) -> tuple[str, str | None]:
    """`"path:split"` -> (`"path"`, `"split"`), as `anchorclip.data.load_dataset_any` reads a spec."""
    if ":" in spec and not os.path.exists(spec) and not spec.startswith(("hf://", "http")):
        spec, split = spec.rsplit(":", 1)
    return spec, split


def is_wds_folder(path: str) -> bool:
    """A CLIP_benchmark webdataset folder: a `classnames.txt`, or a sub-folder holding `*.tar` shards."""
    if not os.path.isdir(path):
        return False
    if any(os.path.isfile(os.path.join(path, name)) for name in WDS_META_FILES):
        return True
    for entry in os.scandir(path):
        if entry.is_dir() and any(name.endswith(".tar") for name in os.listdir(entry.path)):
            return True
    return False


def load_eval_dataset(
    spec: str,
    split: str | None = None,
    *,
    class_names_file: str | None = None,
    cache_dir: str | None = None,
    size: int | None = None,
) -> tuple[datasets.Dataset, SourceInfo]:
    """Load an evaluation set from any supported format; returns the dataset and its `SourceInfo`.

    `spec` may carry the split after a colon (`mysets/wds_cars:test`). Dispatch: a registered `<prefix>:<name>`
    (`register_eval_format`); a local
    CLIP_benchmark webdataset folder; a local `save_to_disk` folder or ImageFolder; a Hub repo named `wds_*`
    (downloaded: only the split's shards and the text files); otherwise a Hub dataset. `split` defaults to
    `test`, except that an ImageFolder with a single split falls back to it. `class_names_file` names an
    ImageFolder's classes (see `class_names_from_file`). `size` only applies to registered formats.
    """
    found = registered_format(spec)
    if found is not None:
        eval_format, name = found
        return eval_format.load(name, size)
    path, split = split_spec(spec, split)
    if os.path.isdir(path):
        data_format = local_format(path)  # CSV / JSON / parquet, metadata.jsonl: read by load_dataset_any below
        if is_wds_folder(path) and data_format in ("webdataset", None):
            return _load_wds_folder(path, split or "test", cache_dir=cache_dir)
        if not _is_saved_dataset(path) and data_format in ("imagefolder", None) and not has_metadata(path):
            return _load_imagefolder(path, split, class_names_file)
    elif os.path.basename(path.rstrip("/")).startswith("wds_"):
        return _load_wds_hub(path, split or "test", cache_dir=cache_dir)
    dataset = load_dataset_any(path, split=split or "test")
    return dataset, SourceInfo(kind="dataset", metadata={"spec": spec, "split": split or "test"})


def _load_wds_hub(
    repo_id: str, split: str = "test", cache_dir: str | None = None
) -> tuple[datasets.Dataset, SourceInfo]:
    """Download one split of a CLIP_benchmark Hub webdataset (e.g. `clip-benchmark/wds_imagenet-a`) and load it.

    Only `<split>/*` and the text files are fetched: the repos also hold Hub-made parquet conversions and
    other splits that can be many times the size of the split asked for.
    """
    from huggingface_hub import snapshot_download

    root = snapshot_download(repo_id, repo_type="dataset", allow_patterns=[f"{split}/*", *WDS_META_FILES])
    dataset, info = _load_wds_folder(root, split, cache_dir=cache_dir)
    info.metadata["spec"] = repo_id
    return dataset, info


def _load_wds_folder(
    root: str, split: str = "test", cache_dir: str | None = None
) -> tuple[datasets.Dataset, SourceInfo]:
    """Read a CLIP_benchmark webdataset folder's split into a Dataset (`image` bytes undecoded, `label` int).

    All shards are checked first (pairs of image and `.cls`, labels in range, no truncation, shard count
    against `nshards.txt`) so that a bad file fails here, by name, instead of yielding a shorter set.
    """
    names_file = os.path.join(root, "classnames.txt")
    if not os.path.isfile(names_file):
        raise FileNotFoundError(
            f"{names_file} is missing: a CLIP_benchmark webdataset folder lists its classes there."
        )
    with open(names_file, encoding="utf-8") as file:  # as CLIP_benchmark reads it: line i names label i
        class_names = [line.strip() for line in file.read().rstrip("\n").splitlines()]
    kind = "classification"
    if os.path.isfile(os.path.join(root, "dataset_type.txt")):
        kind = _read_lines(os.path.join(root, "dataset_type.txt"))[0].lower()
    if kind != "classification":
        raise ValueError(f"{root}: dataset_type.txt says {kind!r}; only single-label classification is read here.")
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
        splits = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
        raise FileNotFoundError(f"{split_dir} does not exist; {root} has splits {splits}.")
    shards = sorted((f for f in os.listdir(split_dir) if f.endswith(".tar")), key=_shard_order)
    if not shards:
        raise FileNotFoundError(f"{split_dir} holds no .tar shards.")
    nshards_file = os.path.join(split_dir, "nshards.txt")
    if os.path.isfile(nshards_file) and int(_read_lines(nshards_file)[0]) != len(shards):
        raise ValueError(
            f"{nshards_file} says {_read_lines(nshards_file)[0]} shards; {split_dir} holds {len(shards)}."
        )
    shards = [os.path.join(split_dir, name) for name in shards]
    count = sum(_check_shard(shard, len(class_names)) for shard in shards)
    templates_file = os.path.join(root, "zeroshot_classification_templates.txt")
    templates = None
    if os.path.isfile(templates_file):
        templates = resolve_templates([t.replace("{c}", "{}") for t in _read_lines(templates_file)])
    stamps = [(s, os.path.getsize(s), os.path.getmtime(s)) for s in shards]  # the cache key: changed shards reload
    dataset = datasets.Dataset.from_generator(
        _wds_examples,
        features=datasets.Features(
            {"image": datasets.Image(decode=False), "label": datasets.Value("int64"), "key": datasets.Value("string")}
        ),
        gen_kwargs={"stamps": stamps},
        cache_dir=cache_dir,
    )
    if len(dataset) != count:  # a stale cache or a shard changed between the check and the read
        raise RuntimeError(f"{split_dir}: read {len(dataset)} examples, the shards hold {count}.")
    info = SourceInfo("webdataset", class_names, templates, "image", "label", metadata={"root": root, "split": split})
    return dataset, info


def _shard_order(name: str):
    stem = name[: -len(".tar")]
    return (0, int(stem), "") if stem.isdigit() else (1, 0, stem)


def _members(shard: str, read_images: bool = True):
    """Yield (key, extension, bytes) per file in a shard (images' bytes None unless `read_images`).

    Tar errors, a truncated last member included, become errors naming the shard."""
    try:
        size = os.path.getsize(shard)
        with tarfile.open(shard, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                directory, base = os.path.split(member.name)
                if base.startswith(".") or "." not in base:
                    continue
                stem, extension = base.split(".", 1)
                extension = extension.lower()
                if extension in IMAGE_EXTENSIONS and not read_images:
                    if member.offset_data + member.size > size:
                        raise tarfile.ReadError(f"{member.name} ends past the end of the file")
                    yield os.path.join(directory, stem), extension, None
                    continue
                file = tar.extractfile(member)
                assert file is not None  # a regular file (member.isfile() above)
                yield os.path.join(directory, stem), extension, file.read()
    except (tarfile.TarError, OSError, EOFError) as error:
        raise ValueError(f"{shard} is unreadable or truncated: {error}") from error


def _pairs(shard: str, read_images: bool = True):
    """Yield (key, image bytes, label text) per example, in shard order; unpaired members are errors."""
    images, labels = {}, {}
    for key, extension, data in _members(shard, read_images):
        if extension in IMAGE_EXTENSIONS:
            if key in images:
                raise ValueError(f"{shard}: example {key!r} has two images.")
            images[key] = data
        elif extension == "cls":
            labels[key] = data.decode("utf-8").strip()
    unpaired = sorted(set(images) ^ set(labels))
    if unpaired:
        key = unpaired[0]
        has = "an image but no .cls label" if key in images else "a .cls label but no image"
        raise ValueError(f"{shard}: example {key!r} has {has} ({len(unpaired)} unpaired in all).")
    for key in images:
        yield key, images[key], labels[key]


def _check_shard(shard: str, num_classes: int) -> int:
    count = 0
    for key, _, text in _pairs(shard, read_images=False):
        if not text.lstrip("-").isdigit() or not 0 <= int(text) < num_classes:
            raise ValueError(f"{shard}: {key}.cls is {text!r}, not a label in 0..{num_classes - 1} (classnames.txt).")
        count += 1
    return count


def _wds_examples(stamps):
    for shard, _, _ in stamps:
        for key, image, text in _pairs(shard):
            yield {"image": {"bytes": image, "path": None}, "label": int(text), "key": key}


def _load_imagefolder(
    path: str, split: str | None = None, names_file: str | None = None
) -> tuple[datasets.Dataset, SourceInfo]:
    """An ImageFolder as an evaluation set: its only split when `split` is absent, names from `names_file`.

    Many evaluation sets ship as a single folder of class folders, which `datasets` calls `train`; asking for
    the usual `test` would fail, so a folder with exactly one split gives that one (and says so).
    """
    loaded = datasets.load_dataset("imagefolder", data_dir=path)
    wanted = split or "test"
    if wanted not in loaded:
        if len(loaded) != 1:
            raise ValueError(f"{path} has splits {list(loaded)}, not {wanted!r}.")
        logger.info("%s has no %r split; evaluating its only split %r.", path, wanted, next(iter(loaded)))
        wanted = next(iter(loaded))
    dataset = loaded[wanted]
    folders = list(dataset.features["label"].names) if "label" in dataset.features else None
    names = class_names_from_file(names_file, folders) if names_file else folders
    return dataset, SourceInfo("imagefolder", names, None, "image", "label", metadata={"root": path, "split": wanted})


def class_names_from_file(path: str, label_names: list[str] | None = None) -> list[str]:
    """Class names from a file: a name list in label order, or a mapping applied to `label_names`.

    Accepted: a `.txt` of one name per line, or of `wnid name` lines (a mapping); a `.json` list, or an object
    with `names` (+ optional `wnids`, making it a mapping too) or `mapping` ({folder: name}). A mapping is
    applied to `label_names` (an ImageFolder's WordNet-id folders); a list must have one name per label.
    """
    path = _shipped_or_given(path)
    names, mapping = _read_names_file(path)
    if label_names is not None and mapping is not None and (names is None or all(map(_WNID.match, label_names))):
        missing = [label for label in label_names if label not in mapping]
        if missing:
            raise ValueError(f"{path} has no name for {len(missing)} labels, e.g. {missing[:3]}.")
        return [mapping[label] for label in label_names]
    if names is None:
        raise ValueError(f"{path} is a mapping ({len(mapping or {})} entries) but there are no folder names to map.")
    if label_names is not None and len(names) != len(label_names):
        raise ValueError(f"{path} lists {len(names)} names; the dataset has {len(label_names)} labels.")
    return names


def _read_names_file(path: str) -> tuple[list[str] | None, dict[str, str] | None]:
    if path.endswith(".json"):
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
        if isinstance(data, list):
            return [str(name) for name in data], None
        if "mapping" in data:
            return None, dict(data["mapping"])
        names = list(data["names"])
        return names, dict(zip(data["wnids"], names, strict=True)) if "wnids" in data else None
    lines = _read_lines(path, comments=True)
    pairs = [line.split(None, 1) for line in lines]
    if lines and all(len(p) == 2 and _WNID.match(p[0]) for p in pairs):
        return None, {wnid: name.strip() for wnid, name in pairs}
    return lines, None


def _read_lines(path: str, comments: bool = False) -> list[str]:
    """Non-empty stripped lines; `comments` also drops `#` lines (our own data files' source headers)."""
    with open(path, encoding="utf-8") as file:
        return [line.strip() for line in file if line.strip() and not (comments and line.startswith("#"))]


def _is_saved_dataset(path: str) -> bool:
    return bool({"dataset_info.json", "state.json", "dataset_dict.json"} & set(os.listdir(path)))


def _shipped_or_given(path: str) -> str:
    """`path` itself, else a class-name file shipped under anchorclip/assets/classnames (`imagenet1k.json`)."""
    shipped = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "classnames", path)
    return path if os.path.exists(path) or not os.path.isfile(shipped) else shipped
