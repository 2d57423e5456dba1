"""Loading image datasets and checking them before hours of compute depend on them.

One place decides how a dataset spec (Hub id, local `imagefolder`, `save_to_disk` folder) becomes a
`datasets.Dataset`, how columns are found, and how an image cell becomes a PIL image. Image columns are
read with `decode=False` so that one corrupt file is a countable event, not an exception deep inside a
dataloader worker hours into a run.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Sequence

import datasets
from PIL import Image

logger = logging.getLogger(__name__)

IMAGE_COLUMNS = ("image", "img", "jpg", "png", "webp", "jpeg", "image_path", "filepath", "file_name", "pixel_values")
LABEL_COLUMNS = ("label", "labels", "class", "cls", "fine_label", "class_name")
CAPTION_COLUMNS = ("caption", "text", "txt", "captions", "sentence")
ROW_INDEX_COLUMN = "row_index"  # the key of a captions table made without an id column: the finetune row number


class ColumnError(KeyError):
    """A required column is missing; the message names it and lists the columns that exist."""

    def __str__(self) -> str:  # KeyError would print the message wrapped in quotes
        return str(self.args[0])


def load_dataset_any(
    spec: str,
    split: str | None = "train",
    streaming: bool = False,
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    class_names: list[str] | None = None,
    **kwargs,
):
    """Load a dataset from a Hub id, a `save_to_disk` folder, or local data files and folders.

    Local data (see `anchorclip.data_formats`): CSV / JSON / JSON Lines with image paths (relative to the file),
    parquet files or folders with image bytes (Hugging Face exports, img2dataset), folders of webdataset tar
    shards, ImageFolders (with `metadata.jsonl` captions). `spec` may carry the split after a colon
    (`"path/to/data:validation"`), which wins over `split`. A spec that looks local and does not exist is an error
    naming it, never a Hub lookup. `image_column` / `label_column` name the columns of a CSV / JSON file where
    they cannot be detected; `class_names` checks (and encodes) its labels against a class list.
    """
    from anchorclip.data_formats import load_local, looks_local

    if ":" in spec and not os.path.exists(spec) and not spec.startswith(("hf://", "http")):
        spec, split = spec.rsplit(":", 1)
    if os.path.isdir(spec) and _is_saved_dataset(spec):
        loaded = datasets.load_from_disk(spec)
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"{spec} has splits {list(loaded)}, not {split!r}.")
            loaded = loaded[split]
        return loaded.to_iterable_dataset() if streaming else loaded
    if os.path.exists(spec) or looks_local(spec):
        return load_local(
            spec,
            split,
            streaming,
            image_column=image_column,
            label_column=label_column,
            class_names=class_names,
            **kwargs,
        )
    return datasets.load_dataset(spec, split=split, streaming=streaming, **kwargs)


def _is_saved_dataset(path: str) -> bool:
    names = set(os.listdir(path))
    return bool({"dataset_info.json", "state.json", "dataset_dict.json"} & names)


def find_column(dataset, preferred: str | None, candidates: Sequence[str], what: str) -> str:
    """Return the column to use for `what` (an explicit name, else the first candidate present)."""
    columns = list(dataset.column_names or dataset.features or [])
    if preferred is not None:
        if preferred not in columns:
            raise ColumnError(f"The {what} column {preferred!r} is missing; the dataset has columns {columns}.")
        return preferred
    for name in candidates:
        if name in columns:
            return name
    typed = _columns_of_type(dataset, what)
    if len(typed) == 1:  # no known name, but a single column of the right type (an image, a class label)
        return typed[0]
    raise ColumnError(
        f"No {what} column found (looked for {list(candidates)}); the dataset has columns {columns}. "
        f"Name it explicitly with the matching `*_column` argument."
    )


def _columns_of_type(dataset, what: str) -> list[str]:
    kind = datasets.Image if "image" in what else datasets.ClassLabel if "label" in what else None
    features = dataset.features or {}
    return [name for name, feature in features.items() if kind is not None and isinstance(feature, kind)]


def class_names_from_features(dataset, label_column: str) -> list[str] | None:
    """The class names of a `ClassLabel` column, or None when the column is a plain integer."""
    feature = (dataset.features or {}).get(label_column)
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    return None


def join_captions(finetune, captions, caption_column: str | None = None):
    """Join a captions table (`anchorclip caption`'s output) to the finetune rows by id.

    The table has two columns: a key, `row_index` (the finetune row number) or a finetune column holding a stable
    id, and the caption, null where the captioner could not decode the image. Returns `(finetune, captions)`
    row-aligned: the finetune rows that have a caption (by `select`, an index mapping: no image is rewritten) and
    a table of their captions. Every finetune row must have an entry in the table; extra entries are ignored.
    """
    caption_column = find_column(captions, caption_column, CAPTION_COLUMNS, "caption")
    keys = [name for name in captions.column_names if name != caption_column]
    if len(keys) != 1:
        raise ValueError(
            f"A captions table has two columns, an id and a caption (see `anchorclip caption`); this one has "
            f"{captions.column_names}. A dataset that holds both images and captions is a finetune set: pass it as "
            "the finetune dataset instead."
        )
    key = keys[0]
    if key == ROW_INDEX_COLUMN:
        finetune_ids = list(range(len(finetune)))
    elif key in finetune.column_names:
        finetune_ids = finetune.select_columns([key])[key]
    else:
        raise ValueError(
            f"The captions are keyed by {key!r}, which is not a column of the finetune set "
            f"(it has {finetune.column_names})."
        )
    table_ids, texts = captions[key], captions[caption_column]
    position = {value: row for row, value in enumerate(table_ids)}
    if len(position) != len(table_ids):
        raise ValueError(f"The captions table repeats ids in its {key!r} column.")
    missing = [value for value in finetune_ids if value not in position]
    if missing:
        raise ValueError(
            f"{len(missing)} of the {len(finetune)} finetune rows have no entry in the captions table (e.g. {key} "
            f"{missing[:5]}): the captions were made for another dataset, or for part of this one."
        )
    rows = [row for row, value in enumerate(finetune_ids) if texts[position[value]] is not None]
    if not rows:
        raise ValueError("No finetune row has a caption: the captioner could decode none of the images.")
    if len(rows) < len(finetune):
        left_out = len(finetune) - len(rows)
        logger.warning("%d finetune rows have no caption (undecodable images) and are left out.", left_out)
        finetune = finetune.select(rows)
    return finetune, captions.select([position[finetune_ids[row]] for row in rows]).select_columns([caption_column])


def with_raw_images(dataset, image_column: str):
    """Stop `datasets` from decoding `image_column` itself, so `decode_image` can catch bad files."""
    feature = (dataset.features or {}).get(image_column)
    if isinstance(feature, datasets.Image) and feature.decode:
        return dataset.cast_column(image_column, datasets.Image(decode=False))
    return dataset


def decode_image(value) -> Image.Image | None:
    """An RGB PIL image from a dataset cell (PIL image, `{"bytes", "path"}` dict, path, bytes), or None."""
    try:
        if isinstance(value, Image.Image):
            image = value
        elif isinstance(value, dict):
            if value.get("bytes"):
                image = Image.open(io.BytesIO(value["bytes"]))
            elif value.get("path"):
                image = Image.open(value["path"])
            else:
                return None
        elif isinstance(value, (bytes, bytearray)):
            image = Image.open(io.BytesIO(value))
        elif isinstance(value, str):
            image = Image.open(value)
        else:
            return None
        image.load()  # force the decode here, inside the try, rather than lazily later
        return image.convert("RGB")
    except Exception as error:  # noqa: BLE001 - PIL raises many types for corrupt files
        logger.debug("Undecodable image: %s", error)
        return None
