import json
import os
import subprocess
import sys

import pytest
from conftest import make_classification_dataset, make_model, make_pair_dataset, make_processor

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "run_anchor_ft.py")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    model = make_model()
    model.save_pretrained(root / "clip")
    make_processor().save_pretrained(root / "clip")
    make_classification_dataset(32, with_captions=False).save_to_disk(str(root / "train"))
    make_classification_dataset(32, with_captions=True).save_to_disk(str(root / "captioned"))
    make_pair_dataset(40).save_to_disk(str(root / "pairs"))
    make_classification_dataset(12, seed=9).save_to_disk(str(root / "test"))
    return root


def _args(world, out, method="arf"):
    return [
        "--model_name_or_path", str(world / "clip"), "--dataset_name", str(world / "train"),
        "--caption_anchors", str(world / "captioned"), "--pair_anchors", str(world / "pairs"),
        "--eval_datasets", f"photo@id={world / 'test'}", f"sketch@domain_shift={world / 'test'}",
        "--method", method, "--output_dir", str(out), "--max_steps", "3", "--per_device_train_batch_size", "8",
        "--logging_steps", "1", "--report_to", "none", "--use_cpu", "--eval_templates", "simple",
        "--wise_alphas", "0.5", "--save_strategy", "no",
    ]  # fmt: skip


def test_run_anchor_ft_end_to_end(world, tmp_path, capsys):
    sys.path.insert(0, os.path.dirname(EXAMPLE))
    try:
        import run_anchor_ft
    finally:
        sys.path.pop(0)
    results = run_anchor_ft.main(_args(world, tmp_path / "out"))
    printed = capsys.readouterr().out
    assert "| zero-shot |" in printed and "| arf |" in printed and "WiSE-FT α=0.5" in printed
    saved = json.load(open(tmp_path / "out" / "results.json"))
    assert set(saved["finetuned"]["groups"]) == {"id", "domain_shift"}
    assert set(saved["finetuned"]["sets"]) == {"photo", "sketch"}
    assert saved["finetuned"] == results["finetuned"]
    assert os.path.isfile(tmp_path / "out" / "model.safetensors")
    logged = [entry for entry in json.load(open(tmp_path / "out" / "trainer_state.json"))["log_history"]]
    assert any("loss_caption" in entry and "loss_pairs" in entry for entry in logged)


def test_caption_anchors_must_match_finetune_rows(world, tmp_path):
    sys.path.insert(0, os.path.dirname(EXAMPLE))
    import run_anchor_ft

    sys.path.pop(0)
    make_classification_dataset(10).save_to_disk(str(tmp_path / "short"))
    args = _args(world, tmp_path / "out")
    args[args.index("--caption_anchors") + 1] = str(tmp_path / "short")
    with pytest.raises(ValueError, match="--caption_anchors has 10 rows but the finetune set has 32"):
        run_anchor_ft.main(args)


def test_stale_pair_anchors_are_refused(world, tmp_path):
    sys.path.insert(0, os.path.dirname(EXAMPLE))
    import run_anchor_ft

    sys.path.pop(0)
    args = _args(world, tmp_path / "out")
    at = args.index("--pair_anchors")
    args[at : at + 2] = ["--pair_pool", str(world / "pairs"), "--retrieval_k_per_class", "3"]
    run_anchor_ft.main(args)  # builds the pairs under out/anchors/pairs
    run_anchor_ft.main(args)  # the same settings: reused
    changed = [*args[:-2], "--retrieval_k_per_class", "4", *args[-2:]]
    with pytest.raises(ValueError, match=r"other settings \(differences in: k_per_class\)"):
        run_anchor_ft.main(changed)


def test_accelerate_launch_two_processes(world, tmp_path):
    command = [
        # `--cpu` alone starts one process in accelerate 1.x; `--multi_gpu` on a CPU machine runs gloo processes.
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", EXAMPLE,
        *_args(world, tmp_path / "ddp", "flyp"),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    saved = json.load(open(tmp_path / "ddp" / "results.json"))
    assert saved["train"]["train_loss"] > 0
    assert saved["hardware"]["num_processes"] == 2


def _losses(output_dir) -> list[float]:
    history = json.load(open(os.path.join(output_dir, "trainer_state.json")))["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


def test_two_processes_match_one_process_with_the_same_global_batch(world, tmp_path):
    """Gathered loss under DDP: 2 x 8 images per step trains exactly like 1 x 16 (ARF, all three terms)."""
    runs = {}
    for processes, per_device in ((1, "16"), (2, "8")):
        out = tmp_path / f"p{processes}"
        args = _args(world, out)
        args[args.index("--per_device_train_batch_size") + 1] = per_device
        args = [a for a in args if a not in ("--wise_alphas", "0.5")]
        launch = ["--multi_gpu"] if processes > 1 else []
        command = [
            sys.executable, "-m", "accelerate.commands.launch", *launch, "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", EXAMPLE, *args,
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        runs[processes] = _losses(out)
    assert len(runs[1]) == 3
    assert runs[2] == pytest.approx(runs[1], abs=2e-4)
