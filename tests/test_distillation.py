"""Anchor-feature distillation (`lambda_distill`): the pair images' features held near the pretrained tower's."""

import datasets
import pytest
import torch
from conftest import corrupt_bytes, make_model, make_pair_dataset, make_processor
from test_trainer import assert_accumulation_equals_large_batch, make_args, make_trainer

from anchorclip import AnchorTrainingArguments
from anchorclip.hub.sections import hyperparameter_rows, loss_text


def _pair_features(model, pairs) -> torch.Tensor:
    processor = make_processor()
    pixels = processor(images=[item["image"].convert("RGB") for item in pairs], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return model(pixel_values=pixels).image_embeds


def test_distillation_targets_are_the_pretrained_features_of_each_anchor_and_enter_the_loss_weighted(tmp_path):
    pairs = make_pair_dataset()
    trainer = make_trainer(tmp_path, pairs=pairs, lambda_distill=2.0, learning_rate=5e-3, max_steps=4)
    assert trainer.distill_targets is None and trainer.distill_tower is not None
    trainer.train()
    # Computed once, from the starting weights, on each anchor's evaluation view (the CLIP processor's).
    assert torch.allclose(trainer.distill_targets, _pair_features(make_model(), pairs), atol=1e-5)
    assert trainer.distill_tower is None  # the frozen copy is freed once the targets exist
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert logs[-1]["loss_distill"] > 0
    for entry in logs:  # L = L_cls + L_caption + L_pairs + λ3 L_distill
        expected = entry["loss_cls"] + entry["loss_caption"] + entry["loss_pairs"] + 2.0 * entry["loss_distill"]
        assert entry["loss"] == pytest.approx(expected, abs=2e-3)


def test_distillation_term_is_each_pair_images_distance_to_its_own_rows_target(tmp_path):
    # An undecodable anchor in the first batch: the dataset trains on the next row, and the target must follow.
    clean = make_trainer(tmp_path / "clean", lambda_distill=1.0, max_steps=1)
    bad = next(iter(clean.get_train_dataloader()))["pair_rows"][0].item()
    pairs = make_pair_dataset().cast_column("image", datasets.Image(decode=False))
    pairs = pairs.map(lambda row, i: {"image": corrupt_bytes()} if i == bad else {}, with_indices=True)
    trainer = make_trainer(tmp_path, pairs=pairs, lambda_distill=1.0, learning_rate=0.0, max_steps=1)
    trainer.train()
    assert torch.count_nonzero(trainer.distill_targets[bad]) == 0  # never a target: that row is never trained on
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    assert batch["num_skipped_images"] == 1 and batch["pair_rows"][0] == (bad + 1) % len(pairs)
    model = trainer.model
    with torch.no_grad():
        trainer.compute_loss(model, dict(batch))
        features = trainer._encode(model, batch)["pair_images"]
    expected = (features - trainer.distill_targets[batch["pair_rows"]]).pow(2).sum(-1).mean()
    assert trainer._term_sums["loss_distill"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_distillation_holds_pair_features_near_the_pretrained_ones(tmp_path):
    pairs = make_pair_dataset()
    start = _pair_features(make_model(), pairs)
    drift = {}
    for lam in (0.0, 50.0):
        trainer = make_trainer(tmp_path / str(lam), pairs=pairs, lambda_distill=lam, learning_rate=1e-2, max_steps=6)
        trainer.train()
        after = _pair_features(trainer.model.eval(), pairs)
        drift[lam] = (after - start).pow(2).sum(-1).mean().item()
    assert drift[0.0] > 0.01  # the finetune moves them...
    assert drift[50.0] < 0.5 * drift[0.0]  # ...and distillation keeps them closer


def test_distillation_with_gradient_accumulation_equals_large_batch(tmp_path):
    large, small = assert_accumulation_equals_large_batch(tmp_path, atol=5e-6, lambda_distill=3.0, max_steps=2)
    large_logs = [e["loss_distill"] for e in large.state.log_history if "loss" in e]
    small_logs = [e["loss_distill"] for e in small.state.log_history if "loss" in e]
    assert small_logs == pytest.approx(large_logs, abs=1e-4) and large_logs[-1] > 0


def test_frozen_tower_gets_no_gradient_and_targets_stay_fixed(tmp_path):
    trainer = make_trainer(tmp_path, lambda_distill=1.0, learning_rate=1e-2, max_steps=2)
    tower = trainer.distill_tower
    assert all(not p.requires_grad for p in tower.parameters()) and not tower.train().training
    targets = trainer._embed_pair_anchors(tower).clone()
    trainer.train()
    assert torch.equal(trainer.distill_targets, targets) and not trainer.distill_targets.requires_grad
    # The optimizer holds the model's parameters only.
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in tower.parameters()}
    trainer.args.max_steps = 4  # a second train() reuses the targets: nothing is embedded again
    trainer.train()
    assert torch.equal(trainer.distill_targets, targets)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (dict(method="flyp"), "pair anchors"),
        (dict(lambda_pairs=0.0), "pair anchors"),
        (dict(pair_anchors_per_image=0), "pair anchors"),
        (dict(lambda_distill=-1.0), ">= 0"),
    ],
)
def test_distillation_needs_pair_anchors(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        make_args(tmp_path, **{"lambda_distill": 1.0, **overrides})


def test_distillation_is_off_by_default_and_named_in_the_card(tmp_path):
    assert AnchorTrainingArguments(output_dir=str(tmp_path)).lambda_distill == 0.0
    trainer = make_trainer(tmp_path, max_steps=1)
    assert trainer.distill_tower is None and trainer.distill_targets is None
    a = {"lambda_caption": 1.0, "lambda_pairs": 1.0, "lambda_distill": 10.0}
    assert "10.0·L_distill" in loss_text("arf", a)
    assert ("λ3 (anchor-feature distillation, `lambda_distill`)", 10.0) in hyperparameter_rows(a, "arf", {}, None)
    assert "L_distill" not in loss_text("arf", {**a, "lambda_distill": 0.0})
