"""Smoke tests of the benchmark scripts (speed: flops, throughput, loader, precision, peer_step; tuning and diagnoses:
lambda_sweep, wise_saved, tower_swap): CPU only."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

import flops  # noqa: E402
import loader  # noqa: E402
import peer_step  # noqa: E402
import precision  # noqa: E402
import throughput  # noqa: E402
from common import CONFIGS  # noqa: E402


def test_flop_count_matches_published_vit_b_16():
    # ViT-B/16 at 224: ~17.6 GMACs per image (timm / fvcore) = ~35.1 GFLOPs.
    assert flops.image_forward_flops(CONFIGS["vit-b-16"]) == pytest.approx(35.1e9, rel=0.01)
    ratio = flops.arf_flyp_ratio(CONFIGS["vit-b-16"], 256)
    assert 2.0 < ratio < 2.3  # one extra image pass per finetune image roughly doubles the step


def test_peak_table():
    assert flops.peak_bf16_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert flops.peak_bf16_tflops("NVIDIA H100 PCIe") == 756.0
    assert flops.peak_bf16_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert flops.peak_bf16_tflops(None) is None


def test_throughput_variant_runs_compute_loss():
    result = throughput.run_variant("tiny", "arf", {"bf16": False}, 2, 1, 1, torch.device("cpu"))
    assert result["status"] == "ok" and result["finetune_images_per_s"] > 0
    assert result["mfu"] is None  # CPU: n/a
    assert result["step_tflop"] == pytest.approx(flops.step_flops(CONFIGS["tiny"], 2, 1, True)["train_step"] / 1e12)


def test_loader_uses_the_trainer_data_path():
    finetune, pairs = loader.make_datasets(rows=8, pair_rows=8, unique=2)
    trainer = loader.make_trainer("arf", finetune, pairs, batch=2, workers=0, non_blocking=False)
    result = loader.time_loader(trainer, batches=1)
    assert result["status"] == "ok" and result["decoded_images_per_s"] == pytest.approx(
        2 * result["finetune_images_per_s"]
    )
    batch = next(iter(trainer.get_train_dataloader()))
    assert tuple(batch["pixel_values"].shape) == (4, 3, 224, 224)  # 2 finetune + 2 pair images at 224x224


def test_precision_runs_both_precisions_on_the_same_batches():
    model, spec = precision.build_model("tiny")
    args = precision.argparse.Namespace(batch=2, steps=2, num_batches=1, lr=1e-4, ckpt=False)
    fp32 = precision.train(model, spec, args, torch.device("cpu"), bf16=False)
    again = precision.train(model, spec, args, torch.device("cpu"), bf16=False)
    assert fp32 == again  # same init, same batches: the comparison is deterministic
    assert len(fp32) == 2 and fp32[1] < fp32[0]  # one batch repeated: the second step's loss is lower


def test_lambda_sweep_grid_trains_what_each_point_names():
    import lambda_sweep
    import robustness

    base, budget = lambda_sweep.BASE, lambda_sweep.BUDGET
    assert lambda_sweep.points_of(base, (0.5, 1.0, 2.0))[0] == (1.0, 1.0)  # the row's own weights win ties
    assert len(lambda_sweep.points_of(base, (0.5, 1.0, 2.0))) == 9
    # The budget row has no caption anchors: only λ2 is swept, λ1 stays 0.
    assert lambda_sweep.points_of(budget, (0.5, 1.0, 2.0)) == [(0.0, 1.0), (0.0, 0.5), (0.0, 2.0)]
    assert lambda_sweep.variant(base, 1.0, 1.0) == base  # the table's cached runs are reused
    for row in (base, budget):
        for point in lambda_sweep.points_of(row, lambda_sweep.VALUES):
            family, overrides, *_ = robustness.METHODS[lambda_sweep.variant(row, *point)]
            assert family == robustness.METHODS[row][0]
            assert (overrides.get("lambda_caption", 1.0), overrides.get("lambda_pairs", 1.0)) == point
    # FLYP has no λ: the same nine runs go to lr (× its chosen) and weight decay; its own point first.
    flyp = lambda_sweep.FLYP
    points = lambda_sweep.points_of(flyp, (0.5, 1.0, 2.0))
    assert len(points) == 9 and points[0] == (1.0, robustness.WEIGHT_DECAY)
    assert lambda_sweep.task(flyp, points[0], 1e-3, 0) == (flyp, 1e-3, 0, False)
    for point in points:
        name, lr, *_ = lambda_sweep.task(flyp, point, 1e-3, 0)
        family, overrides, *_ = robustness.METHODS[name]
        assert family == robustness.METHODS[flyp][0] and lr == pytest.approx(1e-3 * point[0])
        assert overrides.get("weight_decay", robustness.WEIGHT_DECAY) == point[1]


def test_lambda_sweep_chooses_on_the_mean_of_the_grid_seeds():
    import lambda_sweep

    runs = [
        {"lr": 1e-3, "val": 0.8, "val_corruption": 0.6, "test": {"groups": {"id": 0.9, "corruption": 0.5}}},
        {"lr": 1e-3, "val": 0.6, "val_corruption": 0.4, "test": {"groups": {"id": 0.7, "corruption": 0.3}}},
    ]
    mean = lambda_sweep._mean_run(runs)
    assert mean["lr"] == 1e-3
    assert mean["val"] == pytest.approx(0.7) and mean["val_corruption"] == pytest.approx(0.5)
    assert mean["test"]["groups"] == pytest.approx({"id": 0.8, "corruption": 0.4})
    clean_only = {"lr": 1e-3, "val": 0.8, "test": {"groups": {"id": 0.9}}}  # a run without --corruptions
    assert "val_corruption" not in lambda_sweep._mean_run([clean_only])


PEER_ARGS = ["--config", "tiny", "--batch", "4", "--steps", "2", "--warmup", "1", "--rounds", "1", "--threads", "1"]


def test_peer_step_times_anchorclip_sides_in_their_own_processes(tmp_path):
    # The anchorclip sides run whether open_clip is installed or not (CI installs only .[dev]).
    output = tmp_path / "peer.json"
    report = peer_step.main([*PEER_ARGS, "--sides", "flyp", "arf", "--output", str(output)])
    for side in ("flyp", "arf"):
        (run,) = report["runs"][side]
        assert len(run["step_times_s"]) == 2 and report["summary"][side]["images_per_s"] > 0
        assert run["peak_rss_mib"] >= run["rss_before_training_mib"] > 0
    assert report["runs"]["flyp"][0]["parameters"] == report["runs"]["arf"][0]["parameters"]
    assert output.exists() and "| flyp |" in (tmp_path / "peer.md").read_text()


@pytest.mark.skipif(
    not peer_step.open_clip_available(), reason="open_clip not installed: pip install --no-deps open_clip_torch==3.3.0"
)
def test_peer_step_open_clip_side_trains_the_same_architecture(tmp_path):
    report = peer_step.main([*PEER_ARGS, "--sides", "open_clip", "flyp", "--output", str(tmp_path / "peer.json")])
    open_clip, flyp = report["runs"]["open_clip"][0], report["runs"]["flyp"][0]
    # The same towers: only the text position table differs (open_clip's is cut to the prompts' width).
    positions = CONFIGS["tiny"]["text"]["max_position_embeddings"] - open_clip["context_length"]
    assert flyp["parameters"] - open_clip["parameters"] == positions * CONFIGS["tiny"]["text"]["hidden_size"]
    assert report["summary"]["flyp"]["images_per_s_vs_open_clip"] > 0


def test_wise_saved_sweeps_a_saved_run_and_chooses_alpha_on_validation(tmp_path, monkeypatch):
    import robustness
    import wise_saved

    from anchorclip import AnchorCLIPModel
    from anchorclip.miniworld import MINICLIP_PATH

    finetuned = AnchorCLIPModel.from_pretrained(MINICLIP_PATH)
    with torch.no_grad():
        finetuned.visual_projection.weight.mul_(-1.0)  # far from the pretrained model: α matters
    finetuned.save_pretrained(tmp_path / "models" / "run-s0")
    small_sets = robustness.evaluation_sets(24)
    monkeypatch.setattr(robustness, "evaluation_sets", lambda size, corruptions: small_sets)
    output = tmp_path / "wise"
    argv = ["--workdir", str(tmp_path), "--runs", "run", "--seeds", "0", "--alphas", "1", "0", "--output", str(output)]
    monkeypatch.setattr(sys, "argv", ["wise_saved.py", *argv])
    wise_saved.main()
    report = json.loads((tmp_path / "wise.json").read_text())
    entry = report["runs"]["run"]
    # α = 0 is the pretrained model, whose validation score beats the negated projection's: chosen on validation.
    assert entry["score"]["0.0"] > entry["score"]["1.0"] and entry["chosen_alpha"] == 0.0
    trainer = robustness.evaluation_trainer(AnchorCLIPModel.from_pretrained(MINICLIP_PATH), str(tmp_path))
    assert entry["sweep"]["0.0"]["0"]["val"] == robustness.evaluate_run(trainer, small_sets)["val"]
    assert "WiSE-FT (α=0, validation-chosen)" in (tmp_path / "wise.md").read_text()
    # Every (run, seed, α) is cached: a second sweep evaluates nothing.
    monkeypatch.setattr(robustness, "evaluate_run", lambda *args: pytest.fail("evaluated a cached α"))
    wise_saved.main()


def test_tower_swap_takes_each_tower_from_the_model_it_names():
    import tower_swap

    from anchorclip import AnchorCLIPModel
    from anchorclip.miniworld import MINICLIP_PATH

    pretrained, moved = (AnchorCLIPModel.from_pretrained(MINICLIP_PATH) for _ in range(2))
    with torch.no_grad():
        for parameter in moved.parameters():
            parameter.add_(1.0)
    mixed = tower_swap.assemble(moved, pretrained, early_from=pretrained, blocks=1)
    state, source = mixed.state_dict(), {"moved": moved.state_dict(), "pretrained": pretrained.state_dict()}
    expected = {
        "visual_projection.weight": "moved",  # image tower
        "vision_model.encoder.layers.1.mlp.fc1.weight": "moved",  # after the first block
        "vision_model.encoder.layers.0.mlp.fc1.weight": "pretrained",  # the first block: from early_from
        "vision_model.embeddings.patch_embedding.weight": "pretrained",
        "text_projection.weight": "pretrained",  # text tower
        "logit_scale": "pretrained",
    }
    for name, origin in expected.items():
        assert torch.equal(state[name], source[origin][name]), name


def test_zero_shot_outside_tasks_are_new_and_scored_by_their_prompts(tmp_path):
    import zero_shot_outside

    from anchorclip import AnchorCLIPModel
    from anchorclip.miniworld import MINICLIP_PATH
    from anchorclip.miniworld.attributes import ATTRIBUTES
    from anchorclip.miniworld.splits import SPLITS

    # Seeds no split draws from, attributes no split is labelled by: tasks nothing was chosen on.
    assert not {seed for *_, seed, _ in zero_shot_outside.TASKS} & {spec.seed for spec in SPLITS.values()}
    assert not {task[0] for task in zero_shot_outside.TASKS} & {spec.label for spec in SPLITS.values()}
    sets = zero_shot_outside.outside_sets(size=24)
    for attribute, classes, *_ in zero_shot_outside.TASKS:
        labels = sets[attribute].dataset["label"]
        assert sets[attribute].class_names == list(classes) and set(labels) <= set(range(len(classes)))
        names = [ATTRIBUTES[attribute][i] for i in sets[attribute].dataset[attribute]]  # the scene's own attribute
        assert labels == [classes.index(name) for name in names] and len(set(labels)) > 1
    scores = zero_shot_outside.score(AnchorCLIPModel.from_pretrained(MINICLIP_PATH), sets, str(tmp_path))
    assert set(scores) == {"size", "position"} and all(0.0 <= v <= 100.0 for v in scores.values())


def test_corruption_groups_split_cells_by_the_renderer_and_saved_runs_must_exist(tmp_path):
    import corruption_groups
    import robustness

    assert corruption_groups.group_of("test_photo-pixelate-3") == "renderer-like"
    assert corruption_groups.group_of("test_photo-motion_blur-1") == "renderer-like"
    assert corruption_groups.group_of("test_photo-jpeg_compression-5") == "other"
    assert corruption_groups.group_of("test_photo") is None and corruption_groups.group_of("val") is None
    sets = {"a-pixelate-1": {"values": [0.2, 0.4]}, "a-fog-1": {"values": [0.6, 0.8]}, "photo": {"values": [1, 1]}}
    means = corruption_groups.group_means(sets)  # the clean set counts in no group
    expected = {"renderer-like": [0.2, 0.4], "other": [0.6, 0.8], "all": [0.4, 0.6]}
    assert means.keys() == expected.keys()
    assert all(means[group] == pytest.approx(values) for group, values in expected.items())
    with pytest.raises(SystemExit, match="train the run with --save_models"):
        robustness.saved_model(str(tmp_path), "missing-run", 0)
