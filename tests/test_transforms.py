"""Evaluation preprocessing equals the checkpoint's `CLIPImageProcessor` (the PIL backend, what CPU installs get)."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessor

from anchorclip.transforms import ImageTransform

SHAPES = [(300, 200), (217, 389), (256, 256), (1000, 257), (90, 140)]  # (width, height): wide, tall, square, ...


def _image(width, height, seed):
    # Smooth gradients plus noise: resampling differences show up in both.
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.linspace(0, 1, width), np.linspace(0, 1, height))
    base = np.stack([x, y, (x + y) / 2], axis=-1) * 200
    return Image.fromarray((base + rng.integers(0, 55, (height, width, 3))).astype(np.uint8))


@pytest.mark.parametrize(
    "resize,crop",
    [
        ({"shortest_edge": 256}, 224),
        ({"shortest_edge": 224}, 224),
        ({"shortest_edge": 40}, 32),
        ({"height": 40, "width": 48}, 32),
    ],
)
def test_eval_transform_equals_clip_image_processor(resize, crop):
    processor = CLIPImageProcessor(size=resize, crop_size={"height": crop, "width": crop})
    transform = ImageTransform.from_image_processor(processor)
    for seed, (width, height) in enumerate(SHAPES):
        image = _image(width, height, seed)
        expected = processor(images=image, return_tensors="pt")["pixel_values"][0]
        got = transform(image)
        assert got.shape == (3, crop, crop)
        # float32 rounding only: the same PIL resample and the same integer crop box
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_non_square_crop_is_refused():
    processor = CLIPImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 200})
    with pytest.raises(ValueError, match="square"):
        ImageTransform.from_image_processor(processor)
