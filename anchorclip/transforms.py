"""CLIP image preprocessing in PIL + torch, without torchvision.

Matches `CLIPImageProcessor` for evaluation (bicubic resize of the short side, centre crop, rescale,
normalise) and adds open_clip's training augmentation (random resized crop, scale 0.9-1.0 by default).
PIL's `resize(box=...)` crops and resamples in one call, so a training crop costs one resample.
Randomness comes from an explicit `torch.Generator`, so a sample's augmentation is a pure function of
its seed: runs resume and shard across workers without changing what the model sees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ImageTransform:
    """Turn a PIL image into a normalised `(3, size, size)` float tensor."""

    size: int = 224
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    train: bool = False
    scale: tuple[float, float] = (0.9, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    resample: int = Image.BICUBIC

    @classmethod
    def from_image_processor(cls, image_processor, train: bool = False, **overrides) -> ImageTransform:
        """Read size, mean and std from a `CLIPImageProcessor` (or any processor with the same fields)."""
        crop = getattr(image_processor, "crop_size", None) or getattr(image_processor, "size", None)
        if isinstance(crop, (int, float)):
            size = int(crop)
        else:  # a dict, or transformers' SizeDict
            crop = dict(crop.items()) if hasattr(crop, "items") else vars(crop)
            size = crop.get("height") or crop.get("shortest_edge") or crop.get("width")
        mean = tuple(getattr(image_processor, "image_mean", None) or OPENAI_CLIP_MEAN)
        std = tuple(getattr(image_processor, "image_std", None) or OPENAI_CLIP_STD)
        return cls(size=int(size), mean=mean, std=std, train=train, **overrides)

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        image = image.convert("RGB") if image.mode != "RGB" else image
        box = self._random_box(image, generator) if self.train else self._center_box(image)
        image = image.resize((self.size, self.size), resample=self.resample, box=box)
        array = np.asarray(image, dtype=np.float32) / 255.0
        tensor = torch.from_numpy(array).permute(2, 0, 1)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (tensor - mean) / std

    def _center_box(self, image: Image.Image) -> tuple[float, float, float, float]:
        # Resize-short-side-then-centre-crop equals cropping the central square of the original.
        width, height = image.size
        side = min(width, height)
        left, top = (width - side) / 2, (height - side) / 2
        return (left, top, left + side, top + side)

    def _random_box(self, image: Image.Image, generator: torch.Generator | None) -> tuple[float, ...]:
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
