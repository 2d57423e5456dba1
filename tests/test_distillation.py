"""Anchor-feature distillation (`lambda_distill`): the pair images' features held near the pretrained tower's."""

import pytest
import torch
from conftest import make_model, make_pair_dataset, make_processor
from test_trainer import assert_accumulation_equals_large_batch, make_args, make_trainer

from anchorclip import AnchorTrainingArguments
from anchorclip.hub.sections import hyperparameter_rows, loss_text


def _pair_features(model, pairs) -> torch.Tensor:
    processor = make_processor()
    pixels = processor(images=[item["image"].convert("RGB") for item in pairs], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return model(pixel_values=pixels).image_embeds


def test_distillation_term_is_zero_at_the_start_and_enters_the_loss_weighted(tmp_path):
    trainer = make_trainer(tmp_path, lambda_distill=2.0, learning_rate=0.0, max_steps=1)
    trainer.train()
    first = next(e for e in trainer.state.log_history if "loss" in e)
    assert first["loss_distill"] == pytest.approx(0.0, abs=1e-6)  # the targets are the starting weights' features

    trainer = make_trainer(tmp_path / "moving", lambda_distill=2.0, learning_rate=5e-3, max_steps=4)
    trainer.train()
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert logs[-1]["loss_distill"] > 0
    for entry in logs:  # L = L_cls + L_caption + L_pairs + λ3 L_distill
        expected = entry["loss_cls"] + entry["loss_caption"] + entry["loss_pairs"] + 2.0 * entry["loss_distill"]
        assert entry["loss"] == pytest.approx(expected, abs=2e-3)


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


def test_frozen_targets_get_no_gradient_and_stay_fixed(tmp_path):
    trainer = make_trainer(tmp_path, lambda_distill=1.0, learning_rate=1e-2, max_steps=2)
    before = {k: v.clone() for k, v in trainer.distill_targets.state_dict().items()}
    trainer.train()
    assert all(not p.requires_grad for p in trainer.distill_targets.parameters())
    for key, value in trainer.distill_targets.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not trainer.distill_targets.training
    # The optimizer holds the model's parameters only.
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in trainer.distill_targets.parameters()}


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
    assert make_trainer(tmp_path, max_steps=1).distill_targets is None
    a = {"lambda_caption": 1.0, "lambda_pairs": 1.0, "lambda_distill": 10.0}
    assert "10.0·L_distill" in loss_text("arf", a)
    assert ("λ3 (anchor-feature distillation, `lambda_distill`)", 10.0) in hyperparameter_rows(a, "arf", {}, None)
    assert "L_distill" not in loss_text("arf", {**a, "lambda_distill": 0.0})
