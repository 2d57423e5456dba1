"""Anchors built in-process on 2 processes: the example captions the finetune set and retrieves pair anchors
on every rank (the builders own the barriers), then trains; the weights equal a 1-process run's."""

from __future__ import annotations

import json
import os
import subprocess

import datasets
import pytest
import torch
from conftest import make_classification_dataset, make_model, make_pair_dataset, make_processor
from helpers import LAUNCH, assert_moved, free_port, save_tiny_captioner
from safetensors.torch import load_file

pytestmark = pytest.mark.slow  # accelerate launch of the example

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "run_anchor_ft.py")


def _launch(processes: int, args: list[str], cache: str) -> None:
    launch = ["--multi_gpu"] if processes > 1 else []
    command = [*LAUNCH, *launch, "--num_processes", str(processes), "--main_process_port", str(free_port()), EXAMPLE]
    command += args
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ANCHORCLIP_CACHE": cache}  # each run embeds its pool itself
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_in_process_anchors_on_two_processes_train_like_one(tmp_path):
    make_model().save_pretrained(tmp_path / "clip")
    make_processor().save_pretrained(tmp_path / "clip")
    make_classification_dataset(32, with_captions=False).save_to_disk(str(tmp_path / "train"))
    make_pair_dataset(40).save_to_disk(str(tmp_path / "pool"))
    captioner = save_tiny_captioner(tmp_path / "captioner")
    weights = {}
    # k 20 without de-duplication: the tiny random CLIP ranks and embeds the pool alike for every class, and a
    # global batch of 16 needs 16 distinct pairs (the trainer refuses a pair twice in one batch).
    for processes in (1, 2):
        out = tmp_path / f"p{processes}"
        args = [
            "--model_name_or_path", str(tmp_path / "clip"), "--dataset_name", str(tmp_path / "train"),
            "--captioner", captioner, "--caption_batch_size", "4", "--pair_pool", str(tmp_path / "pool"),
            "--retrieval_k_per_class", "20", "--retrieval_dedup_threshold", "0",
            # MMR runs on the main process only; every rank must then train on its selection
            "--retrieval_diversity", "0.5", "--retrieval_oversample", "2",
            "--method", "arf", "--output_dir", str(out), "--max_steps", "3",
            "--per_device_train_batch_size", str(16 // processes), "--optim", "sgd", "--learning_rate", "0.5",
            "--max_grad_norm", "0", "--warmup_steps", "0", "--save_strategy", "no", "--report_to", "none",
            "--use_cpu", "--dataloader_num_workers", "0", "--logging_steps", "1",
        ]  # fmt: skip
        _launch(processes, args, str(tmp_path / f"cache{processes}"))
        weights[processes] = load_file(out / "model.safetensors")
        captions = datasets.load_from_disk(str(out / "anchors" / "captions"))
        assert captions.column_names == ["row_index", "caption"] and len(captions) == 32
        provenance = json.loads((out / "anchors" / "pairs" / "anchorclip_provenance.json").read_text())
        assert provenance["diversity"] == 0.5, provenance
    start = load_file(tmp_path / "clip" / "model.safetensors")
    for name in ("visual_projection.weight", "text_projection.weight"):  # it trained, beyond the tolerance below
        assert_moved(start[name], weights[1][name], name)
    assert weights[2].keys() == weights[1].keys()
    for name, value in weights[1].items():
        torch.testing.assert_close(weights[2][name], value, rtol=0, atol=1e-5, msg=name)
