"""Who writes which file when a job runs on several machines that may or may not share a filesystem.

A multi-machine launch meets two layouts, often both in one job: a folder every machine sees (a shared
`output_dir` on NFS/Lustre) and a folder each machine has its own copy of (node-local disk, `HF_HOME`,
`$ANCHORCLIP_CACHE`). The rule, the same for every job and every folder:

* **A file is written by the lowest-ranked process that sees the folder it goes in** (`FolderLayout.is_writer`):
  the global main process where the folder is shared, each machine's first process where it is node-local. No
  file is written twice, and no machine is left without what its processes read.
* **Per-process shards** (caption chunks, embedding shards) are written by the process that computed them, under
  a name no other process uses; `sync_folder` then gives every machine's copy of the folder the shards the other
  machines wrote, over the launch's process group (a no-op where the folder is shared).
* **Datasets caches** are built by each folder's writer first (`writer_first`), the others then read them.

`probe_folder` finds the layout at run time: every process drops a marker file named by its rank and reads which
markers it sees. Nothing is assumed from hostnames or flags, so one command works on either layout.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FolderLayout", "datasets_cache_first", "probe_folder", "sync_folder", "writer_first"]

_MARKER = ".anchorclip-probe"


@dataclass(frozen=True)
class FolderLayout:
    """Which processes see the same copy of `folder`: `groups` partitions the ranks; `rank` is this process."""

    folder: Path
    groups: tuple[tuple[int, ...], ...]
    rank: int

    @property
    def group(self) -> tuple[int, ...]:
        return next(group for group in self.groups if self.rank in group)

    @property
    def writer(self) -> int:
        """The rank that writes this process's copy of the folder."""
        return self.group[0]

    @property
    def is_writer(self) -> bool:
        return self.rank == self.writer

    @property
    def shared(self) -> bool:
        return len(self.groups) == 1


def _world():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def probe_folder(folder: str | os.PathLike) -> FolderLayout:
    """The layout of `folder` (created if missing) across the launch's processes; every process must call this.

    Outside a launch (or with one process) the folder is trivially shared."""
    folder = Path(folder)
    dist = _world()
    if dist is None or dist.get_world_size() == 1:
        with contextlib.suppress(OSError):  # a read-only folder: still one process, which writes nothing there
            folder.mkdir(parents=True, exist_ok=True)
        return FolderLayout(folder, ((0,),), 0)
    rank, world = dist.get_rank(), dist.get_world_size()
    token = [uuid.uuid4().hex if rank == 0 else None]
    dist.broadcast_object_list(token, src=0)  # one name per probe: markers of a killed run never count
    marker, writable = folder / f"{_MARKER}-{token[0]}-{rank}", True
    try:
        folder.mkdir(parents=True, exist_ok=True)
        marker.touch()
    except OSError:  # a read-only folder: nobody writes to it, so nobody waits for anybody (see below)
        writable = False
    dist.barrier()
    prefix = f"{_MARKER}-{token[0]}-"
    seen = (
        sorted(int(name[len(prefix) :]) for name in os.listdir(folder) if name.startswith(prefix))
        if writable
        else None
    )
    views: list[list[int] | None] = [None] * world
    dist.all_gather_object(views, seen)
    dist.barrier()  # every process has listed the markers before any is removed
    if writable:
        marker.unlink()
    if any(view is None for view in views):
        return FolderLayout(folder, tuple((r,) for r in range(world)), rank)  # every process on its own
    groups = sorted({tuple(view) for view in views if view is not None})
    if sorted(rank for group in groups for rank in group) != list(range(world)):
        raise RuntimeError(
            f"The processes disagree on who shares {folder}: each sees the markers of {views}. A folder must be "
            "either shared by a set of machines or private to each of them."
        )
    return FolderLayout(folder, tuple(groups), rank)


def _listing(folder: Path) -> list[str]:
    """The finished files under `folder`, relative; temporary files (being written) and probe markers excluded."""
    names = []
    for root, _, files in os.walk(folder):
        for name in files:
            if name.startswith(_MARKER) or ".tmp" in name:
                continue
            names.append(os.path.relpath(os.path.join(root, name), folder))
    return sorted(names)


def sync_folder(layout: FolderLayout) -> int:
    """Give every copy of `layout.folder` the files the other copies hold (none are overwritten); returns how
    many files this process wrote. Every process must call this, at a point where nobody is writing the folder.

    Each missing file is sent once over the process group by the lowest rank that has it and written by each
    lacking copy's writer under a temporary name, then renamed: a kill mid-sync leaves no half file."""
    dist = _world()
    if dist is None or layout.shared:
        return 0
    listings: list[list[str] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(listings, _listing(layout.folder) if layout.is_writer else None)
    holders: dict[str, list[int]] = {}
    for rank, names in enumerate(listings):
        for name in names or ():
            holders.setdefault(name, []).append(rank)
    written = 0
    for name in sorted(holders):
        if len(holders[name]) == len(layout.groups):
            continue  # every copy has it
        source = holders[name][0]
        payload = [(layout.folder / name).read_bytes() if layout.rank == source else None]
        dist.broadcast_object_list(payload, src=source)
        if layout.is_writer and layout.rank not in holders[name]:
            target = layout.folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            data = payload[0]
            assert data is not None  # broadcast by the holder
            temporary.write_bytes(data)
            os.replace(temporary, target)
            written += 1
    dist.barrier()
    return written


@contextlib.contextmanager
def writer_first(layout: FolderLayout):
    """Run the block on each copy's writer first, then on the other processes (which then read what the writer
    cached): `main_process_first` per copy of the folder instead of once for the whole launch."""
    dist = _world()
    if dist is None:
        yield
        return
    if not layout.is_writer:
        dist.barrier()
    yield
    if layout.is_writer:
        dist.barrier()


def datasets_cache_first():
    """`writer_first` for the `datasets` cache (`HF_DATASETS_CACHE`): one process per copy of the cache prepares
    a dataset (downloads, converts, maps); the others then load what it cached. Every process must call this."""
    import datasets

    return writer_first(probe_folder(datasets.config.HF_DATASETS_CACHE))
