"""Anchor-feature distillation (`lambda_distill`): the pair images' features held near the pretrained tower's."""

import os

import datasets
import pytest
import torch
from conftest import corrupt_bytes, make_model, make_pair_dataset, make_processor
from helpers import assert_accumulation_equals_large_batch, make_args, make_trainer

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
    before = {k: v.clone() for k, v in trainer.distill_tower.state_dict().items()}
    trainer.train()
    assert all(not p.requires_grad for p in trainer.distill_tower.parameters())
    for key, value in trainer.distill_tower.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not trainer.distill_tower.training
    # The optimizer holds the model's parameters only.
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in trainer.distill_tower.parameters()}


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
    assert trainer.distill_tower is None and trainer.train_dataset.pair_targets is None
    a = {"lambda_caption": 1.0, "lambda_pairs": 1.0, "lambda_distill": 10.0}
    assert "10.0·L_distill" in loss_text("arf", a)
    assert ("λ3 (anchor-feature distillation, `lambda_distill`)", 10.0) in hyperparameter_rows(a, "arf", {}, None)
    assert "L_distill" not in loss_text("arf", {**a, "lambda_distill": 0.0})
    # un-augmented pair images are named (they change what L_pairs sees); the default says nothing
    rows = dict(hyperparameter_rows({**a, "augment_pairs": False}, "arf", {}, None))
    assert "un-augmented" in rows["pair images"]
    assert "pair images" not in dict(hyperparameter_rows({**a, "augment_pairs": True}, "arf", {}, None))


# ------------------------------------------------------------- un-augmented pair images, targets computed once


def test_unaugmented_pair_images_are_their_evaluation_view_every_epoch(tmp_path):
    pairs = make_pair_dataset()
    expected = make_processor()(images=[image.convert("RGB") for image in pairs["image"]], return_tensors="pt")
    for augment in (True, False):
        dataset = make_trainer(tmp_path / str(augment), pairs=pairs, augment_pairs=augment).train_dataset
        dataset.sampler(4)
        for epoch in (0, 1):
            dataset.set_epoch(epoch)
            for index in range(len(dataset)):
                item = dataset[index]
                for pixels in item["pair_pixel_values"]:
                    matches = (pixels - expected["pixel_values"]).abs().flatten(1).amax(1) < 1e-5
                    assert bool(matches.any()) is not augment  # augmented crops never equal the evaluation view


def test_precomputed_targets_equal_the_frozen_towers_and_enter_the_loss_weighted(tmp_path):
    pairs = make_pair_dataset()
    trainer = make_trainer(
        tmp_path, pairs=pairs, lambda_distill=2.0, augment_pairs=False, learning_rate=5e-3, max_steps=4
    )
    assert trainer.distill_tower is None  # no frozen copy of the tower is kept
    targets = torch.from_numpy(trainer.train_dataset.pair_targets.to_numpy())
    # Row i: the starting weights' features of pair image i's evaluation view (stored in float16).
    assert torch.allclose(targets, _pair_features(make_model(), pairs), atol=2e-3)
    batch = next(iter(trainer.get_train_dataloader()))
    pair_pixels = batch["pixel_values"][batch["labels"].shape[0] :]
    assert batch["pair_targets"].shape == (batch["num_pairs"], targets.shape[1])
    with torch.no_grad():
        start = make_model()(pixel_values=pair_pixels).image_embeds
    assert torch.allclose(batch["pair_targets"], start, atol=2e-3)  # the target of the very pixels trained on
    trainer.train()
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert logs[0]["loss_distill"] == pytest.approx(0.0, abs=1e-5)  # step 1 sees the starting weights
    assert logs[-1]["loss_distill"] > 1e-4
    for entry in logs:  # L = L_cls + L_caption + L_pairs + λ3 L_distill
        expected = entry["loss_cls"] + entry["loss_caption"] + entry["loss_pairs"] + 2.0 * entry["loss_distill"]
        assert entry["loss"] == pytest.approx(expected, abs=2e-3)


def test_precomputed_targets_follow_the_row_trained_on_and_are_cached(tmp_path):
    # An undecodable anchor in the first batch: the dataset trains on the next row, and the target must follow.
    plain = make_pair_dataset().cast_column("image", datasets.Image(decode=False))
    probe = make_trainer(tmp_path / "probe", pairs=plain, lambda_distill=1.0, augment_pairs=False).train_dataset
    probe.sampler(4)
    bad = probe._pair_indices(int(probe.order(0)[0]))[0]
    pairs = plain.map(lambda row, i: {"image": corrupt_bytes()} if i == bad else {}, with_indices=True)
    trainer = make_trainer(tmp_path, pairs=pairs, lambda_distill=1.0, augment_pairs=False)
    store = trainer.train_dataset.pair_targets
    assert not store.valid[bad]  # never a target: that row is never trained on
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["num_skipped_images"] == 1
    substitute = torch.from_numpy(store.gather([(bad + 1) % len(pairs)]))
    assert torch.equal(batch["pair_targets"][0:1], substitute)
    # A second run over the same model and pair set reads the cache: the same files, nothing embedded again.
    mtimes = {name: os.path.getmtime(os.path.join(store.path, name)) for name in os.listdir(store.path)}
    again = make_trainer(tmp_path / "again", pairs=pairs, lambda_distill=1.0, augment_pairs=False)
    assert again.train_dataset.pair_targets.path == store.path
    assert {name: os.path.getmtime(os.path.join(store.path, name)) for name in os.listdir(store.path)} == mtimes


def test_precomputed_distillation_with_gradient_accumulation_equals_large_batch(tmp_path):
    large, small = assert_accumulation_equals_large_batch(
        tmp_path, atol=5e-6, lambda_distill=3.0, augment_pairs=False, max_steps=2
    )
    large_logs = [e["loss_distill"] for e in large.state.log_history if "loss" in e]
    small_logs = [e["loss_distill"] for e in small.state.log_history if "loss" in e]
    assert small_logs == pytest.approx(large_logs, abs=1e-4) and large_logs[-1] > 0


@pytest.mark.parametrize(
    ("flags", "expected"),
    [([], True), (["--augment_pairs", "false"], False), (["--no_augment_pairs"], False), (["--augment_pairs"], True),
     (["--augment-pairs", "False"], False)],
)  # fmt: skip
def test_augment_pairs_every_spelling(flags, expected):
    from anchorclip.cli.train import parse_args

    *_, training_args = parse_args(["--lambda_distill", "1", "--use_cpu", *flags])
    assert training_args.augment_pairs is expected


def test_a_batch_without_its_targets_is_refused(tmp_path):
    trainer = make_trainer(tmp_path, lambda_distill=1.0, augment_pairs=False, max_steps=1)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    del batch["pair_targets"]
    trainer.model.train()
    with pytest.raises(KeyError, match="pair_targets"):
        trainer.compute_loss(trainer.model, batch)
