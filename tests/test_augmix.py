"""AugMix training views (`--augmix`): seeded like the rest of the pipeline, off by default without changing a
draw, disjoint from ImageNet-C, and trained against the clean view's targets."""

import numpy as np
import pytest
import torch
from helpers import assert_accumulation_equals_large_batch, items_of, sampled_dataset
from PIL import Image

from anchorclip.augmix import OPERATIONS, augment_and_mix
from anchorclip.batching import _generator
from anchorclip.data import decode_image
from anchorclip.evaluation.corruptions import CORRUPTIONS, TEST_CORRUPTIONS, VALIDATION_CORRUPTIONS
from anchorclip.hub.sections import hyperparameter_rows


def _image(size=32, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8))


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
    dataset = sampled_dataset(tmp_path, augmix=0.0)
    assert dataset.augmix == 0.0 and not dataset.clean_pair_pixels
    for epoch in (0, 1):
        for index, item in enumerate(items_of(dataset, epoch)):
            generator = _generator(dataset.seed, epoch, index)
            image = decode_image(dataset.finetune[index][dataset.image_column])
            assert torch.equal(item["pixel_values"], dataset.transform(image, generator))
            assert item["template"] == int(torch.randint(dataset.num_templates, (1,), generator=generator))
            for pair_index, pixels in zip(dataset._pair_indices(index), item["pair_pixel_values"], strict=True):
                pair = decode_image(dataset.pairs[pair_index][dataset.pair_image_column])
                assert torch.equal(pixels, dataset.pair_transform(pair, generator))
            assert "pair_clean_pixel_values" not in item


def test_augmix_one_changes_every_image_and_nothing_else(tmp_path):
    plain = items_of(sampled_dataset(tmp_path / "plain", augmix=0.0))
    dataset = sampled_dataset(tmp_path / "augmix", augmix=1.0)
    mixed = items_of(dataset)
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
    again = items_of(sampled_dataset(tmp_path / "again", augmix=1.0))
    for first, second in zip(mixed, again, strict=True):
        assert torch.equal(first["pixel_values"], second["pixel_values"])
        assert all(map(torch.equal, first["pair_pixel_values"], second["pair_pixel_values"]))
    later = items_of(dataset, epoch=1)
    assert not any(torch.equal(a["pixel_values"], b["pixel_values"]) for a, b in zip(mixed, later, strict=True))


def test_augmix_half_replaces_some_images(tmp_path):
    plain = items_of(sampled_dataset(tmp_path / "plain", augmix=0.0))
    half = items_of(sampled_dataset(tmp_path / "half", augmix=0.5))
    changed = [not torch.equal(a["pixel_values"], b["pixel_values"]) for a, b in zip(plain, half, strict=True)]
    assert 0 < sum(changed) < len(changed)


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
