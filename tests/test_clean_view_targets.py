"""What the two training-view options that replace pair images share (`--augmix`, `--corrupt_pairs`): their
distillation targets are the clean view's features, precomputed targets are untouched, and a value outside [0, 1]
is refused. What each option draws is tested in test_augmix.py and test_corrupt_pairs.py."""

import numpy as np
import pytest
import torch
from conftest import make_model, make_pair_dataset
from helpers import make_args, make_trainer

from anchorclip.loss import FrozenImageTower

OPTIONS = ["augmix", "corrupt_pairs"]


@pytest.mark.parametrize("option", OPTIONS)
def test_per_step_distillation_targets_are_the_clean_crops_features(tmp_path, option):
    trainer = make_trainer(tmp_path, lambda_distill=1.0, max_steps=1, **{option: 1.0})
    assert trainer.distill_tower is not None and trainer.train_dataset.clean_pair_pixels
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    # The clean crops are the pair pixels a run without the option trains on; that run keeps no second copy.
    plain = make_trainer(tmp_path / "plain", lambda_distill=1.0, max_steps=1)
    plain_batch = next(iter(plain.get_train_dataloader()))
    assert "pair_clean_pixel_values" not in plain_batch
    num_images = batch["labels"].shape[0]
    clean, view = plain_batch["pixel_values"][num_images:], batch["pixel_values"][num_images:]
    torch.testing.assert_close(batch["pair_clean_pixel_values"], clean, rtol=0, atol=0)
    assert clean.shape == view.shape and not torch.equal(clean, view)

    seen, loss_fn = [], trainer.arf_loss

    def recording_loss(features, logit_scale, local):
        seen.append(local.distill_targets)
        return loss_fn(features, logit_scale, local=local)

    trainer.arf_loss = recording_loss
    trainer.model.train()
    trainer.compute_loss(trainer.model, batch)
    tower = FrozenImageTower(make_model())  # the starting weights
    with torch.no_grad():
        expected, wrong = tower(clean), tower(view)
    assert (expected - wrong).abs().amax() > 1e-2  # the check below can tell the two apart
    torch.testing.assert_close(seen[0], expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("option", OPTIONS)
def test_the_first_distillation_step_pulls_towards_the_clean_view(tmp_path, option):
    # lr 0: the student is the pretrained tower, so L_distill is 0 unless its input differs from the target's.
    for value, zero in ((0.0, True), (1.0, False)):
        trainer = make_trainer(tmp_path / str(value), lambda_distill=1.0, learning_rate=0.0, **{option: value})
        trainer.train()
        first = next(e for e in trainer.state.log_history if "loss" in e)
        assert (first["loss_distill"] < 1e-6) is zero


@pytest.mark.parametrize("option", OPTIONS)
def test_precomputed_targets_are_unchanged(tmp_path, option):
    pairs = make_pair_dataset()
    batches, stores = {}, {}
    for value in (0.0, 1.0):
        trainer = make_trainer(
            tmp_path / str(value), pairs=pairs, lambda_distill=1.0, augment_pairs=False, **{option: value}
        )
        assert trainer.distill_tower is None and not trainer.train_dataset.clean_pair_pixels
        stores[value] = trainer.train_dataset.pair_targets.to_numpy()
        batches[value] = next(iter(trainer.get_train_dataloader()))
    np.testing.assert_array_equal(stores[0.0], stores[1.0])
    assert torch.equal(batches[0.0]["pair_targets"], batches[1.0]["pair_targets"])
    assert "pair_clean_pixel_values" not in batches[1.0]
    # The un-augmented pairs still get the option's view: the targets are those of the clean evaluation view.
    num_images = batches[0.0]["labels"].shape[0]
    clean, view = batches[0.0]["pixel_values"][num_images:], batches[1.0]["pixel_values"][num_images:]
    assert not torch.equal(clean, view)
    with torch.no_grad():
        start = make_model()(pixel_values=clean).image_embeds
    torch.testing.assert_close(batches[1.0]["pair_targets"], start, atol=2e-3, rtol=0)


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("value", [1.5, -0.1, float("nan")])
def test_outside_zero_one_is_refused(tmp_path, option, value):
    with pytest.raises(ValueError, match=rf"{option} .* must be in \[0, 1\]"):
        make_args(tmp_path, **{option: value})


@pytest.mark.parametrize("option", OPTIONS)
def test_the_flag_on_the_command_line(option):
    from anchorclip.cli.train import parse_args

    *_, training_args = parse_args([f"--{option}", "0.5", "--use_cpu"])
    assert getattr(training_args, option) == 0.5
    *_, training_args = parse_args(["--use_cpu"])
    assert getattr(training_args, option) == 0.0
