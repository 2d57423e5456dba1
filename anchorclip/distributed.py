"""The launch's processes: one, or those of `accelerate launch` / `torchrun`, for the jobs that split work over them.

* `process_state`: Accelerate's view of the launch (a `PartialState`), on gloo where there is no GPU;
* `launch_accelerator`: an `Accelerator` over the same processes, for a command that wants its mixed precision;
* `LaunchProcesses`: what a job uses of an `Accelerator` (device, ranks, barriers, autocast), in full precision and
  without creating an `AcceleratorState`, so that a `Trainer` built later still chooses its own precision;
* `joined_processes`: the one guard against a launch whose processes did not join one group (each would do the
  whole job and overwrite the others' files);
* `check_same_command`: refuse a launch whose machines run different code or different arguments;
* `close_process_group`: leave the group cleanly at the end of a command.

Which process writes which file, on shared and on node-local folders: `anchorclip.filesystems`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

__all__ = [
    "BARRIER_TIMEOUT_HOURS",
    "LaunchProcesses",
    "check_same_command",
    "close_process_group",
    "joined_processes",
    "launch_processes",
    "launch_accelerator",
    "process_state",
]

# Processes can finish their shares minutes to hours apart; the default barrier timeout (10-30 minutes) would kill
# the run at the final barrier.
BARRIER_TIMEOUT_HOURS = 12


def _launch_on_cpu() -> bool:
    """Whether the launch's processes must join a CPU (gloo) process group: no GPU, or `ACCELERATE_USE_CPU`.

    Without a GPU, Accelerate only joins a torchrun-style process group when asked for the CPU explicitly;
    otherwise every process would believe it is alone and do all the work, writing the same files at once.
    """
    import torch

    return not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")


def check_launch_joined(joined: int, what: str, fix: str) -> None:
    """Raise when the launch started more processes (`WORLD_SIZE`) than the `joined` ones that work together.

    The guard of every job: such processes would each do the whole job (train its own model, write the same
    files at once; a reader of a file that another process is rewriting can die of SIGBUS). It happens on a
    machine without GPUs when the processes are not told to use the CPU. `what` says what the processes
    would do alone, `fix` how to make them join.
    """
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > joined:
        raise RuntimeError(
            f"This job was launched as {launched} processes (WORLD_SIZE={launched}), but {joined} work together: "
            f"{what}. {fix} With GPUs, check that torch sees them (torch.cuda.is_available())."
        )


def joined_processes(state):
    """`state`, unless the launch started more processes than `state` counts (`check_launch_joined`)."""
    check_launch_joined(
        state.num_processes,
        "each process would do the whole job and overwrite the others' files",
        "On a machine without GPUs build the Accelerator with cpu=True (or set ACCELERATE_USE_CPU=1).",
    )
    return state


def process_state():
    """Accelerate's view of the launch (one process, or one of `accelerate launch`/`torchrun`'s processes).

    On CPU the processes join a gloo group (`_launch_on_cpu`), with the long barrier timeout.
    """
    from accelerate import PartialState

    return joined_processes(PartialState(cpu=_launch_on_cpu(), timeout=timedelta(hours=BARRIER_TIMEOUT_HOURS)))


def launch_accelerator():
    """An `Accelerator` over the launch's processes, for commands that want its mixed precision (`anchorclip
    retrieve`): the same CPU rule and barrier timeout as `process_state`."""
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    timeout = InitProcessGroupKwargs(timeout=timedelta(hours=BARRIER_TIMEOUT_HOURS))
    return joined_processes(Accelerator(cpu=_launch_on_cpu(), kwargs_handlers=[timeout]))


class LaunchProcesses:
    """The processes of the launch (one, `accelerate launch` or `torchrun`), embedding in full precision.

    The default `accelerator` of the embedding and retrieval jobs: it has what they use of an `Accelerator`
    (device, process index, barriers, autocast) but creates no `AcceleratorState`, so a `Trainer` built later in
    the same process still chooses its own mixed precision (`--bf16`). Pass an `Accelerator` to embed in its
    mixed precision instead (`anchorclip retrieve` does).
    """

    mixed_precision = "no"

    def __init__(self):
        self._state = process_state()

    def __getattr__(self, name: str):
        return getattr(self._state, name)

    @staticmethod
    def autocast():
        return contextlib.nullcontext()


def launch_processes(accelerator=None):
    """The processes a job runs on: `accelerator` once checked by `joined_processes`, else `LaunchProcesses()`."""
    return LaunchProcesses() if accelerator is None else joined_processes(accelerator)


def _source_fingerprint() -> str:
    """A hash of anchorclip's own source files: two machines with the same version string but other code differ."""
    digest = hashlib.sha256()
    package = Path(__file__).parent
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def check_same_command(argv: Sequence[str]) -> None:
    """Raise, on every process, when the launch's processes run other code or other arguments than process 0.

    Machines set up by hand drift (one node upgraded, one launch script edited); such a launch would train or
    write something no single command describes. A no-op outside a multi-process launch."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    from anchorclip import __version__

    mine = {"code": f"{__version__} ({_source_fingerprint()})", "command": list(argv), "host": socket.gethostname()}
    every: list[dict | None] = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    first = every[0]
    assert first is not None
    for rank, theirs in enumerate(every):
        assert theirs is not None
        for what in ("code", "command"):
            if theirs[what] != first[what]:
                raise RuntimeError(
                    f"The launch's processes disagree on the {what}: process {rank} (on {theirs['host']}) runs "
                    f"{theirs[what]}, process 0 (on {first['host']}) {first[what]}. Start every machine with the "
                    "same anchorclip install and the same command."
                )


def close_process_group() -> None:
    """Leave the launch's process group at the end of a job: wait for every process, then destroy the group.

    A process that exits with its gloo group alive can abort at interpreter shutdown ("terminate called without
    an active exception", SIGABRT) after all its work is done: gloo's threads outlive the interpreter. The
    launcher then reports the job as failed. A no-op outside a launch."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
