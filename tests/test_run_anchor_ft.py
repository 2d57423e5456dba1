import json
import os

import datasets
import pytest
from conftest import import_example
from helpers import build_tiny_world

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "run_anchor_ft.py")
# The tiny random CLIP ranks the pool alike for every class and embeds it alike (de-duplication would keep a
# few): enough distinct pairs that a global batch of 8 never holds one twice (the trainer refuses fewer).
ENOUGH_PAIRS = ["--retrieval_k_per_class", "12", "--retrieval_dedup_threshold", "0"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_tiny_world(tmp_path_factory.mktemp("world"))


def _args(world, out, method="arf"):
    return [
        "--model_name_or_path", str(world / "clip"), "--dataset_name", str(world / "train"),
        "--caption_anchors", str(world / "captions"), "--pair_anchors", str(world / "pairs"),
        "--eval_datasets", f"photo@id={world / 'test'}", f"sketch@domain_shift={world / 'test'}",
        "--method", method, "--output-dir", str(out), "--max_steps", "3", "--per_device_train_batch_size", "8",
        "--logging_steps", "1", "--report_to", "none", "--use_cpu", "--eval_templates", "simple",
        "--wise_alphas", "0.5", "--save_strategy", "no",
    ]  # fmt: skip


def test_run_anchor_ft_end_to_end(world, tmp_path, capsys):
    run_anchor_ft = import_example()
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


def test_caption_anchors_must_cover_the_finetune_rows(world, tmp_path):
    run_anchor_ft = import_example()
    datasets.Dataset.from_dict({"row_index": list(range(10)), "caption": ["a red circle"] * 10}).save_to_disk(
        str(tmp_path / "short")
    )
    args = _args(world, tmp_path / "out")
    args[args.index("--caption_anchors") + 1] = str(tmp_path / "short")
    with pytest.raises(ValueError, match="22 of the 32 finetune rows have no entry in the captions table"):
        run_anchor_ft.main(args)


def test_defaults_are_parser_defaults_and_every_spelling_wins():
    parse_args = import_example().parse_args
    _, data_args, training_args = parse_args([])  # the default world's preset
    assert data_args.captioner is not None and data_args.pair_pool == "miniworld:pool"
    assert (training_args.max_steps, training_args.per_device_train_batch_size) == (200, 128)
    assert training_args.output_dir == "outputs/run_anchor_ft"
    for argv in (["--output-dir", "x", "--max-steps", "50"], ["--output_dir=x", "--max_steps=50"]):
        _, _, training_args = parse_args(argv)
        assert (training_args.output_dir, training_args.max_steps) == ("x", 50), argv
        assert training_args.per_device_train_batch_size == 128  # the rest of the preset still applies
    _, data_args, training_args = parse_args(["--dataset_name", "my/data", "--caption-anchors", "c"])
    assert training_args.max_steps == -1 and data_args.pair_pool is None  # no preset outside the default world
    _, data_args, _ = parse_args(["--caption-anchors", "c"])
    assert data_args.captioner is None and data_args.caption_anchors == "c"  # given anchors: no captioner


def test_wise_ft_for_the_linear_head_baseline(world, tmp_path):
    """FT's head is interpolated from the zero-shot head it started at: alpha 0 gives the zero-shot scores back."""
    args = _args(world, tmp_path / "out", method="ft")
    args[args.index("--wise_alphas") + 1 : args.index("--wise_alphas") + 2] = ["0", "0.5"]
    results = import_example().main(args)
    assert results["wise"]["0.0"] == results["zeroshot"]
    assert set(results["wise"]["0.5"]["sets"]) == {"photo", "sketch"}


def test_bf16_with_anchors_built_in_process(world, tmp_path):
    """Building anchors must not fix the accelerator state before the Trainer sets --bf16 (no accelerate config)."""
    args = _args(world, tmp_path / "out")
    at = args.index("--pair_anchors")
    args[at : at + 2] = ["--pair_pool", str(world / "pairs"), *ENOUGH_PAIRS]
    args[args.index("--max_steps") + 1] = "1"
    results = import_example().main([*args, "--bf16"])
    assert results["args"]["training"]["bf16"] and results["train"]["train_loss"] > 0
    assert results["provenance"]["pair_anchors"]["counts"]["anchors"] > 0


def test_stale_pair_anchors_are_refused(world, tmp_path):
    run_anchor_ft = import_example()
    args = _args(world, tmp_path / "out")
    at = args.index("--pair_anchors")
    args[at : at + 2] = ["--pair_pool", str(world / "pairs"), *ENOUGH_PAIRS]
    run_anchor_ft.main(args)  # builds the pairs under out/anchors/pairs
    run_anchor_ft.main(args)  # the same settings: reused
    changed = [*args[:-2], "--retrieval_k_per_class", "4", *args[-2:]]
    with pytest.raises(ValueError, match=r"other settings \(differences in: k_per_class\)"):
        run_anchor_ft.main(changed)
    diversified = [*args[:-2], "--retrieval_diversity", "0.5", *args[-2:]]
    with pytest.raises(ValueError, match=r"other settings \(differences in: diversity\)"):
        run_anchor_ft.main(diversified)


def test_a_set_smaller_than_one_batch_fails_before_anchors_are_built(world, tmp_path):
    """The batch check runs before captioning and retrieval (minutes at scale), not after them."""
    run_anchor_ft = import_example()
    args = _args(world, tmp_path / "out")
    args[args.index("--per_device_train_batch_size") + 1] = "64"
    # Anchors to be built from a captioner that does not exist: reaching them would raise another error.
    args[args.index("--caption_anchors") : args.index("--caption_anchors") + 2] = ["--captioner", "/no/captioner"]
    with pytest.raises(ValueError, match="The finetune set has 32 examples, fewer than one global batch of 64"):
        run_anchor_ft.main(args)
    assert not (tmp_path / "out" / "anchors").exists()
