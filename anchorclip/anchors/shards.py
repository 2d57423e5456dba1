"""Resumable work in chunk files: the one place for how long jobs (captions, embeddings) persist their progress.

A job over `num_rows` rows is cut into fixed *chunks* of `shard_size` rows (`plan_chunks`); the chunks do not
depend on the number of processes, so a run can be resumed on other hardware. Each process takes its share
(`chunks_for_process`) and writes every finished chunk as one file, atomically (`write_json_atomic`,
`save_npy_atomic`): an interrupted run loses at most the chunk in progress, and a rerun skips the files on disk.
A *manifest* in the chunk folder records the settings the chunks were computed with (`open_shards_dir`), so that
resuming with other settings is an error rather than a silently mixed output.

`anchorclip.anchors.caption_job` keeps its chunks as `rows-<start>-<stop>.json` (`chunk_path`, `read_chunk`);
the embedding cache (`anchorclip.anchors.embed_column`) keeps its own `.npy` file names and layout, and writes and
reads its files with the helpers here (`save_npy_atomic`, `write_json_atomic`, `read_json`, `num_chunks`).
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

MANIFEST_FILE = "manifest.json"
BARRIER_TIMEOUT_HOURS = 12


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


def _launch_on_cpu() -> bool:
    """Whether the launch's processes must join a CPU (gloo) process group: no GPU, or `ACCELERATE_USE_CPU`.

    Without a GPU, Accelerate only joins a torchrun-style process group when asked for the CPU explicitly;
    otherwise every process would believe it is alone and do all the work, writing the same files at once.
    """
    import torch

    return not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")


def process_state():
    """Accelerate's view of the launch (one process, or one of `accelerate launch`/`torchrun`'s processes).

    On CPU the processes join a gloo group (`_launch_on_cpu`). The long timeout is for the final barrier:
    processes can finish their shares minutes apart, and the default (10-30 minutes) would kill the run.
    """
    from accelerate import PartialState

    return check_processes_joined(PartialState(cpu=_launch_on_cpu(), timeout=timedelta(hours=BARRIER_TIMEOUT_HOURS)))


def launch_accelerator():
    """An `Accelerator` over the launch's processes, for commands that want its mixed precision (`anchorclip
    retrieve`): the same CPU rule and barrier timeout as `process_state`."""
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    timeout = InitProcessGroupKwargs(timeout=timedelta(hours=BARRIER_TIMEOUT_HOURS))
    return check_processes_joined(Accelerator(cpu=_launch_on_cpu(), kwargs_handlers=[timeout]))


def close_process_group() -> None:
    """Leave the launch's process group at the end of a job: wait for every process, then destroy the group.

    A process that exits with its gloo group alive can abort at interpreter shutdown ("terminate called without
    an active exception", SIGABRT) after all its work is done: gloo's threads outlive the interpreter. The
    launcher then reports the job as failed. A no-op outside a launch."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def check_processes_joined(state):
    """`state`, unless the launch started more processes than `state` counts; then raise.

    Such processes would each do the whole job and write the same files at once (a reader of a file that
    another process is rewriting can die of SIGBUS). It happens with an `Accelerator()` built without `cpu=True`
    on a machine without GPUs.
    """
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > state.num_processes:
        raise RuntimeError(
            f"This job was launched as {launched} processes (WORLD_SIZE={launched}), but its Accelerate state "
            f"counts {state.num_processes}: each process would do the whole job and overwrite the others' "
            "files. On a machine without GPUs build the Accelerator with cpu=True (or set ACCELERATE_USE_CPU=1); "
            "with GPUs, check that torch sees them (torch.cuda.is_available())."
        )
    return state


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


def open_shards_dir(shards_dir: Path, manifest: dict[str, Any], state, *, resume: bool) -> None:
    """Create `shards_dir` (emptied first unless `resume`) and check that the chunks in it, if any, were computed
    with `manifest`'s settings; raises `ValueError` naming the settings that differ. Every process calls this."""
    shards_dir = Path(shards_dir)
    manifest = json.loads(json.dumps(manifest))  # normalise tuples etc. so the comparison below is exact
    if state.is_main_process:
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
