"""anchorclip.filesystems on two gloo processes of this host: a folder each (node-local, as two machines see one
path on their own disks) or one for both (shared). Fast: no model, no launcher."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import free_port


def _worker(rank: int, port: int, root: str, shared: bool, results: str) -> None:
    from anchorclip.filesystems import probe_folder, sync_folder, writer_first

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        folder = Path(root) / ("shared" if shared else f"machine-{rank}")
        layout = probe_folder(folder)
        (folder / "chunks").mkdir(parents=True, exist_ok=True)
        (folder / "chunks" / f"rows-{rank}.json").write_text(json.dumps({"by": rank}))  # each process its own
        dist.barrier()
        written = sync_folder(layout)
        order = []
        with writer_first(layout):
            order.append(rank)  # the writer of each copy enters first
        record = {
            "groups": [list(g) for g in layout.groups],
            "is_writer": layout.is_writer,
            "files": sorted(os.listdir(folder / "chunks")),
            "contents": {n: json.loads((folder / "chunks" / n).read_text()) for n in os.listdir(folder / "chunks")},
            "written": written,
            "markers_left": [n for n in os.listdir(folder) if n.startswith(".anchorclip-probe")],
        }
        Path(results, f"{rank}.json").write_text(json.dumps(record))
    finally:
        dist.destroy_process_group()


def _run(tmp_path: Path, shared: bool) -> list[dict]:
    results = tmp_path / "results"
    results.mkdir()
    mp.spawn(_worker, args=(free_port(), str(tmp_path), shared, str(results)), nprocs=2, join=True)
    return [json.loads((results / f"{rank}.json").read_text()) for rank in range(2)]


def test_node_local_folders_each_get_every_process_shards(tmp_path):
    first, second = _run(tmp_path, shared=False)
    assert first["groups"] == second["groups"] == [[0], [1]]  # each process sees only its own copy
    assert first["is_writer"] and second["is_writer"]
    for record in (first, second):
        assert record["files"] == ["rows-0.json", "rows-1.json"]
        assert record["contents"] == {"rows-0.json": {"by": 0}, "rows-1.json": {"by": 1}}
        assert record["written"] == 1 and record["markers_left"] == []
    assert not list((tmp_path / "machine-0" / "chunks").glob(".*tmp"))  # renamed into place, no temporaries


def test_a_shared_folder_has_one_writer_and_copies_nothing(tmp_path):
    first, second = _run(tmp_path, shared=True)
    assert first["groups"] == second["groups"] == [[0, 1]]
    assert first["is_writer"] and not second["is_writer"]
    assert first["written"] == second["written"] == 0
    assert first["files"] == second["files"] == ["rows-0.json", "rows-1.json"]


def _command_worker(rank: int, port: int, results: str) -> None:
    from anchorclip.distributed import check_same_command

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        check_same_command(["train", "--output_dir", "out"])  # the same on both: passes
        try:
            check_same_command(["train", "--learning_rate", f"{rank + 1}e-5"])  # one machine's script was edited
            outcome = "accepted"
        except RuntimeError as error:
            outcome = str(error)
        Path(results, f"{rank}.txt").write_text(outcome)
    finally:
        dist.destroy_process_group()


def test_processes_running_other_arguments_are_refused(tmp_path):
    mp.spawn(_command_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        outcome = (tmp_path / f"{rank}.txt").read_text()
        assert "disagree on the command" in outcome and "2e-5" in outcome, outcome


def _read_only_worker(rank: int, port: int, root: str, results: str) -> None:
    from anchorclip.filesystems import probe_folder

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        if rank == 1:  # this process may read the folder but not write in it (root ignores chmod, so refuse here)
            real_touch = Path.touch

            def refuse(path, *args, **kwargs):
                if Path(root) in path.parents:
                    raise PermissionError(13, "Read-only file system", str(path))
                return real_touch(path, *args, **kwargs)

            Path.touch = refuse  # type: ignore[method-assign]
        layout = probe_folder(Path(root) / "shared")
        record = {"groups": [list(g) for g in layout.groups], "is_writer": layout.is_writer}
        Path(results, f"{rank}.json").write_text(json.dumps(record))
    finally:
        dist.destroy_process_group()


def test_a_folder_one_process_cannot_write_leaves_every_process_on_its_own(tmp_path):
    # Nobody may wait for a writer that cannot write: each process is its own group and writes its own files.
    results = tmp_path / "results"
    results.mkdir()
    mp.spawn(_read_only_worker, args=(free_port(), str(tmp_path), str(results)), nprocs=2, join=True)
    first, second = (json.loads((results / f"{rank}.json").read_text()) for rank in range(2))
    assert first["groups"] == second["groups"] == [[0], [1]]
    assert first["is_writer"] and second["is_writer"]
    assert [n for n in os.listdir(tmp_path / "shared") if n.startswith(".anchorclip-probe")] == []
