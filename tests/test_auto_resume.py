"""`anchorclip train` after a kill: SIGKILL once a checkpoint is on disk, then the same command again resumes from
the last checkpoint (`--auto_resume`, on by default; docs/troubleshooting.md) and runs only the remaining steps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import build_tiny_world

MAX_STEPS = 40


def _command(world, out) -> list[str]:
    return [
        sys.executable, "-m", "anchorclip", "train",
        "--model_name_or_path", str(world / "clip"), "--dataset_name", str(world / "train"),
        "--caption_anchors", str(world / "captions"), "--pair_anchors", str(world / "pairs"),
        "--eval_datasets", f"photo@id={world / 'test'}", "--method", "arf", "--output_dir", str(out),
        "--max_steps", str(MAX_STEPS), "--per_device_train_batch_size", "8", "--logging_steps", "1",
        "--save_strategy", "steps", "--save_steps", "4", "--report_to", "none", "--use_cpu",
        "--eval_templates", "simple", "--dataloader_num_workers", "0", "--log_level", "info",
    ]  # fmt: skip


def _finished_checkpoints(out) -> list[int]:
    """Steps of the checkpoints written in full (the trainer state is the last file Trainer writes)."""
    if not out.is_dir():
        return []
    names = [name for name in os.listdir(out) if name.startswith("checkpoint-")]
    return sorted(int(name.split("-")[1]) for name in names if (out / name / "trainer_state.json").is_file())


@pytest.mark.slow  # two runs of the train command in a subprocess
def test_train_command_resumes_after_a_kill(tmp_path):
    world = build_tiny_world(tmp_path / "world")
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    first = subprocess.Popen(_command(world, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 300
    while not _finished_checkpoints(out) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL, "the run ended before it could be killed mid-way"
    done = _finished_checkpoints(out)
    assert done and done[-1] < MAX_STEPS and not (out / "model.safetensors").exists()  # killed mid-run

    second = subprocess.run(_command(world, out), capture_output=True, text=True, timeout=600, env=env)
    log = second.stdout + second.stderr
    assert second.returncode == 0, log[-3000:]
    # It resumed from the last checkpoint and ran only the steps after it.
    last = done[-1]
    assert f"Resuming from {out / f'checkpoint-{last}'}" in log, log[-3000:]
    assert f"global step {last}" in log, log[-3000:]  # Trainer: "Resuming training from checkpoint ... global step"
    state = json.loads((out / f"checkpoint-{MAX_STEPS}" / "trainer_state.json").read_text())
    steps = [entry["step"] for entry in state["log_history"] if "loss" in entry]
    assert steps == list(range(1, MAX_STEPS + 1))  # each step once: the resumed run did not retrain steps 1..last
    assert (out / "model.safetensors").is_file() and json.loads((out / "results.json").read_text())


def test_auto_resume_skips_a_checkpoint_the_kill_left_half_written(tmp_path):
    from types import SimpleNamespace

    from anchorclip.checkpoints import checkpoint_to_resume

    (tmp_path / "checkpoint-4").mkdir()
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text("{}")  # Trainer writes its state last
    (tmp_path / "checkpoint-6").mkdir()
    (tmp_path / "checkpoint-6" / "config.json").write_text("{}")  # killed while saving step 6
    args = SimpleNamespace(resume_from_checkpoint=None, output_dir=str(tmp_path))
    assert checkpoint_to_resume(args, auto_resume=True) == str(tmp_path / "checkpoint-4")
