"""Embedding a dataset column with CLIP once, into resumable `.npy` shards on disk.

A pool like CC3M takes hours to embed, so the work is cut into shards of `shard_size` rows, each written
atomically as one float16 `.npy` file as soon as it is done. An interrupted run resumes at the first
missing shard; a later run with the same model, pool and column reads the shards and embeds nothing.
Shards are dealt round-robin to Accelerate processes (`shard % num_processes == process_index`), so
`accelerate launch` splits the work without changing what ends up on disk.

A streamed pool (`IterableDataset`) cannot be sliced, so it is cut into its files (`datasets`' shards, in
stream order) and process `p` reads only files `f % num_processes == p`, as
`datasets.distributed.split_dataset_by_node(strategy="shards")` would deal them. A file's rows are cached as
chunks of `shard_size` rows named by the file (`stream-<f>of<n>-<chunk>.npy`), and a small marker records its
row count once it has been read through; when every file is done, `meta.json` lists the chunks in stream
order. Row `i` of the store is therefore row `i` of the whole stream whatever the process count, and a run
resumed on another process count reuses every finished file. (`split_dataset_by_node` itself is not used: it
hands a process its files as one stream, whose rows cannot be numbered without the earlier files' lengths.)

Undecodable images (and empty captions) are stored as all-zero rows: they are counted, never returned
by a search (see `EmbeddingStore.valid`), and keep row `i` of the store equal to row `i` of the pool.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import datasets
import numpy as np
import torch
from tqdm.auto import tqdm

from .anchors.shards import num_chunks, read_json, save_npy_atomic, write_json_atomic
from .data import decode_image, with_raw_images
from .transforms import ImageTransform

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


def model_fingerprint(model: torch.nn.Module) -> str:
    """A short digest of the weights, so two checkpoints with the same name (or none) never share a cache.

    Hashing every parameter of a ViT-L would take seconds; a strided sample of each tensor plus its sum
    separates any two checkpoints that differ in training, at a cost of milliseconds.
    """
    digest = hashlib.sha256(str(getattr(model.config, "_name_or_path", "")).encode())
    digest.update(model.config.to_json_string(use_diff=False).encode())
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
        shards = [np.load(os.path.join(path, name), mmap_mode="r") for name in _cache_files(meta)]
        offsets = np.concatenate([[0], np.cumsum([len(shard) for shard in shards])]).astype(np.int64)
        if offsets[-1] != meta["num_rows"]:
            raise RuntimeError(f"Embedding cache {path} is inconsistent ({offsets[-1]} rows, expected "
                               f"{meta['num_rows']}); delete the folder to recompute it.")
        valid = np.concatenate([np.linalg.norm(np.asarray(s, np.float32), axis=1) > 0.5 for s in shards]) \
            if shards else np.zeros(0, bool)
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

    def to_numpy(self) -> np.ndarray:
        return np.concatenate([np.asarray(s, dtype=np.float32) for s in self.shards]) if self.shards else \
            np.zeros((0, self.dim), np.float32)


def _shard_file(path: str, shard: int) -> str:
    return os.path.join(path, f"shard-{shard:06d}.npy")


def _cache_files(meta: dict) -> list[str]:
    """The files of a complete cache, in row order: a streamed pool's are listed, a map-style pool's numbered."""
    if "files" in meta:
        return list(meta["files"])
    return [f"shard-{s:06d}.npy" for s in range(num_chunks(meta["num_rows"], meta["shard_size"]))]


def _chunk_name(source: int, num_sources: int, chunk: int) -> str:
    # The file count is in the name: chunks of a stream cut into another number of files never mix with these.
    return f"stream-{source:05d}of{num_sources:05d}-{chunk:06d}.npy"


def _source_marker(path: str, source: int, num_sources: int) -> str:
    return os.path.join(path, f"stream-{source:05d}of{num_sources:05d}.json")


def _write_json(path: str, content: dict) -> None:
    # Atomic (see anchorclip.anchors.shards), in the cache's format: indented by 2, ASCII.
    write_json_atomic(path, content, indent=2, ensure_ascii=True)


# ----------------------------------------------------------------------------------------------------------
# Encoders: a batch of cells -> normalised float16 rows (+ which rows were valid)
# ----------------------------------------------------------------------------------------------------------


def _features(output) -> torch.Tensor:
    # transformers >= 5 returns a model output whose `pooler_output` holds the projected features;
    # older versions returned the tensor itself.
    return output.pooler_output if hasattr(output, "pooler_output") else output


class ImageEncoder:
    """Decode, preprocess (the CLIP processor's resize/crop/normalise) and embed a batch of image cells."""

    def __init__(self, model, image_processor, device: torch.device, num_workers: int = 0, autocast=None):
        self.model, self.device, self.autocast = model, device, autocast
        self.transform = ImageTransform.from_image_processor(image_processor)
        # PIL releases the GIL while decoding and resampling, so threads give real parallelism here.
        self.pool = ThreadPoolExecutor(num_workers) if num_workers > 0 else None

    @property
    def preprocessing(self) -> str:
        return repr(self.transform)

    def _load(self, cell) -> torch.Tensor | None:
        image = decode_image(cell)
        return None if image is None else self.transform(image)

    def __call__(self, cells: list) -> tuple[np.ndarray, np.ndarray]:
        tensors = list(self.pool.map(self._load, cells)) if self.pool else [self._load(cell) for cell in cells]
        valid = np.array([tensor is not None for tensor in tensors], dtype=bool)
        out = np.zeros((len(cells), self.model.config.projection_dim), dtype=np.float16)
        if valid.any():
            pixel_values = torch.stack([tensor for tensor in tensors if tensor is not None]).to(self.device)
            with torch.inference_mode(), self.autocast():
                features = _features(self.model.get_image_features(pixel_values=pixel_values)).float()
            out[valid] = torch.nn.functional.normalize(features, dim=-1).cpu().numpy()
        return out, valid


class TextEncoder:
    """Tokenise and embed a batch of strings (captions or prompts)."""

    def __init__(self, model, tokenizer, device: torch.device, max_length: int | None = None, autocast=None):
        self.model, self.tokenizer, self.device, self.autocast = model, tokenizer, device, autocast
        limit = model.config.text_config.max_position_embeddings
        self.max_length = min(max_length or limit, limit)

    @property
    def preprocessing(self) -> str:
        return f"{type(self.tokenizer).__name__}(vocab={len(self.tokenizer)}, max_length={self.max_length})"

    def __call__(self, cells: list) -> tuple[np.ndarray, np.ndarray]:
        valid = np.array([isinstance(cell, str) and bool(cell.strip()) for cell in cells], dtype=bool)
        out = np.zeros((len(cells), self.model.config.projection_dim), dtype=np.float16)
        if valid.any():
            out[valid] = self.encode([cell for cell, ok in zip(cells, valid) if ok]).astype(np.float16)
        return out, valid

    def encode(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        """Float32 normalised embeddings of `texts` (no cache: prompts are few)."""
        blocks = []
        for start in range(0, len(texts), batch_size):
            inputs = self.tokenizer(texts[start : start + batch_size], padding=True, truncation=True,
                                    max_length=self.max_length, return_tensors="pt").to(self.device)
            inputs.pop("token_type_ids", None)
            with torch.inference_mode(), self.autocast():
                features = _features(self.model.get_text_features(**inputs)).float()
            blocks.append(torch.nn.functional.normalize(features, dim=-1).cpu().numpy())
        return np.concatenate(blocks) if blocks else np.zeros((0, self.model.config.projection_dim), np.float32)


# ----------------------------------------------------------------------------------------------------------
# Embedding a whole column, shard by shard
# ----------------------------------------------------------------------------------------------------------


def embed_column(
    dataset,
    column: str,
    encoder,
    *,
    kind: str,
    key: dict,
    cache_dir: str,
    shard_size: int = 4096,
    batch_size: int = 256,
    accelerator=None,
    description: str = "Embedding",
) -> EmbeddingStore:
    """Embed `dataset[column]` into the shard cache at `cache_path(cache_dir, key)` and return its store."""
    from accelerate import Accelerator

    accelerator = accelerator or Accelerator()
    path = cache_path(cache_dir, key)
    meta_file, layout_file = os.path.join(path, "meta.json"), os.path.join(path, "layout.json")
    if accelerator.is_main_process:
        os.makedirs(path, exist_ok=True)
        if not os.path.exists(os.path.join(path, "key.json")):
            _write_json(os.path.join(path, "key.json"), key)
        if not os.path.exists(meta_file) and not os.path.exists(layout_file):
            _write_json(layout_file, {"shard_size": shard_size})
    accelerator.wait_for_everyone()

    meta = read_json(meta_file)
    # The shards already on disk decide the layout, so a run resumed with another shard size does not mix two.
    layout = meta or read_json(layout_file) or {"shard_size": shard_size}
    if layout["shard_size"] != shard_size:
        logger.info("Reusing the cache's shard size %d (asked for %d).", layout["shard_size"], shard_size)
    shard_size = layout["shard_size"]
    # A batch never straddles two shards, so the shard size is rounded down to a multiple of the batch.
    batch_size = max(1, min(batch_size, shard_size))
    if shard_size % batch_size:
        batch_size = max(d for d in range(1, batch_size + 1) if shard_size % d == 0)

    if isinstance(dataset, datasets.Dataset):
        num_rows = len(dataset)
        if meta is not None and num_rows != meta["num_rows"]:
            raise RuntimeError(f"The embedding cache {path} holds {meta['num_rows']} rows but the pool has "
                               f"{num_rows}; the pool changed under the same name. Delete that folder (or pass "
                               "another pool_id).")
        if num_rows == 0:
            raise ValueError("The pool is empty: there is nothing to embed or retrieve from.")

    complete = meta is not None and all(os.path.exists(os.path.join(path, name)) for name in _cache_files(meta))
    if complete:
        logger.info("%s: all %d rows are cached in %s.", description, meta["num_rows"], path)
    else:
        if isinstance(dataset, datasets.Dataset):
            _embed_missing(dataset, column, encoder, path, shard_size, batch_size, accelerator, description)
            files = None
        else:
            files, num_rows = _embed_stream(dataset, column, encoder, path, shard_size, batch_size, accelerator,
                                            description)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            meta = {"shard_size": shard_size, "num_rows": num_rows, "dim": encoder.model.config.projection_dim,
                    "kind": kind}
            _write_json(meta_file, meta if files is None else {**meta, "files": files})
        accelerator.wait_for_everyone()
    store = EmbeddingStore.load(path)
    invalid = int((~store.valid).sum())
    if invalid:
        logger.warning("%s: %d of %d %s cells could not be embedded (skipped).", description, invalid,
                       store.num_rows, kind)
    return store


def _progress(encoder, accelerator, description: str, total: int | None = None):
    return tqdm(total=total, unit="img" if isinstance(encoder, ImageEncoder) else "txt", unit_scale=True,
                desc=description, disable=not accelerator.is_local_main_process, smoothing=0.1)


def _embed_chunks(batches: Iterator[tuple[int, list | None]], encoder, file_of, progress) -> int:
    """Embed `(chunk, cells or None)` batches, saving each chunk to `file_of(chunk)`; None marks a batch read but
    not embedded (a chunk done earlier or another process's). Returns the number of rows embedded."""
    computed, buffer, current = 0, [], None
    for chunk, cells in batches:
        if chunk != current:
            if buffer:
                save_npy_atomic(file_of(current), np.concatenate(buffer))
            buffer, current = [], chunk
        if cells is None:
            continue
        embeddings, _ = encoder(cells)
        buffer.append(embeddings)
        computed += len(cells)
        progress.update(len(cells))
    if buffer:
        save_npy_atomic(file_of(current), np.concatenate(buffer))
    return computed


def _embed_missing(dataset, column, encoder, path, shard_size, batch_size, accelerator, description) -> None:
    """Embed the shards of a map-style pool that this process owns and that are not on disk (sliced directly,
    so shards that need no work cost nothing)."""
    num_rows = len(dataset)
    dataset = with_raw_images(dataset.select_columns([column]), column)
    todo = [s for s in range(num_chunks(num_rows, shard_size))
            if s % accelerator.num_processes == accelerator.process_index and not os.path.exists(_shard_file(path, s))]

    def batches():
        for shard in todo:
            start, stop = shard * shard_size, min((shard + 1) * shard_size, num_rows)
            for first in range(start, stop, batch_size):
                yield shard, dataset[first : min(first + batch_size, stop)][column]

    progress = _progress(encoder, accelerator, description, sum(min(shard_size, num_rows - s * shard_size)
                                                                for s in todo))
    started = time.perf_counter()
    computed = _embed_chunks(batches(), encoder, lambda shard: _shard_file(path, shard), progress)
    progress.close()
    if computed:
        elapsed = time.perf_counter() - started
        logger.info("%s: embedded %d rows in %.1fs (%.1f rows/s) on process %d.", description, computed, elapsed,
                    computed / max(elapsed, 1e-9), accelerator.process_index)


# ----------------------------------------------------------------------------------------------------------
# Streamed pools: cut into their files, each process reading its own
# ----------------------------------------------------------------------------------------------------------

# `datasets` wrappers that keep a stream's rows in file order, so that the files read one after another are the
# stream. Any other (a shuffle, skip/take, interleaving, a map with indices) may not: such a stream is read whole.
_ORDERED_ITERABLES = {"ExamplesIterable", "ArrowExamplesIterable", "RebatchedArrowExamplesIterable",
                      "SelectColumnsIterable", "FormattedExamplesIterable", "MappedExamplesIterable",
                      "FilteredExamplesIterable"}


def stream_sources(dataset: datasets.IterableDataset, num_processes: int = 1) -> list[datasets.IterableDataset]:
    """The stream cut into its files (`dataset.shard(num_shards, f)`), whose concatenation is the stream, or
    `[dataset]` when it cannot be cut so; raises where no process count-independent row numbering exists."""
    if getattr(dataset, "_distributed", None) is not None:
        raise ValueError(
            "The pool stream was already split with `split_dataset_by_node`: pass the whole stream. anchorclip gives "
            "each process its own files and numbers the rows across all of them; a process that sees only its part "
            "would number them wrongly and point anchors at other rows.")
    chain, node = [], getattr(dataset, "_ex_iterable", None)
    while node is not None:
        chain.append(node)
        node = getattr(node, "ex_iterable", None)
    names = [type(node).__name__ for node in chain]
    if num_processes > 1 and any("Shuffled" in name or "RandomlyCycling" in name for name in names):
        raise ValueError(
            f"A shuffled pool stream cannot be split across {num_processes} processes: each process would read its "
            "own order, so a row number would mean different images on different processes. Pass the stream "
            "unshuffled (retrieval does not need a shuffle), or embed it on one process.")
    ordered = chain and all(name in _ORDERED_ITERABLES for name in names) and not any(
        getattr(node, "with_indices", False) for node in chain)
    if not ordered or dataset.num_shards < 2 or dataset.epoch:  # a later epoch iterates the files reordered
        return [dataset]
    return [dataset.shard(num_shards=dataset.num_shards, index=f, contiguous=True) for f in range(dataset.num_shards)]


def _source_rows(path: str, source: int, num_sources: int, shard_size: int) -> int | None:
    """The row count of a stream file whose chunks are all on disk, else None."""
    marker = read_json(_source_marker(path, source, num_sources))
    if marker is None:
        return None
    chunks = range(num_chunks(marker["rows"], shard_size))
    done = all(os.path.exists(os.path.join(path, _chunk_name(source, num_sources, c))) for c in chunks)
    return marker["rows"] if done else None


def _embed_stream(dataset, column, encoder, path, shard_size, batch_size, accelerator,
                  description) -> tuple[list[str], int]:
    """Embed this process's files of a streamed pool; once every process is done, return the chunk files in
    stream order and the row count.

    With at least as many files as processes, process `p` reads only files `f % num_processes == p` (as
    `split_dataset_by_node(strategy="shards")` deals them). With fewer, every process reads every file and embeds
    one chunk in `num_processes` (the stream is read N times but embedded once).
    """
    rank, world = accelerator.process_index, accelerator.num_processes
    sources = stream_sources(with_raw_images(dataset.select_columns([column]), column), world)
    num_sources = len(sources)
    by_file = num_sources >= world
    if not by_file and accelerator.is_main_process:
        logger.warning("%s: the stream reads as %d file(s) for %d processes, so every process reads all of it. A "
                       "stream of at least %d files (not reordered by a shuffle, skip/take or interleave) is dealt "
                       "by file and read once in all.", description, num_sources, world, world)
    progress = _progress(encoder, accelerator, description)
    started = time.perf_counter()
    files_read = rows_read = computed = 0
    for source in range(num_sources):
        if (by_file and source % world != rank) or _source_rows(path, source, num_sources, shard_size) is not None:
            continue

        def mine(chunk: int, source: int = source) -> bool:  # a whole file, or one chunk in `world` when all read
            return (source if by_file else source + chunk) % world == rank

        rows, embedded = _embed_source(sources[source], column, encoder, path, source, num_sources, shard_size,
                                       batch_size, mine, progress)
        files_read, rows_read, computed = files_read + 1, rows_read + rows, computed + embedded
    progress.close()
    logger.info("%s: process %d read %d of %d stream files (%d rows) and embedded %d rows in %.1fs.", description,
                rank, files_read, num_sources, rows_read, computed, time.perf_counter() - started)
    accelerator.wait_for_everyone()
    lengths = [_source_rows(path, source, num_sources, shard_size) for source in range(num_sources)]
    missing = [source for source, rows in enumerate(lengths) if rows is None]
    if missing:
        raise RuntimeError(f"Stream files {missing} of {num_sources} have no complete embeddings in {path} (did a "
                           "process fail?); run again to embed them.")
    if sum(lengths) == 0:
        raise ValueError("The pool is empty: there is nothing to embed or retrieve from.")
    files = [_chunk_name(source, num_sources, chunk) for source, rows in enumerate(lengths)
             for chunk in range(num_chunks(rows, shard_size))]
    return files, sum(lengths)


def _embed_source(source_data, column, encoder, path, source, num_sources, shard_size, batch_size, mine,
                  progress) -> tuple[int, int]:
    """Read one stream file through, embedding its chunks that `mine(chunk)` and not on disk; mark it read.
    Returns `(rows read, rows embedded)`. Skipped batches are read but never decoded."""
    rows = 0

    def file_of(chunk: int) -> str:
        return os.path.join(path, _chunk_name(source, num_sources, chunk))

    def batches():
        nonlocal rows
        for batch in source_data.iter(batch_size=batch_size):
            cells = batch[column]
            chunk = rows // shard_size
            rows += len(cells)
            yield chunk, (cells if mine(chunk) and not os.path.exists(file_of(chunk)) else None)

    computed = _embed_chunks(batches(), encoder, file_of, progress)
    _write_json(_source_marker(path, source, num_sources), {"rows": rows})
    return rows, computed
