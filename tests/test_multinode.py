"""Every job on two "machines": two `accelerate launch`es with `--num_machines 2` on this host's loopback (gloo,
`--use_cpu`), the way a cluster launches one per node. Each job's result equals the one-process run's, with the
output folder shared by the machines and with each machine's own (node-local output_dir and caches: each launch
runs in its own working directory with its own `$ANCHORCLIP_CACHE` and `$HF_HOME`); a machine killed mid-training
is resumed by the same command started again on both.

docs/multinode.md describes the setup; anchorclip/filesystems.py decides who writes which file."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import build_tiny_world, free_port, save_tiny_captioner

pytestmark = pytest.mark.slow  # every test launches processes

ROOT = Path(__file__).resolve().parents[1]
MULTINODE_LAUNCH = ROOT / "examples" / "multinode" / "launch.sh"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = build_tiny_world(tmp_path_factory.mktemp("world"))
    save_tiny_captioner(root / "captioner")
    return root


def _env(home: Path) -> dict:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "PYTHONFAULTHANDLER": "1",  # a process killed by a signal prints its stack in the machine's log
        "ANCHORCLIP_CACHE": str(home / "anchorclip-cache"),
        "HF_HOME": str(home / "hf-home"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }


def start_machines(command: list[str], root: Path, shared: bool, per_machine: int = 1) -> list[subprocess.Popen]:
    """Launch `anchorclip <command>` as 2 machines x `per_machine` processes through examples/multinode/launch.sh
    (the SLURM script's launcher). Machine r runs in `root/shared` (shared) or `root/machine-r` (node-local):
    relative paths in `command` land there, as on a node-local disk."""
    port = str(free_port())
    machines = []
    for rank in range(2):
        home = root / ("shared" if shared else f"machine-{rank}")
        home.mkdir(parents=True, exist_ok=True)
        env = _env(home) | {
            "NUM_MACHINES": "2",
            "MACHINE_RANK": str(rank),
            "MAIN_PROCESS_IP": "127.0.0.1",
            "MAIN_PROCESS_PORT": port,
            "PROCESSES_PER_MACHINE": str(per_machine),
            "PYTHON": sys.executable,
        }
        log = open(home / f"log-{rank}.txt", "w")
        machines.append(
            subprocess.Popen(
                ["bash", str(MULTINODE_LAUNCH), *command],
                cwd=home,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    return machines


def run_machines(command: list[str], root: Path, shared: bool, per_machine: int = 1) -> None:
    machines = start_machines(command, root, shared, per_machine)
    for machine in machines:
        machine.wait(timeout=600)
    for rank, machine in enumerate(machines):
        home = root / ("shared" if shared else f"machine-{rank}")
        assert machine.returncode == 0, (home / f"log-{rank}.txt").read_text()[-4000:]


def run_one(command: list[str], home: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [sys.executable, "-m", "anchorclip", *command], cwd=home, env=_env(home), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]


def homes(root: Path, shared: bool) -> list[Path]:
    return [root / "shared"] if shared else [root / "machine-0", root / "machine-1"]


def train_command(world: Path, batch: int, *extra: str) -> list[str]:
    return [
        "train", "--model_name_or_path", str(world / "clip"), "--dataset_name", str(world / "train"),
        "--caption_anchors", str(world / "captions"), "--pair_anchors", str(world / "pairs"),
        "--eval_datasets", f"photo@id={world / 'test'}", "--eval_templates", "simple", "--method", "arf",
        "--output_dir", "out", "--max_steps", "3", "--per_device_train_batch_size", str(batch), "--optim", "sgd",
        "--learning_rate", "0.5", "--lr_scheduler_type", "constant", "--max_grad_norm", "0", "--seed", "0",
        "--dataloader_num_workers", "0", "--logging_steps", "1", "--report_to", "none", "--use_cpu", *extra,
    ]  # fmt: skip


def max_difference(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    first, second = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert first.keys() == second.keys()
    return max(float((first[name] - second[name]).abs().max()) for name in first)


@pytest.mark.parametrize(
    "shared, per_machine", [(False, 1), (True, 2)], ids=["node-local, 1 per machine", "shared, 2 per machine"]
)
def test_train_on_two_machines_equals_one_process(world, tmp_path, shared, per_machine):
    run_one(train_command(world, 8, "--save_strategy", "no"), tmp_path / "one")
    batch = 8 // (2 * per_machine)
    run_machines(train_command(world, batch, "--save_strategy", "steps", "--save_steps", "2"), tmp_path, shared,
                 per_machine)  # fmt: skip
    one = tmp_path / "one" / "out"
    main = homes(tmp_path, shared)[0] / "out"
    # SGD, 3 steps: the same model up to float32 summation order (1.2e-6 measured; 1 process vs 2 / 4).
    assert max_difference(one, main) < 2e-6
    assert json.loads((main / "results.json").read_text())["hardware"]["num_processes"] == 2 * per_machine
    for home in homes(tmp_path, shared):  # every machine can resume: its copy holds complete checkpoints
        for step in (2, 3):
            checkpoint = home / "out" / f"checkpoint-{step}"
            assert (checkpoint / "trainer_state.json").is_file() and (checkpoint / "model.safetensors").is_file()
        assert max_difference(one, home / "out" / "checkpoint-3") < 2e-6
    if not shared:  # results, card and final model are machine 0's: one copy, not one per machine
        assert not (tmp_path / "machine-1" / "out" / "results.json").exists()


def caption_command(world: Path) -> list[str]:
    return ["caption", "--dataset_name", str(world / "train"), "--captioner", str(world / "captioner"),
            "--output_dir", "captions", "--shard_size", "4", "--batch_size", "4"]  # fmt: skip


def retrieve_command(world: Path) -> list[str]:
    return ["retrieve", "--model_name_or_path", str(world / "clip"), "--pool", str(world / "pairs"),
            "--finetune_dataset", str(world / "train"), "--k_per_class", "3", "--output_dir", "anchors",
            "--shard_size", "8", "--batch_size", "4", "--pool_id", "tiny-pool"]  # fmt: skip


def eval_command(world: Path) -> list[str]:
    return ["eval", "--model_name_or_path", str(world / "clip"), "--eval_datasets", f"photo@id={world / 'test'}",
            "--eval_templates", "simple", "--output_dir", "eval", "--use_cpu"]  # fmt: skip


@pytest.mark.parametrize("shared", [False, True], ids=["node-local", "shared"])
def test_caption_retrieve_eval_on_two_machines_equal_one_process(world, tmp_path, shared):
    import datasets

    for command in (caption_command(world), retrieve_command(world), eval_command(world)):
        run_one(command, tmp_path / "one")
        run_machines(command, tmp_path, shared)
    one = tmp_path / "one"
    for home in homes(tmp_path, shared):  # every machine's copy holds the whole output
        captions = datasets.load_from_disk(str(home / "captions"))
        assert captions.to_dict() == datasets.load_from_disk(str(one / "captions")).to_dict()
        anchors = datasets.load_from_disk(str(home / "anchors"))
        expected = datasets.load_from_disk(str(one / "anchors"))
        assert len(anchors) > 0 and anchors["pool_index"] == expected["pool_index"]
        assert anchors["caption"] == expected["caption"]
        if not shared:  # each machine embedded into its own cache, and holds every shard
            cache = list((home / "anchorclip-cache").glob("image-*"))
            assert cache and (cache[0] / "meta.json").is_file()
    main = homes(tmp_path, shared)[0]
    results, reference = (json.loads((h / "eval" / "results.json").read_text()) for h in (main, one))
    assert results["evaluated"] == reference["evaluated"]
    assert results["hardware"]["num_processes"] == 2


def test_retrieve_from_pool_embeddings_on_two_machines_equals_one_process(world, tmp_path):
    # The LAION-layout path: the main process alone builds the pool index (into its machine's own cache) and
    # searches it; the other machine waits, then reads the anchors from its own copy of output_dir.
    import datasets
    from helpers import embedded_laion_pool

    pool = embedded_laion_pool(tmp_path / "pool", str(world / "clip"))
    command = ["retrieve", "--pool_embeddings", str(pool), "--model_name_or_path", str(world / "clip"),
               "--finetune_dataset", str(world / "train"), "--k_per_class", "5",
               "--output_dir", "anchors"]  # fmt: skip
    run_one(command, tmp_path / "one")
    run_machines(command, tmp_path, shared=False)
    expected = datasets.load_from_disk(str(tmp_path / "one" / "anchors"))
    assert len(expected) > 0
    for home in homes(tmp_path, shared=False):
        anchors = datasets.load_from_disk(str(home / "anchors"))
        assert anchors["pool_index"] == expected["pool_index"] and anchors["caption"] == expected["caption"]
    built = [home for home in homes(tmp_path, shared=False) if (home / "anchorclip-cache" / "pool-index").is_dir()]
    assert built == [tmp_path / "machine-0"]  # one index build, on the main process's machine


def _complete_checkpoints(out: Path) -> list[int]:
    if not out.is_dir():
        return []
    names = [name for name in os.listdir(out) if name.startswith("checkpoint-")]
    return sorted(int(name.split("-")[1]) for name in names if (out / name / "trainer_state.json").is_file())


def kill_machine(machine: subprocess.Popen) -> None:
    """SIGKILL a "machine": its launcher and every process under it (torchrun starts its workers in sessions of
    their own, so the launcher's process group does not hold them)."""
    import psutil

    tree = psutil.Process(machine.pid)
    for process in [tree, *tree.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGKILL)


def test_a_killed_machine_resumes_with_the_same_command(world, tmp_path):
    command = train_command(world, 4, "--save_strategy", "steps", "--save_steps", "4", "--log_level", "info")
    command[command.index("--max_steps") + 1] = "400"  # long enough to be killed mid-way whatever the load
    machines = start_machines(command, tmp_path, shared=False)
    outs = [tmp_path / f"machine-{rank}" / "out" for rank in range(2)]
    deadline = time.monotonic() + 300
    while not all(_complete_checkpoints(out) for out in outs) and time.monotonic() < deadline:
        time.sleep(0.05)
    kill_machine(machines[1])
    machines[1].wait(timeout=60)
    # Machine 0 notices its peer is gone and stops (it does not hang in a collective for the 12 h timeout).
    machines[0].wait(timeout=300)
    assert machines[0].returncode != 0, "the run ended before machine 1 was killed"
    done = [_complete_checkpoints(out) for out in outs]
    assert all(done) and not (outs[0] / "model.safetensors").exists()
    resumable = min(steps[-1] for steps in done)

    run_machines(command, tmp_path, shared=False)
    log = (tmp_path / "machine-0" / "log-0.txt").read_text()
    assert f"Resuming from out/checkpoint-{resumable}" in log, log[-3000:]
    state = json.loads((outs[0] / "trainer_state.json").read_text())
    assert state["global_step"] == 400
    # It ran only the remaining steps: the first logged step after the resume is the checkpoint's next one.
    assert f"global step {resumable}" in log, log[-3000:]


def _chunks(folder: Path) -> int:
    return len(list((folder / "_shards").glob("rows-*.json"))) if (folder / "_shards").is_dir() else 0


def test_captioning_resumes_after_a_killed_machine(world, tmp_path):
    """Node-local output folders: each machine keeps the chunks it finished; started again, the machines pool
    what they hold and caption only the rest, and the table equals one process's."""
    import datasets
    from conftest import make_classification_dataset

    make_classification_dataset(2000, with_captions=False).save_to_disk(str(tmp_path / "many"))
    command = caption_command(world)
    command[command.index("--dataset_name") + 1] = str(tmp_path / "many")
    command[command.index("--shard_size") + 1] = "8"
    machines = start_machines(command, tmp_path, shared=False)
    outs = [tmp_path / f"machine-{rank}" / "captions" for rank in range(2)]
    deadline = time.monotonic() + 300
    while not all(_chunks(out) >= 4 for out in outs) and time.monotonic() < deadline:
        time.sleep(0.05)
    kill_machine(machines[1])
    machines[1].wait(timeout=60)
    machines[0].wait(timeout=300)
    assert machines[0].returncode != 0, "captioning ended before machine 1 was killed"
    held = [_chunks(out) for out in outs]
    assert all(held) and sum(held) < 250  # 2000 rows / 8 = 250 chunks: killed part-way

    run_machines(command, tmp_path, shared=False)
    log = (tmp_path / "machine-0" / "log-0.txt").read_text()
    assert "chunks are already captioned" in log, log[-3000:]
    run_one(command, tmp_path / "one")
    expected = datasets.load_from_disk(str(tmp_path / "one" / "captions")).to_dict()
    for out in outs:
        assert datasets.load_from_disk(str(out)).to_dict() == expected
