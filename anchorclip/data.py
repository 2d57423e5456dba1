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

IMAGE_COLUMNS = ("image", "img", "jpg", "png", "pixel_values")
LABEL_COLUMNS = ("label", "labels", "class", "fine_label")
CAPTION_COLUMNS = ("caption", "text", "txt", "captions", "sentence")


class ColumnError(KeyError):
    """A required column is missing; the message names it and lists the columns that exist."""

    def __str__(self) -> str:  # KeyError would print the message wrapped in quotes
        return str(self.args[0])


def load_dataset_any(spec: str, split: str | None = "train", streaming: bool = False, **kwargs):
    """Load a dataset from a Hub id, a local image folder, or a folder written by `save_to_disk`.

    `spec` may carry the split after a colon (`"path/to/data:validation"`), which wins over `split`.
    """
    if ":" in spec and not os.path.exists(spec) and not spec.startswith(("hf://", "http")):
        spec, split = spec.rsplit(":", 1)
    if os.path.isdir(spec):
        if _is_saved_dataset(spec):
            loaded = datasets.load_from_disk(spec)
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise ValueError(f"{spec} has splits {list(loaded)}, not {split!r}.")
                loaded = loaded[split]
            return loaded.to_iterable_dataset() if streaming else loaded
        return datasets.load_dataset("imagefolder", data_dir=spec, split=split, streaming=streaming, **kwargs)
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
    raise ColumnError(
        f"No {what} column found (looked for {list(candidates)}); the dataset has columns {columns}. "
        f"Name it explicitly with the matching `*_column` argument."
    )


def class_names_from_features(dataset, label_column: str) -> list[str] | None:
    """The class names of a `ClassLabel` column, or None when the column is a plain integer."""
    feature = (dataset.features or {}).get(label_column)
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    return None


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
