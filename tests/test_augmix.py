"""AugMix training views (`--augmix`): seeded like the rest of the pipeline, off by default without changing a
draw, disjoint from ImageNet-C, and trained against the clean view's targets."""

import numpy as np
import pytest
import torch
from conftest import make_model, make_pair_dataset
from helpers import assert_accumulation_equals_large_batch, make_args, make_trainer
from PIL import Image

from anchorclip.augmix import OPERATIONS, augment_and_mix
from anchorclip.batching import _generator
from anchorclip.data import decode_image
from anchorclip.evaluation.corruptions import CORRUPTIONS, TEST_CORRUPTIONS, VALIDATION_CORRUPTIONS
from anchorclip.hub.sections import hyperparameter_rows
from anchorclip.loss import FrozenImageTower


def _image(size=32, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8))


def _dataset(tmp_path, **overrides):
    dataset = make_trainer(tmp_path, **overrides).train_dataset
    dataset.sampler(4)
    return dataset


def _items(dataset, epoch=0):
    dataset.set_epoch(epoch)
    return [dataset[index] for index in range(len(dataset))]


def test_the_operations_are_the_references_and_none_is_an_imagenet_c_corruption():
    assert len(TEST_CORRUPTIONS) == 15 and len(VALIDATION_CORRUPTIONS) == 4
    assert set(OPERATIONS) == {
        "autocontrast", "equalize", "posterize", "rotate", "solarize", "shear_x", "shear_y", "translate_x",
        "translate_y",
    }  # fmt: skip
    assert not set(OPERATIONS) & set(CORRUPTIONS)
    # the reference's augmentations_all adds these: they overlap ImageNet-C (contrast, brightness, saturate)
    assert not set(OPERATIONS) & {"color", "contrast", "brightness", "sharpness", "saturate"}


def test_augment_and_mix_is_a_pure_function_of_the_generator():
    image = _image()
    first = augment_and_mix(image, torch.Generator().manual_seed(3))
    assert first.shape == (32, 32, 3) and first.dtype == np.float32
    assert 0.0 <= first.min() and first.max() <= 1.0
    np.testing.assert_array_equal(first, augment_and_mix(image, torch.Generator().manual_seed(3)))
    views = [augment_and_mix(image, torch.Generator().manual_seed(seed)) for seed in range(8)]
    assert len({view.tobytes() for view in views}) == 8
    clean = np.asarray(image, dtype=np.float32) / 255
    assert all(np.abs(view - clean).max() > 1 / 255 for view in views)
    # every operation keeps the image's size (the translations scale with it: a third of its side at most)
    rng = np.random.default_rng(0)
    for name, operation in OPERATIONS.items():
        assert operation(_image(16), 3, rng).size == (16, 16), name


def test_augmix_zero_leaves_every_draw_as_it_was(tmp_path):
    # Today's item, rebuilt by hand: crop, template, then each pair's crop, from the item's one generator.
    dataset = _dataset(tmp_path, augmix=0.0)
    assert dataset.augmix == 0.0 and not dataset.clean_pair_pixels
    for epoch in (0, 1):
        for index, item in enumerate(_items(dataset, epoch)):
            generator = _generator(dataset.seed, epoch, index)
            image = decode_image(dataset.finetune[index][dataset.image_column])
            assert torch.equal(item["pixel_values"], dataset.transform(image, generator))
            assert item["template"] == int(torch.randint(dataset.num_templates, (1,), generator=generator))
            for pair_index, pixels in zip(dataset._pair_indices(index), item["pair_pixel_values"], strict=True):
                pair = decode_image(dataset.pairs[pair_index][dataset.pair_image_column])
                assert torch.equal(pixels, dataset.pair_transform(pair, generator))
            assert "pair_clean_pixel_values" not in item


def test_augmix_one_changes_every_image_and_nothing_else(tmp_path):
    plain = _items(_dataset(tmp_path / "plain", augmix=0.0))
    dataset = _dataset(tmp_path / "augmix", augmix=1.0)
    mixed = _items(dataset)
    for before, after in zip(plain, mixed, strict=True):
        images = [(before["pixel_values"], after["pixel_values"])]
        images += list(zip(before["pair_pixel_values"], after["pair_pixel_values"], strict=True))
        assert images
        for clean, view in images:
            assert view.shape == clean.shape and view.dtype == clean.dtype == torch.float32
            assert not torch.equal(view, clean)
        # the same crops' targets: label, template, caption, pair captions
        for key in ("label", "template", "caption_ids", "pair_caption_ids"):
            assert before[key] == after[key], key
    # a pure function of (seed, epoch, index): the same pixels again, other pixels in another epoch
    again = _items(_dataset(tmp_path / "again", augmix=1.0))
    for first, second in zip(mixed, again, strict=True):
        assert torch.equal(first["pixel_values"], second["pixel_values"])
        assert all(map(torch.equal, first["pair_pixel_values"], second["pair_pixel_values"]))
    later = _items(dataset, epoch=1)
    assert not any(torch.equal(a["pixel_values"], b["pixel_values"]) for a, b in zip(mixed, later, strict=True))


def test_augmix_half_replaces_some_images(tmp_path):
    plain = _items(_dataset(tmp_path / "plain", augmix=0.0))
    half = _items(_dataset(tmp_path / "half", augmix=0.5))
    changed = [not torch.equal(a["pixel_values"], b["pixel_values"]) for a, b in zip(plain, half, strict=True)]
    assert 0 < sum(changed) < len(changed)


def test_per_step_distillation_targets_are_the_clean_crops_features(tmp_path):
    trainer = make_trainer(tmp_path, lambda_distill=1.0, augmix=1.0, max_steps=1)
    assert trainer.distill_tower is not None and trainer.train_dataset.clean_pair_pixels
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    # The clean crops are the pair pixels an augmix=0 run trains on.
    plain = make_trainer(tmp_path / "plain", lambda_distill=1.0, max_steps=1)
    plain_batch = next(iter(plain.get_train_dataloader()))
    assert "pair_clean_pixel_values" not in plain_batch  # memory unchanged without AugMix
    clean = batch["pair_clean_pixel_values"]
    num_images = batch["labels"].shape[0]
    torch.testing.assert_close(clean, plain_batch["pixel_values"][num_images:], rtol=0, atol=0)
    augmented = batch["pixel_values"][num_images:]
    assert clean.shape == augmented.shape and not torch.equal(clean, augmented)

    seen, loss_fn = [], trainer.arf_loss

    def recording_loss(features, logit_scale, local):
        seen.append(local.distill_targets)
        return loss_fn(features, logit_scale, local=local)

    trainer.arf_loss = recording_loss
    trainer.model.train()
    trainer.compute_loss(trainer.model, batch)
    tower = FrozenImageTower(make_model())  # the starting weights
    targets = seen[0]
    torch.testing.assert_close(targets, tower(clean), atol=1e-5, rtol=0)
    # ... and not the AugMix view's features, which are far from them
    assert (targets - tower(augmented)).abs().amax() > 1e-2


def test_with_augmix_the_first_distillation_step_pulls_towards_the_clean_view(tmp_path):
    # lr 0: the student is the pretrained tower, so L_distill is 0 unless its input differs from the target's.
    for augmix, zero in ((0.0, True), (1.0, False)):
        trainer = make_trainer(tmp_path / str(augmix), lambda_distill=1.0, augmix=augmix, learning_rate=0.0)
        trainer.train()
        first = next(e for e in trainer.state.log_history if "loss" in e)
        assert (first["loss_distill"] < 1e-6) is zero


def test_precomputed_targets_are_unchanged_by_augmix(tmp_path):
    pairs = make_pair_dataset()
    batches, stores = {}, {}
    for augmix in (0.0, 1.0):
        trainer = make_trainer(
            tmp_path / str(augmix), pairs=pairs, lambda_distill=1.0, augment_pairs=False, augmix=augmix
        )
        assert trainer.distill_tower is None and not trainer.train_dataset.clean_pair_pixels
        stores[augmix] = trainer.train_dataset.pair_targets.to_numpy()
        batches[augmix] = next(iter(trainer.get_train_dataloader()))
    np.testing.assert_array_equal(stores[0.0], stores[1.0])
    assert torch.equal(batches[0.0]["pair_targets"], batches[1.0]["pair_targets"])
    assert "pair_clean_pixel_values" not in batches[1.0]
    # The un-augmented pairs still get their AugMix view: the targets are those of the (clean) evaluation view.
    num_images = batches[0.0]["labels"].shape[0]
    clean, augmented = batches[0.0]["pixel_values"][num_images:], batches[1.0]["pixel_values"][num_images:]
    assert not torch.equal(clean, augmented)
    with torch.no_grad():
        start = make_model()(pixel_values=clean).image_embeds
    torch.testing.assert_close(batches[1.0]["pair_targets"], start, atol=2e-3, rtol=0)


@pytest.mark.parametrize("value", [1.5, -0.1, float("nan")])
def test_augmix_outside_zero_one_is_refused(tmp_path, value):
    with pytest.raises(ValueError, match=r"augmix .* must be in \[0, 1\]"):
        make_args(tmp_path, augmix=value)


def test_augmix_flag_on_the_command_line():
    from anchorclip.cli.train import parse_args

    *_, training_args = parse_args(["--augmix", "0.5", "--use_cpu"])
    assert training_args.augmix == 0.5
    *_, training_args = parse_args(["--use_cpu"])
    assert training_args.augmix == 0.0


def test_the_model_card_names_augmix_when_on():
    for method in ("flyp", "arf", "ft"):
        rows = dict(hyperparameter_rows({"augmix": 0.5}, method, {}, None))
        assert rows["AugMix views (`augmix`)"].startswith("p = 0.5 ")
        assert "AugMix views (`augmix`)" not in dict(hyperparameter_rows({"augmix": 0.0}, method, {}, None))


def test_augmix_distillation_with_gradient_accumulation_equals_large_batch(tmp_path):
    # Each item's view is a pure function of (seed, epoch, index): micro-batches see what the large batch sees.
    large, small = assert_accumulation_equals_large_batch(
        tmp_path, atol=5e-6, lambda_distill=3.0, augmix=1.0, max_steps=2
    )
    large_logs = [e["loss_distill"] for e in large.state.log_history if "loss" in e]
    small_logs = [e["loss_distill"] for e in small.state.log_history if "loss" in e]
    assert small_logs == pytest.approx(large_logs, abs=1e-4) and large_logs[0] > 0
