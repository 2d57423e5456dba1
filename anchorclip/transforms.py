"""CLIP image preprocessing in PIL + torch, without torchvision.

Evaluation equals `CLIPImageProcessor` (its PIL backend, to float32 rounding): bicubic resize of the short
side to `resize` (the processor's `size["shortest_edge"]`, e.g. 256), the long side truncated as the
processor does, then an integer-pixel centre crop of `size` (its `crop_size`, e.g. 224), rescale,
normalise. (With torchvision installed, transformers picks a torch backend whose antialiased bicubic
rounds differently.) Training uses open_clip's augmentation instead: a random resized crop (scale 0.9-1.0
by default) of the original image; PIL's `resize(box=...)` crops and resamples in one call.
Randomness comes from an explicit `torch.Generator`, so a sample's augmentation is a pure function of
its seed: runs resume and shard across workers without changing what the model sees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ImageTransform:
    """Turn a PIL image into a normalised `(3, size, size)` float tensor.

    `size` is the side of the (square) crop. `resize`, used in evaluation only, is what happens before the
    centre crop: an int resizes the short side to it (CLIP), a `(height, width)` pair resizes to exactly that
    (processors configured with `size={"height", "width"}`); default `size`: the crop spans the short side.
    """

    size: int = 224
    resize: int | tuple[int, int] | None = None
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    train: bool = False
    scale: tuple[float, float] = (0.9, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    resample: int = Image.Resampling.BICUBIC

    @classmethod
    def from_image_processor(cls, image_processor, train: bool = False, **overrides) -> ImageTransform:
        """Read crop size, resize, mean and std from a `CLIPImageProcessor` (or one with the same fields)."""
        crop = _size_dict(getattr(image_processor, "crop_size", None))
        sizes = _size_dict(getattr(image_processor, "size", None))
        if not crop:  # no centre crop configured: the resized short side is the output side
            crop = {"height": sizes.get("shortest_edge") or sizes.get("height")}
        height, width = crop.get("height") or crop.get("shortest_edge"), crop.get("width")
        if height is None or (width is not None and width != height):
            raise ValueError(f"Only square crops are supported; the image processor crops {height}x{width}.")
        resize: int | tuple[int, int] | None = None
        if sizes.get("shortest_edge"):
            resize = sizes["shortest_edge"]
        elif sizes.get("height") and sizes.get("width"):
            resize = (sizes["height"], sizes["width"])
        mean = tuple(getattr(image_processor, "image_mean", None) or OPENAI_CLIP_MEAN)
        std = tuple(getattr(image_processor, "image_std", None) or OPENAI_CLIP_STD)
        settings: dict[str, Any] = dict(size=int(height), resize=resize, mean=mean, std=std, train=train)
        return cls(**(settings | overrides))

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.to_tensor(self.view(image, generator))

    def view(self, image: Image.Image, generator: torch.Generator | None = None) -> Image.Image:
        """The `(size, size)` RGB crop, before normalisation: random resized (train) or resize + centre crop."""
        image = image.convert("RGB") if image.mode != "RGB" else image
        if self.train:
            box = self._random_box(image, generator)
            return image.resize((self.size, self.size), resample=self.resample, box=box)
        return self._resize_and_crop(image)

    def to_tensor(self, image: Image.Image | np.ndarray) -> torch.Tensor:
        """Normalise a view: a PIL image, or a float `(H, W, 3)` array in [0, 1] (e.g. an AugMix view)."""
        if isinstance(image, Image.Image):
            array = np.asarray(image, dtype=np.float32) / 255.0
        else:
            array = np.ascontiguousarray(image, dtype=np.float32)
        tensor = torch.from_numpy(array).permute(2, 0, 1)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (tensor - mean) / std

    def _resize_and_crop(self, image: Image.Image) -> Image.Image:
        # Two steps with CLIPImageProcessor's own arithmetic (int() of the long side, floor of the offsets), so
        # the same pixels are resampled and kept; one box-resample would shift the crop by fractions of a pixel.
        width, height = image.size
        if isinstance(self.resize, (tuple, list)):
            new_height, new_width = self.resize
        else:
            short_side = self.resize or self.size
            long_side = int(short_side * max(width, height) / min(width, height))
            new_width, new_height = (short_side, long_side) if width <= height else (long_side, short_side)
        image = image.resize((new_width, new_height), resample=self.resample)
        left, top = (new_width - self.size) // 2, (new_height - self.size) // 2
        return image.crop((left, top, left + self.size, top + self.size))  # zero-padded if smaller, as HF pads

    def _center_box(self, image: Image.Image) -> tuple[float, float, float, float]:
        # The training fallback when no random box fits: the central square of the original.
        width, height = image.size
        side = min(width, height)
        left, top = (width - side) / 2, (height - side) / 2
        return (left, top, left + side, top + side)

    def _random_box(self, image: Image.Image, generator: torch.Generator | None) -> tuple[float, float, float, float]:
        width, height = image.size
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            draws = torch.rand(3, generator=generator).tolist()
            target_area = area * (self.scale[0] + (self.scale[1] - self.scale[0]) * draws[0])
            aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * draws[1])
            crop_w = math.sqrt(target_area * aspect)
            crop_h = math.sqrt(target_area / aspect)
            if crop_w <= width and crop_h <= height:
                left = (width - crop_w) * draws[2]
                top = (height - crop_h) * torch.rand(1, generator=generator).item()
                return (left, top, left + crop_w, top + crop_h)
        return self._center_box(image)


def _size_dict(value) -> dict:
    """A processor's size field (an int, a dict or transformers' `SizeDict`) as a dict without unset keys."""
    if value is None:
        return {}
    if isinstance(value, (int, float)):
        return {"shortest_edge": int(value), "height": int(value)}
    items = value.items() if hasattr(value, "items") else vars(value).items()
    return {key: int(size) for key, size in items if size is not None}
