"""AugMix: a training view of an image, mixed from random chains of simple operations.

Hendrycks, Mu, Cubuk, Zoph, Gilmer and Lakshminarayanan, "AugMix: A Simple Data Processing Method to Improve
Robustness and Uncertainty", ICLR 2020 (reference code: google-research/augmix). `augment_and_mix` follows the
reference's `augment_and_mix`: `width` (3) chains, each of `depth` operations (uniformly 1-3 per chain when
`depth` is -1), each operation drawn uniformly from `OPERATIONS` at a level drawn uniformly from
[0.1, severity] (severity 3); the chains are averaged with Dirichlet(alpha=1) weights, and the average is
blended with the clean image by a Beta(1, 1) weight. The mixing is done in [0, 1] float space: the reference
mixes after `ToTensor` + `Normalize`, and since normalisation is affine and the weights sum to one, mixing
before it gives the same tensor.

The operations are the reference's `augmentations` list, not its `augmentations_all`: `color`, `contrast`,
`brightness` and `sharpness` are left out because they overlap ImageNet-C's corruptions (contrast and
brightness are test corruptions, saturate a validation one). What remains (autocontrast, equalize,
posterize, rotate, solarize, shear, translate) shares no operation with the 15 ImageNet-C test corruptions
nor the 4 validation ones (speckle noise, gaussian blur, spatter, saturate), so a model trained with it is
still evaluated on corruptions it never saw.

Levels scale as in the reference (`int_parameter` / `float_parameter`: value = level x maximum / 10): rotate
up to 30 degrees, shear up to 0.3, translate up to a third of the image side (the side of the image passed
in: ours are often 32 px, the reference's constant is CIFAR's 32), posterize to 4 - level bits, solarize
above 256 - level. All randomness comes from the `torch.Generator` passed in (one draw seeds a numpy
generator), so the view is a pure function of that generator's state, like the rest of the data pipeline.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image, ImageOps

SEVERITY = 3
WIDTH = 3
ALPHA = 1.0

Operation = Callable[[Image.Image, float, np.random.Generator], Image.Image]


def _int_parameter(level: float, maximum: float) -> int:
    return int(level * maximum / 10)


def _float_parameter(level: float, maximum: float) -> float:
    return float(level) * maximum / 10


def _sample_level(severity: float, rng: np.random.Generator) -> float:
    return rng.uniform(0.1, severity)


def _signed(value: float, rng: np.random.Generator) -> float:
    return -value if rng.uniform() > 0.5 else value


def _affine(image: Image.Image, coefficients: tuple[float, ...]) -> Image.Image:
    return image.transform(image.size, Image.Transform.AFFINE, coefficients, resample=Image.Resampling.BILINEAR)


def autocontrast(image: Image.Image, severity: float, rng: np.random.Generator) -> Image.Image:
    return ImageOps.autocontrast(image)


def equalize(image: Image.Image, severity: float, rng: np.random.Generator) -> Image.Image:
    return ImageOps.equalize(image)


def posterize(image: Image.Image, severity: float, rng: np.random.Generator) -> Image.Image:
    return ImageOps.posterize(image, 4 - _int_parameter(_sample_level(severity, rng), 4))


def rotate(image: Image.Image, severity: float, rng: np.random.Generator) -> Image.Image:
    degrees = _signed(_int_parameter(_sample_level(severity, rng), 30), rng)
    return image.rotate(degrees, resample=Image.Resampling.BILINEAR)


def solarize(image: Image.Image, severity: float, rng: np.random.Generator) -> Image.Image:
    return ImageOps.solarize(image, 256 - _int_parameter(_sample_level(severity, rng), 256))


def shear_x(image: Image.Image, severity: float, rng: np.random.Generator) -> Image.Image:
    shear = _signed(_float_parameter(_sample_level(severity, rng), 0.3), rng)
    return _affine(image, (1, shear, 0, 0, 1, 0))


def shear_y(image: Image.Image, severity: float, rng: np.random.Generator) -> Image.Image:
    shear = _signed(_float_parameter(_sample_level(severity, rng), 0.3), rng)
    return _affine(image, (1, 0, 0, shear, 1, 0))


def translate_x(image: Image.Image, severity: float, rng: np.random.Generator) -> Image.Image:
    shift = _signed(_int_parameter(_sample_level(severity, rng), image.size[0] / 3), rng)
    return _affine(image, (1, 0, shift, 0, 1, 0))


def translate_y(image: Image.Image, severity: float, rng: np.random.Generator) -> Image.Image:
    shift = _signed(_int_parameter(_sample_level(severity, rng), image.size[1] / 3), rng)
    return _affine(image, (1, 0, 0, 0, 1, shift))


# The reference's `augmentations`: none of them is, or approximates, an ImageNet-C corruption (see above).
OPERATIONS: dict[str, Operation] = {
    op.__name__: op
    for op in (autocontrast, equalize, posterize, rotate, solarize, shear_x, shear_y, translate_x, translate_y)
}


def augment_and_mix(
    image: Image.Image,
    generator: torch.Generator | None,
    severity: float = SEVERITY,
    width: int = WIDTH,
    depth: int = -1,
    alpha: float = ALPHA,
) -> np.ndarray:
    """The AugMix view of an RGB `image`: a float32 `(H, W, 3)` array in [0, 1] (the clean image's shape).

    `depth` -1 draws each chain's depth uniformly from 1-3. Every draw comes from `generator`.
    """
    rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator)))
    operations = list(OPERATIONS.values())
    weights = rng.dirichlet([alpha] * width).astype(np.float32)
    blend = np.float32(rng.beta(alpha, alpha))
    clean = np.asarray(image, dtype=np.float32) / 255.0
    mix = np.zeros_like(clean)
    for weight in weights:
        chain = image
        for _ in range(depth if depth > 0 else int(rng.integers(1, 4))):
            chain = operations[int(rng.integers(len(operations)))](chain, severity, rng)
        mix += weight * (np.asarray(chain, dtype=np.float32) / 255.0)
    return (1 - blend) * clean + blend * mix
