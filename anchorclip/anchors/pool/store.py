"""The embedding cache of a pool column: what it is keyed by (model, pool, column, preprocessing, precision), where
it lives, its files, and `EmbeddingStore`, the embeddings read back (memory-mapped, row `i` = pool row `i`).

Written by `anchorclip.anchors.pool.embed_column`, which describes the shard layout; undecodable images (and empty
captions) are all-zero rows, marked invalid (`EmbeddingStore.valid`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from anchorclip.anchors.shards import num_chunks, write_json_atomic

if TYPE_CHECKING:
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

KINDS = ("image", "text")
CACHE_FORMAT_VERSION = 1


def default_cache_dir() -> str:
    """`$ANCHORCLIP_CACHE`, else `$HF_HOME/anchorclip/embeddings` (beside the datasets and models caches)."""
    if os.environ.get("ANCHORCLIP_CACHE"):
        return os.environ["ANCHORCLIP_CACHE"]
    from huggingface_hub.constants import HF_HOME

    return os.path.join(HF_HOME, "anchorclip", "embeddings")


# ----------------------------------------------------------------------------------------------------------
# What the cache is keyed by
# ----------------------------------------------------------------------------------------------------------


def model_fingerprint(model: PreTrainedModel) -> str:
    """A short digest of the config and weights, so two checkpoints with the same name (or none) never share a
    cache, and one checkpoint keeps its caches wherever it lies (a moved folder, a Hub id or its local download).

    Hashing every parameter of a ViT-L would take seconds; a strided sample of each tensor plus its sum
    separates any two checkpoints that differ in training, at a cost of milliseconds.
    """
    config = model.config.to_dict()
    config.pop("_name_or_path", None)
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, param in model.state_dict().items():
            flat = param.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 256)][:256].float().cpu()
            digest.update(name.encode())
            digest.update(sample.numpy().tobytes())
            digest.update(np.float64(flat.double().sum().item()).tobytes())
    return digest.hexdigest()[:16]


def dataset_fingerprint(dataset, spec: str | None = None, split: str | None = None) -> str:
    """Identify a pool: its spec (+ split) when it was named, else the `datasets` fingerprint.

    A spec identifies the rows whether they are streamed or not, so a streamed and a downloaded copy of the
    same pool share one cache. Local paths are made absolute so the working directory does not matter.
    """
    if spec is not None:
        name = os.path.abspath(spec) if os.path.exists(spec) else spec
        return f"{name}:{split}"
    fingerprint = getattr(dataset, "_fingerprint", None)
    if fingerprint:
        return f"fingerprint:{fingerprint}"
    # An IterableDataset built in memory has no fingerprint; its description is the best we have.
    logger.warning(
        "The pool is an IterableDataset without a fingerprint; its embedding cache is keyed by its features "
        "and name only. Pass `pool_id=` to key it explicitly."
    )
    info = getattr(dataset, "info", None)
    description = repr((getattr(info, "dataset_name", None), dataset.features))
    return "iterable:" + hashlib.sha256(description.encode()).hexdigest()


def cache_key(kind: str, model_id: str, pool_id: str, column: str, preprocessing: str, precision: str) -> dict:
    return {
        "version": CACHE_FORMAT_VERSION,
        "kind": kind,
        "model": model_id,
        "pool": pool_id,
        "column": column,
        "preprocessing": preprocessing,
        "precision": precision,
    }


def cache_path(cache_dir: str, key: dict) -> str:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return os.path.join(cache_dir, f"{key['kind']}-{digest}")


# ----------------------------------------------------------------------------------------------------------
# The embeddings, as read back from disk
# ----------------------------------------------------------------------------------------------------------


@dataclass
class EmbeddingStore:
    """Row-aligned, L2-normalised embeddings of one pool column, memory-mapped from their shards.

    Row `i` is the embedding of pool row `i`; `valid[i]` is False where the cell could not be embedded
    (undecodable image, missing caption) and the row is all zeros.
    """

    path: str
    shards: list[np.ndarray]
    offsets: np.ndarray  # offsets[s] is the first row of shard s; offsets[-1] == num_rows
    valid: np.ndarray

    @classmethod
    def from_arrays(cls, embeddings: np.ndarray, path: str = "<memory>") -> EmbeddingStore:
        embeddings = np.asarray(embeddings)
        valid = np.linalg.norm(embeddings.astype(np.float32), axis=1) > 0.5
        return cls(path, [embeddings], np.array([0, len(embeddings)]), valid)

    @classmethod
    def load(cls, path: str) -> EmbeddingStore:
        with open(os.path.join(path, "meta.json")) as file:
            meta = json.load(file)
        shards = [np.load(os.path.join(path, name), mmap_mode="r") for name in cache_files(meta)]
        offsets = np.concatenate([[0], np.cumsum([len(shard) for shard in shards])]).astype(np.int64)
        if offsets[-1] != meta["num_rows"]:
            raise RuntimeError(
                f"Embedding cache {path} is inconsistent ({offsets[-1]} rows, expected "
                f"{meta['num_rows']}); delete the folder to recompute it."
            )
        valid = (
            np.concatenate([np.linalg.norm(np.asarray(s, np.float32), axis=1) > 0.5 for s in shards])
            if shards
            else np.zeros(0, bool)
        )
        return cls(path, shards, offsets, valid)

    @property
    def num_rows(self) -> int:
        return int(self.offsets[-1])

    @property
    def dim(self) -> int:
        return int(self.shards[0].shape[1]) if self.shards else 0

    def __len__(self) -> int:
        return self.num_rows

    def chunks(self, rows: int = 65536) -> Iterator[tuple[int, np.ndarray]]:
        """`(first_row, float32 block)` pairs covering the store, so nothing needs all rows in memory."""
        for start_of_shard, shard in zip(self.offsets[:-1], self.shards):
            for start in range(0, len(shard), rows):
                yield int(start_of_shard) + start, np.asarray(shard[start : start + rows], dtype=np.float32)

    def gather(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """The float32 embeddings of the given rows, in the given order."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.zeros((len(rows), self.dim), dtype=np.float32)
        shard_of = np.searchsorted(self.offsets, rows, side="right") - 1
        for shard in np.unique(shard_of):
            where = np.nonzero(shard_of == shard)[0]
            out[where] = self.shards[shard][rows[where] - self.offsets[shard]]
        return out

    def prefetch(self, rows: Sequence[int] | np.ndarray) -> None:
        """Start reading the given rows of file-backed shards now, all at once (`posix_fadvise(WILLNEED)` a row).

        A `gather` of rows that are not in the page cache faults them in one after another, and each fault also
        reads the kernel's readahead window around its row; after `prefetch` it waits for one round of concurrent
        reads of just those rows. That is what re-ranking a query's shortlist from a pool far larger than RAM
        (410 GB of float16 at 400M rows) spends its time on: 200 random rows of the 8M benchmark pool, its pages
        out of the page cache, took ~1 s by `gather` alone on a disk with an 8 MiB readahead window and 2.5-3 ms
        after `prefetch`; on rows already cached it costs ~0.3 ms (benchmarks/pool_reads.py). A no-op for in-memory
        shards.
        """
        if not hasattr(os, "posix_fadvise"):
            return
        rows = np.asarray(rows, dtype=np.int64)
        shard_of = np.searchsorted(self.offsets, rows, side="right") - 1
        for shard in np.unique(shard_of):
            array = self.shards[shard]
            if not isinstance(array, np.memmap) or array.filename is None:
                continue
            size = array.shape[1] * array.itemsize
            descriptor = os.open(array.filename, os.O_RDONLY)
            try:
                for row in rows[shard_of == shard] - self.offsets[shard]:
                    os.posix_fadvise(descriptor, array.offset + int(row) * size, size, os.POSIX_FADV_WILLNEED)
            finally:
                os.close(descriptor)

    def to_numpy(self) -> np.ndarray:
        return (
            np.concatenate([np.asarray(s, dtype=np.float32) for s in self.shards])
            if self.shards
            else np.zeros((0, self.dim), np.float32)
        )


def shard_file(path: str, shard: int) -> str:
    return os.path.join(path, f"shard-{shard:06d}.npy")


def cache_files(meta: dict) -> list[str]:
    """The files of a complete cache, in row order: a streamed pool's are listed, a map-style pool's numbered."""
    if "files" in meta:
        return list(meta["files"])
    return [f"shard-{s:06d}.npy" for s in range(num_chunks(meta["num_rows"], meta["shard_size"]))]


def chunk_name(source: int, num_sources: int, chunk: int) -> str:
    # The file count is in the name: chunks of a stream cut into another number of files never mix with these.
    return f"stream-{source:05d}of{num_sources:05d}-{chunk:06d}.npy"


def source_marker(path: str, source: int, num_sources: int) -> str:
    return os.path.join(path, f"stream-{source:05d}of{num_sources:05d}.json")


def write_cache_json(path: str, content: dict) -> None:
    # Atomic (see anchorclip.anchors.shards), in the cache's format: indented by 2, ASCII.
    write_json_atomic(path, content, indent=2, ensure_ascii=True)
