"""Corrupted pair-anchor views (`--corrupt_pairs`): pair images only, seeded like the rest of the pipeline, off by
default without changing a draw, a family disjoint from ImageNet-C, and trained against the clean targets."""

import numpy as np
import pytest
import torch
from conftest import make_model, make_pair_dataset
from helpers import make_args, make_trainer

from anchorclip.evaluation.corruptions import CORRUPTIONS as IMAGENET_C
from anchorclip.evaluation.corruptions import TEST_CORRUPTIONS, VALIDATION_CORRUPTIONS
from anchorclip.hub.sections import hyperparameter_rows
from anchorclip.loss import FrozenImageTower
from anchorclip.train_corruptions import CORRUPTIONS, corrupt_view


def _dataset(tmp_path, **overrides):
    dataset = make_trainer(tmp_path, **overrides).train_dataset
    dataset.sampler(4)
    return dataset


def _items(dataset, epoch=0):
    dataset.set_epoch(epoch)
    return [dataset[index] for index in range(len(dataset))]


def _same(first: dict, second: dict) -> bool:
    if first.keys() != second.keys():
        return False
    for key, value in first.items():
        other = second[key]
        if isinstance(value, list) and value and isinstance(value[0], torch.Tensor):
            if len(value) != len(other) or not all(map(torch.equal, value, other)):
                return False
        elif isinstance(value, torch.Tensor):
            if not torch.equal(value, other):
                return False
        elif value != other:
            return False
    return True


def test_the_family_is_disjoint_from_imagenet_c():
    assert len(TEST_CORRUPTIONS) == 15 and len(VALIDATION_CORRUPTIONS) == 4
    assert set(CORRUPTIONS) == {"brownish_noise", "plasma_lighting", "sinusoid_grating", "checkerboard_cutout"}
    assert not set(CORRUPTIONS) & set(IMAGENET_C)
    # not even a shared word ("noise" aside: ImageNet-C's are white per-pixel noises, this one is 1/f²)
    words = {word for name in IMAGENET_C for word in name.split("_")} - {"noise"}
    assert not words & {word for name in CORRUPTIONS for word in name.split("_")}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_each_corruption_keeps_shape_and_dtype_and_grows_with_severity(name):
    image = np.random.default_rng(0).uniform(0.2, 0.8, (32, 32, 3)).astype(np.float32)
    changes = []
    for severity in (1, 2, 3, 4, 5):
        out = CORRUPTIONS[name](image, severity, np.random.default_rng(1))
        assert out.shape == image.shape and out.dtype == np.float32
        assert 0.0 <= out.min() and out.max() <= 1.0
        changes.append(float(np.abs(out - image).mean()))
    assert changes[0] > 1e-3
    assert changes[-1] >= changes[0]
    assert CORRUPTIONS[name](np.zeros((24, 40, 3), np.float32), 3, np.random.default_rng(0)).shape == (24, 40, 3)


def test_corrupt_view_is_a_pure_function_of_the_generator():
    image = np.random.default_rng(0).uniform(size=(32, 32, 3)).astype(np.float32)
    first = corrupt_view(image, torch.Generator().manual_seed(3))
    np.testing.assert_array_equal(first, corrupt_view(image, torch.Generator().manual_seed(3)))
    views = [corrupt_view(image, torch.Generator().manual_seed(seed)) for seed in range(8)]
    assert len({view.tobytes() for view in views}) == 8


def test_corrupt_pairs_zero_gives_todays_items(tmp_path):
    plain = _dataset(tmp_path / "absent")
    zero = _dataset(tmp_path / "zero", corrupt_pairs=0.0)
    assert zero.corrupt_pairs == 0.0 and not zero.clean_pair_pixels
    for epoch in (0, 1):
        for before, after in zip(_items(plain, epoch), _items(zero, epoch), strict=True):
            assert _same(before, after)
            assert "pair_clean_pixel_values" not in after


def test_corrupt_pairs_one_changes_every_pair_image_and_nothing_else(tmp_path):
    plain = _items(_dataset(tmp_path / "plain"))
    dataset = _dataset(tmp_path / "corrupt", corrupt_pairs=1.0)
    corrupted = _items(dataset)
    num_pairs = 0
    for before, after in zip(plain, corrupted, strict=True):
        assert torch.equal(before["pixel_values"], after["pixel_values"])  # finetune images untouched
        for clean, view in zip(before["pair_pixel_values"], after["pair_pixel_values"], strict=True):
            assert view.shape == clean.shape and view.dtype == clean.dtype == torch.float32
            assert not torch.equal(view, clean)
            num_pairs += 1
        for key in ("label", "template", "caption_ids", "pair_caption_ids", "skipped"):
            assert before[key] == after[key], key
    assert num_pairs > 0
    # a pure function of (seed, epoch, index): the same pixels again, other pixels in another epoch
    again = _items(_dataset(tmp_path / "again", corrupt_pairs=1.0))
    for first, second in zip(corrupted, again, strict=True):
        assert _same(first, second)
    later = _items(dataset, epoch=1)
    pairs_now = [p for item in corrupted for p in item["pair_pixel_values"]]
    pairs_later = [p for item in later for p in item["pair_pixel_values"]]
    assert not any(torch.equal(a, b) for a in pairs_now for b in pairs_later)


def test_corrupt_pairs_composes_with_augmix(tmp_path):
    augmix = _items(_dataset(tmp_path / "augmix", augmix=1.0))
    both = _items(_dataset(tmp_path / "both", augmix=1.0, corrupt_pairs=1.0))
    for before, after in zip(augmix, both, strict=True):
        assert torch.equal(before["pixel_values"], after["pixel_values"])  # AugMix'd finetune image, no corruption
        for first, second in zip(before["pair_pixel_values"], after["pair_pixel_values"], strict=True):
            assert not torch.equal(first, second)


def test_per_step_distillation_targets_are_the_clean_crops_features(tmp_path):
    trainer = make_trainer(tmp_path, lambda_distill=1.0, corrupt_pairs=1.0, max_steps=1)
    assert trainer.distill_tower is not None and trainer.train_dataset.clean_pair_pixels
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    plain = make_trainer(tmp_path / "plain", lambda_distill=1.0, max_steps=1)
    plain_batch = next(iter(plain.get_train_dataloader()))
    assert "pair_clean_pixel_values" not in plain_batch
    num_images = batch["labels"].shape[0]
    clean = plain_batch["pixel_values"][num_images:]  # the pair crops of a corrupt_pairs=0 run
    torch.testing.assert_close(batch["pair_clean_pixel_values"], clean, rtol=0, atol=0)
    corrupted = batch["pixel_values"][num_images:]
    assert clean.shape == corrupted.shape and not torch.equal(clean, corrupted)

    seen, loss_fn = [], trainer.arf_loss

    def recording_loss(features, logit_scale, local):
        seen.append(local.distill_targets)
        return loss_fn(features, logit_scale, local=local)

    trainer.arf_loss = recording_loss
    trainer.model.train()
    trainer.compute_loss(trainer.model, batch)
    tower = FrozenImageTower(make_model())  # the starting weights
    with torch.no_grad():
        expected, wrong = tower(clean), tower(corrupted)
    assert (expected - wrong).abs().amax() > 1e-2  # the check below can tell the two apart
    torch.testing.assert_close(seen[0], expected, atol=1e-5, rtol=0)


def test_with_corrupt_pairs_the_first_distillation_step_pulls_towards_the_clean_view(tmp_path):
    # lr 0: the student is the pretrained tower, so L_distill is 0 unless its input differs from the target's.
    for q, zero in ((0.0, True), (1.0, False)):
        trainer = make_trainer(tmp_path / str(q), lambda_distill=1.0, corrupt_pairs=q, learning_rate=0.0)
        trainer.train()
        first = next(e for e in trainer.state.log_history if "loss" in e)
        assert (first["loss_distill"] < 1e-6) is zero


def test_precomputed_targets_are_unchanged_by_corrupt_pairs(tmp_path):
    pairs = make_pair_dataset()
    batches, stores = {}, {}
    for q in (0.0, 1.0):
        trainer = make_trainer(
            tmp_path / str(q), pairs=pairs, lambda_distill=1.0, augment_pairs=False, corrupt_pairs=q
        )
        assert trainer.distill_tower is None and not trainer.train_dataset.clean_pair_pixels
        stores[q] = trainer.train_dataset.pair_targets.to_numpy()
        batches[q] = next(iter(trainer.get_train_dataloader()))
    np.testing.assert_array_equal(stores[0.0], stores[1.0])
    assert torch.equal(batches[0.0]["pair_targets"], batches[1.0]["pair_targets"])
    assert "pair_clean_pixel_values" not in batches[1.0]
    num_images = batches[0.0]["labels"].shape[0]
    assert torch.equal(batches[0.0]["pixel_values"][:num_images], batches[1.0]["pixel_values"][:num_images])
    clean, corrupted = batches[0.0]["pixel_values"][num_images:], batches[1.0]["pixel_values"][num_images:]
    assert not torch.equal(clean, corrupted)
    with torch.no_grad():
        start = make_model()(pixel_values=clean).image_embeds
    torch.testing.assert_close(batches[1.0]["pair_targets"], start, atol=2e-3, rtol=0)


@pytest.mark.parametrize("value", [1.5, -0.1, float("nan")])
def test_corrupt_pairs_outside_zero_one_is_refused(tmp_path, value):
    with pytest.raises(ValueError, match=r"corrupt_pairs .* must be in \[0, 1\]"):
        make_args(tmp_path, corrupt_pairs=value)


def test_corrupt_pairs_flag_on_the_command_line():
    from anchorclip.cli.train import parse_args

    *_, training_args = parse_args(["--corrupt_pairs", "0.5", "--use_cpu"])
    assert training_args.corrupt_pairs == 0.5
    *_, training_args = parse_args(["--use_cpu"])
    assert training_args.corrupt_pairs == 0.0


def test_the_model_card_names_corrupt_pairs_when_on():
    name = "corrupted pair anchors (`corrupt_pairs`)"
    rows = dict(hyperparameter_rows({"corrupt_pairs": 0.5}, "arf", {}, None))
    assert rows[name].startswith("q = 0.5 ")
    assert name not in dict(hyperparameter_rows({"corrupt_pairs": 0.0}, "arf", {}, None))
