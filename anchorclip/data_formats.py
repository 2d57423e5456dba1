"""Local data read with `datasets`' own builders: CSV / JSON (Lines), parquet, webdataset tar shards, ImageFolder.

`anchorclip.data.load_dataset_any` sends every spec that looks local here (`looks_local`), so that a mistyped path
is an error naming it at once rather than a Hub lookup with retries. A folder's files are found, and split into
`train` / `test` / ..., by `datasets`' own naming conventions (`get_data_patterns`); its format is that of its
files: tar shards (webdataset) first, then parquet, then images (`imagefolder`, with `metadata.jsonl` captions),
then JSON and CSV. img2dataset writes `NNNNN.parquet` / `NNNNN_stats.json` beside its `NNNNN.tar` shards: a
folder with tar shards is read from its tar shards alone.

Image paths in CSV / JSON files are resolved relative to the file's folder (run_clip.py's convention) and the
column is cast to `datasets.Image()`; a path that does not resolve is an error naming the file and the line.
Image bytes in parquet (Hugging Face's `{bytes, path}` struct, img2dataset's binary `jpg` column) are cast to
`datasets.Image()` too. A label column of class names becomes a `ClassLabel` (names sorted, as ImageFolder sorts
its folders), or is encoded against `class_names` when given; a label outside the list names the file and row.
"""

from __future__ import annotations

import logging
import os
import tarfile

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

TABULAR_EXTENSIONS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
BUILDER_EXTENSIONS = {
    "webdataset": (".tar",),
    "parquet": (".parquet",),
    "json": (".jsonl", ".json"),
    "csv": (".csv", ".tsv"),
}
DATA_EXTENSIONS = (*TABULAR_EXTENSIONS, ".tar", ".arrow", *IMAGE_EXTENSIONS)
# Columns that hold an image path in CSV / JSON files, by the names run_clip.py, open_clip and ImageFolder use.
IMAGE_PATH_COLUMNS = ("image", "image_path", "img", "filepath", "file_path", "file_name", "filename", "path", "jpg")
STRING_TYPES = ("string", "large_string")
LABEL_NAMES = ("label", "labels", "class", "cls", "fine_label", "class_name")


def looks_local(spec: str) -> bool:
    """Whether `spec` can only mean a local path: `./`, `../`, `/`, `~`, a data file extension, or more path parts
    than a Hub id's `owner/name`."""
    if spec.startswith(("hf://", "http://", "https://", "s3://", "gs://")):
        return False
    if spec.startswith(("./", "../", "/", "~", ".\\")) or "\\" in spec:
        return True
    return spec.lower().endswith(DATA_EXTENSIONS) or spec.count("/") > 1


def load_local(
    path: str,
    split: str | None = "train",
    streaming: bool = False,
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    class_names: list[str] | None = None,
    **kwargs,
):
    """Load a local data file or folder (not a `save_to_disk` folder) with the builder its files call for."""
    path = os.path.expanduser(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist (a local path: it is not looked up on the Hub).")
    files, split = data_files(path, split)
    class_names = class_names or _names_beside(path)
    builder = _file_format(files)
    if builder == "imagefolder":
        # With a metadata.jsonl, `datasets` takes labels from its `label` field, not from the folder names.
        dataset = datasets.load_dataset("imagefolder", data_dir=path, split=split, streaming=streaming, **kwargs)
        return dataset if streaming else _encode_labels(dataset, label_column, class_names, path)
    # Only the builder's own files: img2dataset's `_stats.json` / `.parquet` beside its tar shards are not data.
    files = [f for f in files if f.lower().endswith(BUILDER_EXTENSIONS[builder])]
    if builder == "webdataset":
        for shard in files:  # a stream reads the headers as it goes: only each shard's end is checked up front
            _check_tar_end(shard) if streaming else _check_tar(shard)
    if builder == "parquet":
        for file in files:
            _check_parquet(file)
    if builder in ("csv", "json"):  # tables of paths: small, read whole to check every row, then streamed if asked
        dataset = datasets.concatenate_datasets(
            [_tabular(file, builder, image_column, label_column, **kwargs) for file in files]
        )
        dataset = _encode_labels(dataset, label_column, class_names, ", ".join(files))
        return dataset.to_iterable_dataset(num_shards=len(files)) if streaming else dataset
    dataset = datasets.load_dataset(builder, data_files={split: files}, split=split, streaming=streaming, **kwargs)
    dataset = _image_bytes_as_images(dataset, image_column)
    if not streaming:
        dataset = _encode_labels(dataset, label_column, class_names, ", ".join(files))
    return dataset


def _names_beside(path: str) -> list[str] | None:
    """The class names of a `classnames.txt` in the folder (or beside the file), one per line in label order, as
    CLIP_benchmark lays its sets out: integer labels then become a `ClassLabel` with those names."""
    names_file = os.path.join(path if os.path.isdir(path) else os.path.dirname(path), "classnames.txt")
    if not os.path.isfile(names_file):
        return None
    with open(names_file, encoding="utf-8") as file:
        return [line.strip() for line in file if line.strip()]


def data_files(path: str, split: str | None) -> tuple[list[str], str]:
    """The files of `split` under `path` (a file is its own single split) and the split name actually read.

    A folder with a single split (no `train`/`test` names in it) gives that split for any `split` asked, as
    many evaluation sets are one folder; with several, a missing split is an error listing those present.
    """
    if os.path.isfile(path):
        return [path], split or "train"
    from datasets.data_files import get_data_patterns, resolve_pattern

    try:
        patterns = get_data_patterns(path)
    except datasets.data_files.EmptyDatasetError as error:
        raise FileNotFoundError(f"{path} holds no data files.") from error

    def resolve(pattern: str) -> list[str]:  # a split has several patterns; those that match nothing are no error
        try:
            return resolve_pattern(pattern, path)
        except FileNotFoundError:
            return []

    splits = {str(name): [f for p in pats for f in resolve(p)] for name, pats in patterns.items()}
    wanted = split or "train"
    if wanted not in splits:
        if len(splits) != 1:
            raise ValueError(f"{path} has splits {sorted(splits)}, not {wanted!r}.")
        logger.info("%s has no %r split; reading its only split %r.", path, wanted, next(iter(splits)))
        wanted = next(iter(splits))
    files = sorted(f for f in splits[wanted] if not os.path.basename(f).startswith("."))
    if not files:
        raise FileNotFoundError(f"{path} holds no files for split {wanted!r}.")
    return files, wanted


def _file_format(files: list[str]) -> str:
    """The `datasets` builder for a split's files: webdataset, parquet, imagefolder, json or csv."""
    extensions = {os.path.splitext(f)[1].lower() for f in files}
    if ".tar" in extensions:
        return "webdataset"
    if ".parquet" in extensions:
        return "parquet"
    if extensions & set(IMAGE_EXTENSIONS):
        return "imagefolder"
    for builder in ("json", "csv"):
        if extensions & set(BUILDER_EXTENSIONS[builder]):
            return builder
    raise ValueError(f"No readable data among {files[:5]}: expected {', '.join(DATA_EXTENSIONS)} files.")


def local_format(path: str) -> str | None:
    """The builder a local folder is read with, from its first data file (a large image folder is not listed whole):
    "imagefolder", "webdataset", "parquet", "json", "csv", or None when it holds no data file."""
    for _, _, names in os.walk(path):
        for name in sorted(names):
            extension = os.path.splitext(name)[1].lower()
            if extension in IMAGE_EXTENSIONS:
                return "imagefolder"
            if extension == ".tar":
                return "webdataset"
            if extension in TABULAR_EXTENSIONS and not name.startswith(("metadata.", ".")):
                return TABULAR_EXTENSIONS[extension]
    return None


def has_metadata(path: str) -> bool:
    """Whether an image folder has a `metadata.jsonl` / `.csv` / `.parquet` (captions, labels) at its top or split
    level: `datasets` then reads labels from it, not from the folder names."""
    folders = [path, *(entry.path for entry in os.scandir(path) if entry.is_dir())]
    names = ("metadata.jsonl", "metadata.csv", "metadata.parquet")
    return any(os.path.isfile(os.path.join(folder, name)) for folder in folders for name in names)


def _check_tar(shard: str) -> None:
    """Read a tar shard's headers through; a truncated or corrupt shard is an error naming it."""
    try:
        size = os.path.getsize(shard)
        with tarfile.open(shard, "r:") as tar:
            for member in tar:
                if member.isfile() and member.offset_data + member.size > size:
                    raise tarfile.ReadError(f"{member.name} ends past the end of the file")
    except (tarfile.TarError, OSError, EOFError) as error:
        raise ValueError(f"{shard} is an unreadable or truncated tar shard: {error}") from error


def _check_tar_end(shard: str) -> None:
    """A tar shard ends in tar's end-of-archive marker (zero blocks): a cheap test for a truncated download or copy,
    one read per shard, for streamed pools of thousands of shards where reading every header would take hours."""
    try:
        size = os.path.getsize(shard)
        with open(shard, "rb") as file:
            file.seek(max(0, size - 1024))
            end = file.read(1024)
    except OSError as error:
        raise ValueError(f"{shard} is unreadable: {error}") from error
    if size < 1024 or size % 512 or any(end):
        raise ValueError(f"{shard} is truncated: it does not end in tar's end-of-archive blocks.")


def _check_parquet(file: str) -> None:
    """A parquet file's footer reads (one small read): a truncated or foreign file is an error naming it."""
    try:
        pq.read_metadata(file)
    except (pa.ArrowException, OSError) as error:
        raise ValueError(f"{file} is not a readable parquet file: {error}") from error


def _tabular(file: str, builder: str, image_column: str | None, label_column: str | None, **kwargs):
    options = {"delimiter": "\t"} if file.lower().endswith(".tsv") else {}
    try:
        dataset = datasets.load_dataset(builder, data_files={"train": [file]}, split="train", **options, **kwargs)
    except datasets.exceptions.DatasetGenerationError as error:
        raise ValueError(f"{file} could not be read as {builder}: {error.__cause__ or error}") from error
    columns = [image_column] if image_column else _path_columns(dataset)
    for column in columns:
        if column not in dataset.column_names:
            raise KeyError(f"{file}: the image column {column!r} is missing; the file has {dataset.column_names}.")
        dataset = _resolve_paths(dataset, column, file)
    return dataset


def _resolve_paths(dataset, column: str, file: str):
    """`column`'s paths made absolute (relative ones against the file's folder), checked, cast to `Image()`."""
    folder = os.path.dirname(os.path.abspath(file))
    resolved = []
    for row, value in enumerate(dataset[column]):
        where = f"{file}, row {row} ({_line(file, row)})"
        if not isinstance(value, str) or not value:
            raise ValueError(f"{where}: the image column {column!r} holds {value!r}, not a path.")
        if "://" in value:
            resolved.append(value)
            continue
        full = value if os.path.isabs(value) else os.path.join(folder, value)
        if not os.path.isfile(full):
            raise FileNotFoundError(f"{where}: image {value!r} not found (looked for {full}).")
        resolved.append(full)
    order = dataset.column_names
    dataset = dataset.remove_columns(column).add_column(column, resolved).select_columns(order)
    return dataset.cast_column(column, datasets.Image())


def _line(file: str, row: int) -> str:
    """Where a data row sits in its file, for error messages."""
    if file.lower().endswith((".csv", ".tsv")):
        return f"line {row + 2}"  # after the header
    return f"line {row + 1}" if file.lower().endswith(".jsonl") else f"item {row}"


def _path_columns(dataset) -> list[str]:
    """The columns of image paths: string columns with a known name (`image_path`, `filepath`, ...) or whose first
    value ends in an image extension. All are cast to images, so that a door's `--image_column` picks among them."""
    strings = [
        name for name, f in dataset.features.items() if isinstance(f, datasets.Value) and f.dtype in STRING_TYPES
    ]
    first = dataset[0] if len(dataset) else {}
    valued = [name for name in strings if str(first.get(name) or "").lower().endswith(IMAGE_EXTENSIONS)]
    named = [name for name in IMAGE_PATH_COLUMNS if name in strings]
    return list(dict.fromkeys(named + valued))


def _image_bytes_as_images(dataset, image_column: str | None):
    """Cast columns of image bytes (`{bytes, path}` structs, binary `jpg`/`png`/`webp`/`image`) to `Image()`."""
    features = dataset.features
    if features is None:
        return dataset
    for name, feature in features.items():
        if isinstance(feature, datasets.Image):
            continue
        is_struct = isinstance(feature, dict) and set(feature) == {"bytes", "path"}
        is_binary = isinstance(feature, datasets.Value) and pa.types.is_binary(feature.pa_type)
        named = name == image_column or name in ("image", "img", "jpg", "jpeg", "png", "webp")
        if is_struct or (is_binary and named):
            dataset = dataset.cast_column(name, datasets.Image())
    return dataset


def _encode_labels(dataset, label_column: str | None, class_names: list[str] | None, source: str):
    """A label column of class names as a `ClassLabel`; labels checked against `class_names` when given."""
    column = label_column or next((name for name in LABEL_NAMES if name in (dataset.column_names or [])), None)
    if column is None:
        return dataset
    if column not in dataset.column_names:
        raise KeyError(f"{source}: the label column {column!r} is missing; columns are {dataset.column_names}.")
    feature = dataset.features[column]
    if isinstance(feature, datasets.ClassLabel):  # folder names (wnids) with curated class names are fine
        if class_names and len(class_names) != feature.num_classes:
            raise ValueError(f"{source}: {feature.num_classes} labels, but the class list has {len(class_names)}.")
        return dataset
    if not isinstance(feature, datasets.Value):
        return dataset
    values = dataset[column]
    if feature.dtype in STRING_TYPES:
        names = list(class_names) if class_names else sorted({v for v in values if v is not None})
        index = {name: i for i, name in enumerate(names)}
        bad = next((row for row, value in enumerate(values) if value not in index), None)
        if bad is not None:
            raise ValueError(f"{source}, row {bad}: label {values[bad]!r} is not in the class list {names[:20]}.")
        return dataset.cast_column(column, datasets.ClassLabel(names=names))  # ClassLabel casts names to ids
    if class_names and feature.dtype.startswith("int"):
        bad = next((row for row, value in enumerate(values) if not 0 <= int(value) < len(class_names)), None)
        if bad is not None:
            raise ValueError(
                f"{source}, row {bad}: label {values[bad]} is outside the class list (0..{len(class_names) - 1})."
            )
        return dataset.cast_column(column, datasets.ClassLabel(names=list(class_names)))
    return dataset
