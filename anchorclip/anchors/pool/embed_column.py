"""Embedding a dataset column with CLIP once, into resumable `.npy` shards on disk (`embed_column`).

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

import logging
import os
import time
from collections.abc import Iterator

import datasets
import numpy as np
from tqdm.auto import tqdm

from anchorclip.anchors.pool.encoders import ImageEncoder
from anchorclip.anchors.pool.store import (
    EmbeddingStore,
    cache_files,
    cache_path,
    chunk_name,
    shard_file,
    source_marker,
    write_cache_json,
)
from anchorclip.anchors.shards import num_chunks, read_json, save_npy_atomic
from anchorclip.data import with_raw_images
from anchorclip.filesystems import FolderLayout, probe_folder, sync_folder

logger = logging.getLogger(__name__)


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
    accelerator,
    description: str = "Embedding",
) -> EmbeddingStore:
    """Embed `dataset[column]` into the shard cache at `cache_path(cache_dir, key)` and return its store.

    `accelerator`: the launch's processes, already checked (`embed_pool` passes its own), which share the rows.
    """
    path = cache_path(cache_dir, key)
    meta_file, layout_file = os.path.join(path, "meta.json"), os.path.join(path, "layout.json")
    # The cache may be each machine's own (node-local $ANCHORCLIP_CACHE) or shared: each copy's writer writes its
    # bookkeeping, and every copy gets the shards all processes embedded (anchorclip.filesystems).
    folder = probe_folder(path)
    if folder.is_writer:
        if not os.path.exists(os.path.join(path, "key.json")):
            write_cache_json(os.path.join(path, "key.json"), key)
        if not os.path.exists(meta_file) and not os.path.exists(layout_file):
            write_cache_json(layout_file, {"shard_size": shard_size})
    accelerator.wait_for_everyone()
    sync_folder(folder)  # a resumed run: every copy holds every finished shard, so every process skips the same

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
            raise RuntimeError(
                f"The embedding cache {path} holds {meta['num_rows']} rows but the pool has "
                f"{num_rows}; the pool changed under the same name. Delete that folder (or pass "
                "another pool_id)."
            )
        if num_rows == 0:
            raise ValueError("The pool is empty: there is nothing to embed or retrieve from.")

    complete = meta is not None and all(os.path.exists(os.path.join(path, name)) for name in cache_files(meta))
    if meta is not None and complete:
        logger.info("%s: all %d rows are cached in %s.", description, meta["num_rows"], path)
    else:
        if isinstance(dataset, datasets.Dataset):
            _embed_missing(dataset, column, encoder, path, shard_size, batch_size, accelerator, description)
            files = None
        else:
            files, num_rows = _embed_stream(
                dataset, column, encoder, path, shard_size, batch_size, accelerator, description, folder
            )
        accelerator.wait_for_everyone()
        sync_folder(folder)
        if folder.is_writer:
            meta = {
                "shard_size": shard_size,
                "num_rows": num_rows,
                "dim": encoder.model.config.projection_dim,
                "kind": kind,
            }
            write_cache_json(meta_file, meta if files is None else {**meta, "files": files})
        accelerator.wait_for_everyone()
    store = EmbeddingStore.load(path)
    invalid = int((~store.valid).sum())
    if invalid:
        logger.warning(
            "%s: %d of %d %s cells could not be embedded (skipped).", description, invalid, store.num_rows, kind
        )
    return store


def _progress(encoder, accelerator, description: str, total: int | None = None):
    return tqdm(
        total=total,
        unit="img" if isinstance(encoder, ImageEncoder) else "txt",
        unit_scale=True,
        desc=description,
        disable=not accelerator.is_local_main_process,
        smoothing=0.1,
    )


def _embed_chunks(batches: Iterator[tuple[int, list | None]], encoder, file_of, progress) -> int:
    """Embed `(chunk, cells or None)` batches, saving each chunk to `file_of(chunk)`; None marks a batch read but
    not embedded (a chunk done earlier or another process's). Returns the number of rows embedded."""
    computed, current = 0, None
    buffer: list[np.ndarray] = []  # the current chunk's embeddings
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
    todo = [
        s
        for s in range(num_chunks(num_rows, shard_size))
        if s % accelerator.num_processes == accelerator.process_index and not os.path.exists(shard_file(path, s))
    ]

    def batches():
        for shard in todo:
            start, stop = shard * shard_size, min((shard + 1) * shard_size, num_rows)
            for first in range(start, stop, batch_size):
                yield shard, dataset[first : min(first + batch_size, stop)][column]

    progress = _progress(
        encoder, accelerator, description, sum(min(shard_size, num_rows - s * shard_size) for s in todo)
    )
    started = time.perf_counter()
    computed = _embed_chunks(batches(), encoder, lambda shard: shard_file(path, shard), progress)
    progress.close()
    if computed:
        elapsed = time.perf_counter() - started
        logger.info(
            "%s: embedded %d rows in %.1fs (%.1f rows/s) on process %d.",
            description,
            computed,
            elapsed,
            computed / max(elapsed, 1e-9),
            accelerator.process_index,
        )


# ----------------------------------------------------------------------------------------------------------
# Streamed pools: cut into their files, each process reading its own
# ----------------------------------------------------------------------------------------------------------

# `datasets` wrappers that keep a stream's rows in file order, so that the files read one after another are the
# stream. Any other (a shuffle, skip/take, interleaving, a map with indices) may not: such a stream is read whole.
_ORDERED_ITERABLES = {
    "ExamplesIterable",
    "ArrowExamplesIterable",
    "RebatchedArrowExamplesIterable",
    "SelectColumnsIterable",
    "FormattedExamplesIterable",
    "MappedExamplesIterable",
    "FilteredExamplesIterable",
}


def _stream_sources(dataset: datasets.IterableDataset, num_processes: int = 1) -> list[datasets.IterableDataset]:
    """The stream cut into its files (`dataset.shard(num_shards, f)`), whose concatenation is the stream, or
    `[dataset]` when it cannot be cut so; raises where no process count-independent row numbering exists."""
    if getattr(dataset, "_distributed", None) is not None:
        raise ValueError(
            "The pool stream was already split with `split_dataset_by_node`: pass the whole stream. anchorclip gives "
            "each process its own files and numbers the rows across all of them; a process that sees only its part "
            "would number them wrongly and point anchors at other rows."
        )
    chain, node = [], getattr(dataset, "_ex_iterable", None)
    while node is not None:
        chain.append(node)
        node = getattr(node, "ex_iterable", None)
    names = [type(node).__name__ for node in chain]
    if num_processes > 1 and any("Shuffled" in name or "RandomlyCycling" in name for name in names):
        raise ValueError(
            f"A shuffled pool stream cannot be split across {num_processes} processes: each process would read its "
            "own order, so a row number would mean different images on different processes. Pass the stream "
            "unshuffled (retrieval does not need a shuffle), or embed it on one process."
        )
    ordered = (
        chain
        and all(name in _ORDERED_ITERABLES for name in names)
        and not any(getattr(node, "with_indices", False) for node in chain)
    )
    if not ordered or dataset.num_shards < 2 or dataset.epoch:  # a later epoch iterates the files reordered
        return [dataset]
    return [dataset.shard(num_shards=dataset.num_shards, index=f, contiguous=True) for f in range(dataset.num_shards)]


def _source_rows(path: str, source: int, num_sources: int, shard_size: int) -> int | None:
    """The row count of a stream file whose chunks are all on disk, else None."""
    marker = read_json(source_marker(path, source, num_sources))
    if marker is None:
        return None
    chunks = range(num_chunks(marker["rows"], shard_size))
    done = all(os.path.exists(os.path.join(path, chunk_name(source, num_sources, c))) for c in chunks)
    return marker["rows"] if done else None


def _embed_stream(
    dataset, column, encoder, path, shard_size, batch_size, accelerator, description, folder: FolderLayout
) -> tuple[list[str], int]:
    """Embed this process's files of a streamed pool; once every process is done, return the chunk files in
    stream order and the row count.

    With at least as many files as processes, process `p` reads only files `f % num_processes == p` (as
    `split_dataset_by_node(strategy="shards")` deals them). With fewer, every process reads every file and embeds
    one chunk in `num_processes` (the stream is read N times but embedded once).
    """
    rank, world = accelerator.process_index, accelerator.num_processes
    sources = _stream_sources(with_raw_images(dataset.select_columns([column]), column), world)
    num_sources = len(sources)
    by_file = num_sources >= world
    if not by_file and accelerator.is_main_process:
        logger.warning(
            "%s: the stream reads as %d file(s) for %d processes, so every process reads all of it. A "
            "stream of at least %d files (not reordered by a shuffle, skip/take or interleave) is dealt "
            "by file and read once in all.",
            description,
            num_sources,
            world,
            world,
        )
    progress = _progress(encoder, accelerator, description)
    started = time.perf_counter()
    files_read = rows_read = computed = 0
    for source in range(num_sources):
        if (by_file and source % world != rank) or _source_rows(path, source, num_sources, shard_size) is not None:
            continue

        def mine(chunk: int, source: int = source) -> bool:  # a whole file, or one chunk in `world` when all read
            return (source if by_file else source + chunk) % world == rank

        rows, embedded = _embed_source(
            sources[source], column, encoder, path, source, num_sources, shard_size, batch_size, mine, progress
        )
        files_read, rows_read, computed = files_read + 1, rows_read + rows, computed + embedded
    progress.close()
    logger.info(
        "%s: process %d read %d of %d stream files (%d rows) and embedded %d rows in %.1fs.",
        description,
        rank,
        files_read,
        num_sources,
        rows_read,
        computed,
        time.perf_counter() - started,
    )
    accelerator.wait_for_everyone()
    sync_folder(folder)
    lengths = [_source_rows(path, source, num_sources, shard_size) for source in range(num_sources)]
    missing = [source for source, rows in enumerate(lengths) if rows is None]
    if missing:
        raise RuntimeError(
            f"Stream files {missing} of {num_sources} have no complete embeddings in {path} (did a "
            "process fail?); run again to embed them."
        )
    source_rows = [rows or 0 for rows in lengths]  # none is None past the check above
    if sum(source_rows) == 0:
        raise ValueError("The pool is empty: there is nothing to embed or retrieve from.")
    files = [
        chunk_name(source, num_sources, chunk)
        for source, rows in enumerate(source_rows)
        for chunk in range(num_chunks(rows, shard_size))
    ]
    return files, sum(source_rows)


def _embed_source(
    source_data, column, encoder, path, source, num_sources, shard_size, batch_size, mine, progress
) -> tuple[int, int]:
    """Read one stream file through, embedding its chunks that `mine(chunk)` and not on disk; mark it read.
    Returns `(rows read, rows embedded)`. Skipped batches are read but never decoded."""
    rows = 0

    def file_of(chunk: int) -> str:
        return os.path.join(path, chunk_name(source, num_sources, chunk))

    def batches():
        nonlocal rows
        for batch in source_data.iter(batch_size=batch_size):
            cells = batch[column]
            chunk = rows // shard_size
            rows += len(cells)
            yield chunk, (cells if mine(chunk) and not os.path.exists(file_of(chunk)) else None)

    computed = _embed_chunks(batches(), encoder, file_of, progress)
    write_cache_json(source_marker(path, source, num_sources), {"rows": rows})
    return rows, computed
