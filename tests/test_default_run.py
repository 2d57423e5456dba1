"""A few-step smoke run of the README's main job: `run_anchor_ft.py` with no data arguments."""

import json
import os
import sys

import pytest

from anchorclip.miniworld import EVAL_SPLITS, MINICAPTIONER_PATH, MINICLIP_PATH

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")


@pytest.mark.skipif(not os.path.isdir(MINICLIP_PATH) or not os.path.isdir(MINICAPTIONER_PATH), reason="no assets")
def test_default_world_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ANCHORCLIP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    sys.path.insert(0, EXAMPLES)
    try:
        import run_anchor_ft
    finally:
        sys.path.pop(0)
    out = tmp_path / "out"
    run_anchor_ft.main([
        "--miniworld_fraction", "0.02", "--max_steps", "2", "--per_device_train_batch_size", "16",
        "--logging_steps", "1", "--save_steps", "2", "--dataloader_num_workers", "0", "--output_dir", str(out),
    ])  # fmt: skip
    printed = capsys.readouterr().out
    assert "| zero-shot |" in printed and "| arf |" in printed
    results = json.load(open(out / "results.json"))
    assert set(results["finetuned"]["sets"]) == set(EVAL_SPLITS)
    assert set(results["finetuned"]["groups"]) == {"id", "domain_shift", "zero_shot", "retrieval"}
    assert results["provenance"]["caption_anchors"]["captioner"].endswith("minicaptioner")
    assert results["provenance"]["pair_anchors"]["counts"]["anchors"] > 0
    assert (out / "model.safetensors").is_file() and (out / "checkpoint-2").is_dir()
    history = json.load(open(out / "trainer_state.json"))["log_history"]
    assert any("loss_caption" in entry and "loss_pairs" in entry for entry in history)
