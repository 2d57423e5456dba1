"""Corrupted pair-anchor views (`--corrupt_pairs`): pair images only, seeded like the rest of the pipeline, off by
default without changing a draw, a family disjoint from ImageNet-C, and trained against the clean targets."""

import numpy as np
import pytest
import torch
from helpers import items_of, sampled_dataset

from anchorclip.evaluation.corruptions import CORRUPTIONS as IMAGENET_C
from anchorclip.evaluation.corruptions import TEST_CORRUPTIONS, VALIDATION_CORRUPTIONS
from anchorclip.hub.sections import hyperparameter_rows
from anchorclip.train_corruptions import CORRUPTIONS, corrupt_view


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


def test_corrupt_pairs_zero_gives_todaysitems_of(tmp_path):
    plain = sampled_dataset(tmp_path / "absent")
    zero = sampled_dataset(tmp_path / "zero", corrupt_pairs=0.0)
    assert zero.corrupt_pairs == 0.0 and not zero.clean_pair_pixels
    for epoch in (0, 1):
        for before, after in zip(items_of(plain, epoch), items_of(zero, epoch), strict=True):
            assert _same(before, after)
            assert "pair_clean_pixel_values" not in after


def test_corrupt_pairs_one_changes_every_pair_image_and_nothing_else(tmp_path):
    plain = items_of(sampled_dataset(tmp_path / "plain"))
    dataset = sampled_dataset(tmp_path / "corrupt", corrupt_pairs=1.0)
    corrupted = items_of(dataset)
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
    again = items_of(sampled_dataset(tmp_path / "again", corrupt_pairs=1.0))
    for first, second in zip(corrupted, again, strict=True):
        assert _same(first, second)
    later = items_of(dataset, epoch=1)
    pairs_now = [p for item in corrupted for p in item["pair_pixel_values"]]
    pairs_later = [p for item in later for p in item["pair_pixel_values"]]
    assert not any(torch.equal(a, b) for a in pairs_now for b in pairs_later)


def test_corrupt_pairs_composes_with_augmix(tmp_path):
    augmix = items_of(sampled_dataset(tmp_path / "augmix", augmix=1.0))
    both = items_of(sampled_dataset(tmp_path / "both", augmix=1.0, corrupt_pairs=1.0))
    for before, after in zip(augmix, both, strict=True):
        assert torch.equal(before["pixel_values"], after["pixel_values"])  # AugMix'd finetune image, no corruption
        for first, second in zip(before["pair_pixel_values"], after["pair_pixel_values"], strict=True):
            assert not torch.equal(first, second)


def test_the_model_card_names_corrupt_pairs_when_on():
    name = "corrupted pair anchors (`corrupt_pairs`)"
    rows = dict(hyperparameter_rows({"corrupt_pairs": 0.5}, "arf", {}, None))
    assert rows[name].startswith("q = 0.5 ")
    assert name not in dict(hyperparameter_rows({"corrupt_pairs": 0.0}, "arf", {}, None))
