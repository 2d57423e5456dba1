"""ImageNet-C corruptions against the reference implementation, and the corrupted evaluation sets.

Reference: `imagecorruptions` 1.1.2 (the ImageNet-C code, packaged), run by scripts/make_corruption_fixtures.py
on a fixed 32 x 32 image after `np.random.seed(1000 * index + severity)`; outputs in
tests/fixtures/corruptions/reference.npz (versions in reference.json). What is compared how:

- EXACT (bit-identical uint8 output, all 5 severities): every corruption but the three below.
- WITHIN A TOLERANCE: `frost` (the reference resizes its texture with opencv's bicubic, here PIL's: max 4
  levels, mean < 0.5); `spatter` severities 1-3 (water: the reference's opencv Canny and 5x5-mask distance
  transform, here a numpy Canny and the exact Euclidean distance: mean < 0.5 levels, < 2% of values differ by
  more than 2); `spatter` 4-5 (mud, no opencv) is exact.
- STATISTICAL: `impulse_noise` (the reference draws from scikit-image's own unseeded generator): the share of
  values set to 0 or 255 matches the severity's amount, as the reference's does.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from anchorclip.evaluation import EvalSet
from anchorclip.evaluation.corruption_sets import (
    CorruptImage,
    corrupted_eval_sets,
    corruption_report,
    group_of,
    load_reference_errors,
)
from anchorclip.evaluation.corruptions import (
    CORRUPTIONS,
    TEST_CORRUPTIONS,
    VALIDATION_CORRUPTIONS,
    corrupt,
    corruption_names,
)

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "corruptions")
TOLERANT = {"frost", "spatter", "impulse_noise"}


@pytest.fixture(scope="module")
def reference():
    data = np.load(os.path.join(FIXTURES, "reference.npz"))
    with open(os.path.join(FIXTURES, "reference.json")) as handle:
        meta = json.load(handle)
    return data, meta["names"]


def _mine(reference, name, severity):
    data, names = reference
    return corrupt(data["input"], name, severity, seed=1000 * names.index(name) + severity)


def test_names_match_imagenet_c(reference):
    assert len(TEST_CORRUPTIONS) == 15 and len(VALIDATION_CORRUPTIONS) == 4
    assert list(CORRUPTIONS) == reference[1]  # the reference's order: 15 test, then 4 validation
    assert corruption_names("validation") == ["speckle_noise", "gaussian_blur", "spatter", "saturate"]


@pytest.mark.parametrize("name", [n for n in CORRUPTIONS if n not in TOLERANT])
def test_exact_against_reference(reference, name):
    for severity in range(1, 6):
        np.testing.assert_array_equal(_mine(reference, name, severity), reference[0][f"{name}_{severity}"])


def test_frost_within_tolerance(reference):
    for severity in range(1, 6):
        diff = np.abs(_mine(reference, "frost", severity).astype(int) - reference[0][f"frost_{severity}"])
        assert diff.max() <= 4 and diff.mean() < 0.5


def test_spatter_water_within_tolerance_mud_exact(reference):
    for severity in range(1, 6):
        mine, ref = _mine(reference, "spatter", severity), reference[0][f"spatter_{severity}"]
        if severity >= 4:
            np.testing.assert_array_equal(mine, ref)
            continue
        diff = np.abs(mine.astype(int) - ref)
        assert diff.mean() < 0.5 and (diff > 2).mean() < 0.02


def test_impulse_noise_statistics(reference):
    data, _ = reference
    image = np.repeat(np.repeat(data["input"], 4, axis=0), 4, axis=1)  # more values: a tighter estimate
    for severity, amount in zip(range(1, 6), [0.03, 0.06, 0.09, 0.17, 0.27]):
        out = corrupt(image, "impulse_noise", severity, seed=severity)
        flipped = ((out == 0) | (out == 255)) & (out != image)
        assert abs(flipped.mean() - amount) < 0.02
        ref = reference[0][f"impulse_noise_{severity}"]  # the reference's share, on its 32 x 32 image
        ref_flipped = ((ref == 0) | (ref == 255)) & (ref != data["input"])
        assert abs(ref_flipped.mean() - amount) < 0.04


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_scaled_small_images(name):
    """At the miniworld's 32 px with scale 32 / 224: shape kept, seeded, and corrupting more at severity 5."""
    rng = np.random.RandomState(0)
    image = (rng.rand(32, 32, 3) * 200 + 20).astype(np.uint8)
    image = np.asarray(Image.fromarray(image).resize((8, 8)).resize((32, 32), Image.BICUBIC))  # some structure
    low = corrupt(image, name, 1, seed=3, scale=32 / 224)
    high = corrupt(image, name, 5, seed=3, scale=32 / 224)
    assert low.shape == high.shape == image.shape and low.dtype == np.uint8
    np.testing.assert_array_equal(high, corrupt(image, name, 5, seed=3, scale=32 / 224))
    change = [np.abs(out.astype(int) - image).mean() for out in (low, high)]
    assert change[1] > 0
    if name not in ("saturate", "glass_blur", "defocus_blur"):  # saturate 1 (x0.3) moves more than 5 (x20 + 0.2)
        assert change[1] >= change[0]


def test_errors():
    image = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="Unknown corruption"):
        corrupt(image, "rain", 1)
    with pytest.raises(ValueError, match="severity"):
        corrupt(image, "fog", 6)
    with pytest.raises(ValueError, match="uint8"):
        corrupt(image.astype(np.float32), "fog", 1)
    with pytest.raises(ValueError, match="subset"):
        corruption_names("weather")


def test_corrupt_image_transform_crops_and_is_deterministic():
    image = Image.fromarray((np.random.RandomState(1).rand(40, 60, 3) * 255).astype(np.uint8))
    transform = CorruptImage("gaussian_noise", 3, seed=7)
    out = transform(image, 5, 32)
    assert out.size == (32, 32)
    assert np.array_equal(np.asarray(out), np.asarray(transform(image, 5, 32)))
    assert not np.array_equal(np.asarray(out), np.asarray(transform(image, 6, 32)))  # another row, other noise


def test_corrupted_eval_sets_names_groups_and_report():
    import datasets

    rows = {"image": [Image.new("RGB", (32, 32), (i * 20, 100, 50)) for i in range(4)], "label": [0, 1, 0, 1]}
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    base = {"photo": EvalSet(datasets.Dataset.from_dict(rows, features=features), group="id")}
    sets = corrupted_eval_sets(base, ["fog", "saturate"], severities=[1, 2])
    assert sorted(sets) == ["photo-fog-1", "photo-fog-2", "photo-saturate-1", "photo-saturate-2"]
    assert sets["photo-fog-1"].group == "corruption" and sets["photo-saturate-2"].group == "corruption_val"
    assert group_of("spatter") == "corruption_val"
    assert sets["photo-fog-2"].dataset is base["photo"].dataset  # shared, corrupted on the fly
    summary = {"sets": {"photo": 0.9, "photo-fog-1": 0.8, "photo-fog-2": 0.6, "photo-saturate-1": 0.7}}
    reference = {"fog": {1: 0.4, 2: 0.6}}
    report = corruption_report(summary, reference)["photo"]
    assert report["corruption"]["mean_top1"] == pytest.approx(0.7)
    assert report["corruption"]["per_severity"] == {1: pytest.approx(0.8), 2: pytest.approx(0.6)}
    assert report["corruption"]["mce"] == pytest.approx(100 * (0.2 + 0.4) / (0.4 + 0.6))
    assert report["corruption_val"]["mean_top1"] == pytest.approx(0.7)
    with pytest.raises(ValueError, match="retrieval"):
        corrupted_eval_sets({"r": EvalSet(base["photo"].dataset, group="retrieval")}, ["fog"], base_sets=["r"])


def test_reference_errors_from_results_json(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"evaluated": {"ref": {"sets": {"x-fog-1": 0.75, "x-fog-2": 0.5}}}}))
    assert load_reference_errors(str(path)) == {"fog": {1: 0.25, 2: 0.5}}
    path.write_text(json.dumps({"errors": {"fog": [0.1, 0.2, 0.3, 0.4, 0.5]}}))
    assert load_reference_errors(str(path))["fog"][5] == 0.5
