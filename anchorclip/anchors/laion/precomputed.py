"""A pool of precomputed CLIP embeddings in the layout LAION publishes them, read shard by shard.

    pool/
      img_emb/img_emb_0000.npy            float16 (n_0, d), L2-normalised; row i is metadata row i
      text_emb/text_emb_0000.npy          optional: the captions' embeddings, same rows
      metadata/metadata_0000.parquet      one row per embedding: url, caption (+ key, similarity, NSFW, ...)
      anchorclip_pool.json                optional: {"model": "<the CLIP the pool was embedded with>"}

(clip-retrieval's `clip_inference` writes this; LAION-400M/-5B's "embeddings" folders are it.) Shards are paired
by their number, and `validate` checks that every shard has its metadata, the same row count in each file and one
dimension throughout, naming the file that does not. Nothing is loaded: the embeddings are memory-mapped
(`np.load(mmap_mode="r")`), the row counts come from the `.npy` headers and parquet footers.

The pool has no image bytes: anchors retrieved from it carry the pool's `url` and caption, and the images are
downloaded afterwards (docs/retrieval.md). Rows are taken to be valid embeddings (clip-retrieval writes only the
images it could decode), so `store().valid` is a zero-memory all-True view.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from anchorclip.anchors.pool.store import EmbeddingStore

KIND_FOLDERS = {"image": ("img_emb", "img_emb"), "text": ("text_emb", "text_emb")}
METADATA = ("metadata", "metadata")
POOL_FILE = "anchorclip_pool.json"
URL_COLUMNS = ("url", "URL", "image_url")
CAPTION_COLUMNS = ("caption", "TEXT", "text", "alt")


class PoolError(ValueError):
    """A precomputed pool folder that does not have the layout or is inconsistent; the message names the file."""


def _numbered(folder: str, prefix: str, suffix: str) -> dict[int, str]:
    pattern = re.compile(rf"{re.escape(prefix)}_(\d+){re.escape(suffix)}$")
    if not os.path.isdir(folder):
        return {}
    found = {}
    for name in os.listdir(folder):
        match = pattern.match(name)
        if match:
            found[int(match.group(1))] = os.path.join(folder, name)
    return found


def _open_npy(path: str) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r")
    except Exception as error:  # a truncated or non-npy file: numpy's own message does not say which file
        raise PoolError(f"{path}: not a readable .npy file ({error}).") from error
    if array.ndim != 2 or array.dtype not in (np.float16, np.float32):
        raise PoolError(f"{path}: expected a 2-d float16/float32 array, got shape {array.shape} {array.dtype}.")
    return array


def _parquet_rows(path: str) -> int:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).metadata.num_rows
    except Exception as error:
        raise PoolError(f"{path}: not a readable parquet file ({error}).") from error


@dataclass
class PrecomputedPool:
    """The validated shards of a pool folder: `shards` (numbers), `rows` per shard, `dim`, `kinds` present."""

    path: str
    shard_numbers: list[int]
    rows: np.ndarray
    dim: int
    files: dict[str, list[str]]  # "image" / "text" / "metadata" -> file per shard
    info: dict

    @classmethod
    def open(cls, path: str) -> PrecomputedPool:
        """Read and validate the folder's layout (headers and footers only)."""
        path = os.path.abspath(path)
        if not os.path.isdir(path):
            raise PoolError(f"{path}: no such pool folder.")
        found = {
            kind: _numbered(os.path.join(path, folder), prefix, ".npy")
            for kind, (folder, prefix) in KIND_FOLDERS.items()
        }
        found["metadata"] = _numbered(os.path.join(path, METADATA[0]), METADATA[1], ".parquet")
        if not found["image"] and not found["text"]:
            raise PoolError(f"{path}: no img_emb/img_emb_*.npy or text_emb/text_emb_*.npy files.")
        if not found["metadata"]:
            raise PoolError(f"{path}: no metadata/metadata_*.parquet files (url and caption per row).")
        numbers = sorted(found["metadata"])
        for kind in ("image", "text"):
            if found[kind] and sorted(found[kind]) != numbers:
                missing = sorted(set(numbers) ^ set(found[kind]))[:5]
                raise PoolError(
                    f"{path}: {KIND_FOLDERS[kind][0]}/ and metadata/ do not have the same shards "
                    f"(unpaired shard numbers {missing})."
                )
        kinds = [kind for kind in ("image", "text") if found[kind]]
        rows, dim = np.zeros(len(numbers), np.int64), None
        for i, number in enumerate(numbers):
            rows[i] = _parquet_rows(found["metadata"][number])
            for kind in kinds:
                array = _open_npy(found[kind][number])
                if array.shape[0] != rows[i]:
                    raise PoolError(
                        f"{found[kind][number]}: {array.shape[0]} rows, but {found['metadata'][number]} has {rows[i]}."
                    )
                if dim is not None and array.shape[1] != dim:
                    raise PoolError(f"{found[kind][number]}: dimension {array.shape[1]}, other shards have {dim}.")
                dim = array.shape[1]
        if dim is None:
            raise PoolError(f"{path}: no embedding shards to read the dimension from.")
        info = {}
        if os.path.exists(os.path.join(path, POOL_FILE)):
            with open(os.path.join(path, POOL_FILE)) as file:
                info = json.load(file)
        files = {kind: [found[kind][n] for n in numbers] for kind in [*kinds, "metadata"]}
        return cls(path, numbers, rows, int(dim), files, info)

    @property
    def num_rows(self) -> int:
        return int(self.rows.sum())

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.rows)]).astype(np.int64)

    @property
    def kinds(self) -> list[str]:
        return [kind for kind in ("image", "text") if kind in self.files]

    @property
    def model(self) -> str | None:
        """The CLIP the pool was embedded with, where `anchorclip_pool.json` says it."""
        return self.info.get("model")

    def store(self, kind: str = "image") -> EmbeddingStore:
        """The embeddings of `kind` as a memory-mapped `EmbeddingStore` (row i = pool row i)."""
        if kind not in self.files:
            raise PoolError(f"{self.path}: no {KIND_FOLDERS[kind][0]}/ folder, needed for the {kind} embeddings.")
        shards = [np.load(file, mmap_mode="r") for file in self.files[kind]]
        return EmbeddingStore(
            os.path.join(self.path, KIND_FOLDERS[kind][0]),
            shards,
            self.offsets,
            np.broadcast_to(np.True_, (self.num_rows,)),
        )

    @cached_property
    def columns(self) -> list[str]:
        import pyarrow.parquet as pq

        return list(pq.ParquetFile(self.files["metadata"][0]).schema_arrow.names)

    def column(self, candidates: tuple[str, ...]) -> str:
        for name in candidates:
            if name in self.columns:
                return name
        raise PoolError(f"{self.files['metadata'][0]}: none of the columns {list(candidates)} (has {self.columns}).")

    def metadata(self, rows: np.ndarray, columns: list[str]) -> dict[str, list]:
        """`columns` of the given pool rows, in the given order; only the shards holding them are read."""
        import pyarrow.parquet as pq

        rows = np.asarray(rows, dtype=np.int64)
        shard_of = np.searchsorted(self.offsets, rows, side="right") - 1
        out = {name: [None] * len(rows) for name in columns}
        for shard in np.unique(shard_of):
            where = np.nonzero(shard_of == shard)[0]
            table = pq.read_table(self.files["metadata"][shard], columns=columns)
            taken = table.take(rows[where] - self.offsets[shard]).to_pydict()
            for name in columns:
                for i, value in zip(where, taken[name]):
                    out[name][i] = value
        return out


def check_model(pool: PrecomputedPool, model_name: str, dim: int, encode_text=None, samples: int = 16) -> float | None:
    """Refuse a model other than the one the pool was embedded with (queries and pool must share one space).

    Checks the dimension, the model named in `anchorclip_pool.json` if any, and, where the pool has caption
    embeddings, that `encode_text` (the model's text tower) reproduces the first `samples` of them: returns their
    mean cosine (None without text embeddings). Below 0.5 the spaces are unrelated, an error; below 0.98 a warning.
    """
    import logging

    if pool.dim != dim:
        raise PoolError(
            f"{pool.path}: embeddings of dimension {pool.dim}, but {model_name} embeds into {dim}: "
            "query with the CLIP the pool was embedded with."
        )
    if pool.model and pool.model != model_name:
        raise PoolError(f"{pool.path}: embedded with {pool.model} ({POOL_FILE}), not {model_name}.")
    if encode_text is None or "text" not in pool.files:
        return None
    first = np.asarray(np.load(pool.files["text"][0], mmap_mode="r")[:samples], dtype=np.float32)
    captions = pool.metadata(np.arange(len(first)), [pool.column(CAPTION_COLUMNS)])[pool.column(CAPTION_COLUMNS)]
    agreement = float(np.mean(np.sum(encode_text([str(c) for c in captions]) * first, axis=1)))
    if agreement < 0.5:
        raise PoolError(
            f"{pool.path}: {model_name}'s text tower does not reproduce the pool's caption embeddings "
            f"(mean cosine {agreement:.3f}): the pool was embedded with another model."
        )
    if agreement < 0.98:
        logging.getLogger(__name__).warning(
            "%s reproduces the pool's caption embeddings only to a mean cosine of "
            "%.3f: another preprocessing or precision?",
            model_name,
            agreement,
        )
    return agreement
