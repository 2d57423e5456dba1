"""Resumable work in chunk files: the one place for how long jobs (captions, embeddings) persist their progress.

A job over `num_rows` rows is cut into fixed *chunks* of `shard_size` rows (`plan_chunks`); the chunks do not
depend on the number of processes, so a run can be resumed on other hardware. Each process takes its share
(`chunks_for_process`) and writes every finished chunk as one file, atomically (`write_json_atomic`,
`save_npy_atomic`): an interrupted run loses at most the chunk in progress, and a rerun skips the files on disk.
A *manifest* in the chunk folder records the settings the chunks were computed with (`open_shards_dir`), so that
resuming with other settings is an error rather than a silently mixed output. The processes themselves (who
takes which share, barriers) are `anchorclip.distributed`'s.

`anchorclip.anchors.captions.job` keeps its chunks as `rows-<start>-<stop>.json` (`chunk_path`, `read_chunk`);
the embedding cache (`anchorclip.anchors.pool.embed_column`) keeps its own `.npy` file names and layout, and writes and
reads its files with the helpers here (`save_npy_atomic`, `write_json_atomic`, `read_json`, `num_chunks`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

MANIFEST_FILE = "manifest.json"


# ---------------------------------------------------------------------------------------------------------------
# Work plan: chunks of rows and each process's share
# ---------------------------------------------------------------------------------------------------------------


def plan_chunks(num_rows: int, shard_size: int) -> list[range]:
    """Fixed chunks of row indices; independent of the process count so that resuming on other hardware works."""
    return [range(start, min(start + shard_size, num_rows)) for start in range(0, num_rows, shard_size)]


def num_chunks(num_rows: int, shard_size: int) -> int:
    return (num_rows + shard_size - 1) // shard_size


def chunks_for_process(chunks: list[range], process_index: int, num_processes: int, sharding: str) -> list[range]:
    """This process's chunks: every `num_processes`-th one ("strided", balances slow regions of a dataset across
    processes) or one contiguous block ("contiguous")."""
    if sharding == "strided":
        return chunks[process_index::num_processes]
    if sharding == "contiguous":
        per_process, extra = divmod(len(chunks), num_processes)
        start = process_index * per_process + min(process_index, extra)
        return chunks[start : start + per_process + (process_index < extra)]
    raise ValueError(f"sharding must be 'strided' or 'contiguous', not {sharding!r}.")


# ---------------------------------------------------------------------------------------------------------------
# Files: written whole or not at all
# ---------------------------------------------------------------------------------------------------------------


def write_json_atomic(path: str | os.PathLike, payload: Any, *, indent: int = 1, ensure_ascii: bool = False) -> None:
    """Write `payload` as JSON (UTF-8) under a temporary name, then rename: a reader sees the old file or the whole
    new one, never half of it (and a run killed mid-write leaves no truncated file behind)."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(payload, indent=indent, ensure_ascii=ensure_ascii), encoding="utf-8")
    os.replace(temporary, path)


def save_npy_atomic(path: str | os.PathLike, array: np.ndarray) -> None:
    """`np.save` under a temporary name, then rename (see `write_json_atomic`)."""
    temporary = f"{os.fspath(path)}.tmp-{os.getpid()}.npy"
    np.save(temporary, array)
    os.replace(temporary, path)


def read_json(path: str | os.PathLike) -> Any | None:
    """The file's JSON content, or None if there is no such file."""
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as file:
        return json.load(file)


# ---------------------------------------------------------------------------------------------------------------
# A folder of JSON chunk files with its manifest
# ---------------------------------------------------------------------------------------------------------------


def chunk_path(shards_dir: Path, chunk: range) -> Path:
    return Path(shards_dir) / f"rows-{chunk.start:010d}-{chunk.stop:010d}.json"


def read_chunk(shards_dir: Path, chunk: range, values: str = "captions") -> dict[str, Any] | None:
    """A finished chunk (its list `values` holds one entry per row), or None if it is missing or was cut short (a
    half-written file is never renamed in place, but be lenient with files copied around by hand)."""
    try:
        record = json.loads(chunk_path(shards_dir, chunk).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if len(record.get(values, ())) == len(chunk) else None


def pending_chunks(shards_dir: Path, chunks: list[range], values: str = "captions") -> list[range]:
    """The chunks with no finished file in `shards_dir`."""
    return [chunk for chunk in chunks if read_chunk(shards_dir, chunk, values) is None]


# Recorded for the reader, not compared: a model folder that moved (or a Hub id against its local download) is the
# same model when its weights fingerprint is the same.
INFORMATIVE_KEYS = ("captioner",)


def open_shards_dir(shards_dir: Path, manifest: dict[str, Any], state, *, resume: bool, is_writer: bool) -> None:
    """Create `shards_dir` (emptied first unless `resume`) and check that the chunks in it, if any, were computed
    with `manifest`'s settings; raises `ValueError` naming the settings that differ. Every process calls this;
    `is_writer`: this process writes its machine's copy of the folder (`anchorclip.filesystems`)."""
    shards_dir = Path(shards_dir)
    manifest = json.loads(json.dumps(manifest))  # normalise tuples etc. so the comparison below is exact
    if is_writer:
        if not resume and shards_dir.exists():
            shutil.rmtree(shards_dir)
        shards_dir.mkdir(parents=True, exist_ok=True)
        if not (shards_dir / MANIFEST_FILE).exists():
            write_json_atomic(shards_dir / MANIFEST_FILE, manifest)
    state.wait_for_everyone()
    previous = json.loads((shards_dir / MANIFEST_FILE).read_text(encoding="utf-8"))
    changed = sorted(
        key
        for key in manifest.keys() | previous.keys()
        if key not in INFORMATIVE_KEYS and manifest.get(key) != previous.get(key)
    )
    if changed:
        raise ValueError(
            f"{shards_dir} holds chunks computed with other settings (differences in: {', '.join(changed)}). "
            f"Use the same settings to resume, another output_dir, or resume=False (--no_resume) to start over."
        )
