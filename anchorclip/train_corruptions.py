"""A training family of corruptions for the pair-anchor images (`--corrupt_pairs`), disjoint from ImageNet-C.

With `--corrupt_pairs q` each pair-anchor image is replaced, with probability q, by a view corrupted by one of
`CORRUPTIONS`, and trained against the clean image's targets (its caption in L_pairs; for anchor distillation
f₀ of the clean view). The anchors hold the features of the inputs they cover; a corrupted anchor held to the
clean targets asks the model to map corrupted inputs to where the clean ones are, rather than leaving
corrupted-looking inputs at the pretrained model's (weak) answer.

The idea of the family comes from ImageNet-C-bar (Mintun, Kirillov and Xie, "On Interaction Between
Augmentations and Corruptions in Natural Corruption Robustness", NeurIPS 2021), which built corruptions
perceptually dissimilar to ImageNet-C's so that training on one set says something about the other. The four
here are our own simple formulas in that spirit, *not* the C-bar reference implementations:

- `brownish_noise`: additive Gaussian noise low-pass filtered in the Fourier domain to a 1/f² power spectrum
  (amplitude 1/f), so it is smooth, blotchy colour noise rather than ImageNet-C's white per-pixel noises;
- `plasma_lighting`: the image multiplied by a smooth random field (uniform values on a coarse grid,
  bilinearly upsampled): uneven lighting, not ImageNet-C's uniform brightness shift;
- `sinusoid_grating`: a greyscale sinusoid of random orientation, frequency and phase added to the image;
- `checkerboard_cutout`: alternate squares of a randomly offset checkerboard replaced by mid-grey.

None of these is one of the 15 ImageNet-C test corruptions nor one of the 4 validation ones (speckle noise,
gaussian blur, spatter, saturate) by name or by operation: no white or per-pixel noise, blur, weather,
pixelation, compression, elastic warp, contrast, saturation or uniform brightness change. The nearest
relatives are ImageNet-C's fog (an *additive* plasma-fractal haze that also lowers contrast) against
`plasma_lighting` (a *multiplicative* smooth field, no haze), and the white noises against `brownish_noise`
(low-frequency only). A model trained with them is still evaluated, and its learning rate chosen, on
corruptions it never saw.

Each corruption takes a float32 `(H, W, 3)` array in [0, 1] (the crop before normalisation), a severity 1-5
scaling its strength, and a numpy generator; it returns an array of the same shape and dtype, clipped to
[0, 1]. `corrupt_view` draws the corruption and its severity uniformly; all its randomness comes from the
`torch.Generator` passed in (one draw seeds a numpy generator), like `augmix.augment_and_mix`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

Corruption = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]

SEVERITIES = (1, 2, 3, 4, 5)


def _finish(image: np.ndarray) -> np.ndarray:
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def brownish_noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise shaped to a 1/f² power spectrum (per channel), scaled to std sigma[severity]."""
    sigma = (0.04, 0.07, 0.10, 0.14, 0.18)[severity - 1]
    height, width, channels = image.shape
    white = rng.normal(size=(channels, height, width))
    frequency = np.sqrt(np.fft.fftfreq(height)[:, None] ** 2 + np.fft.fftfreq(width)[None, :] ** 2)
    frequency[0, 0] = np.inf  # no constant offset
    noise = np.real(np.fft.ifft2(np.fft.fft2(white) / frequency))
    noise = noise / max(float(noise.std()), 1e-8) * sigma
    return _finish(image + noise.transpose(1, 2, 0))


def _upsample(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear upsampling of a 2-D grid to (height, width), corners aligned."""
    rows = np.linspace(0, grid.shape[0] - 1, height)
    columns = np.linspace(0, grid.shape[1] - 1, width)
    along_columns = np.stack([np.interp(columns, np.arange(grid.shape[1]), row) for row in grid])
    return np.stack([np.interp(rows, np.arange(grid.shape[0]), col) for col in along_columns.T], axis=1)


def plasma_lighting(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """The image times a smooth field: uniform in [1 - a, 1 + a] on a 3x3 to 5x5 grid, bilinearly upsampled."""
    amplitude = (0.15, 0.25, 0.35, 0.45, 0.55)[severity - 1]
    cells = int(rng.integers(3, 6))
    grid = rng.uniform(1 - amplitude, 1 + amplitude, size=(cells, cells))
    field = _upsample(grid, image.shape[0], image.shape[1])
    return _finish(image * field[:, :, None])


def sinusoid_grating(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Add amp[severity] * sin(2π f (x cos θ + y sin θ) + φ), the same on every channel; f in cycles per image
    side, uniform in [2, side / 4]."""
    amplitude = (0.05, 0.08, 0.11, 0.14, 0.18)[severity - 1]
    height, width = image.shape[:2]
    theta, phase = rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
    cycles = rng.uniform(2.0, max(2.0, min(height, width) / 4))
    y, x = np.meshgrid(np.arange(height) / height, np.arange(width) / width, indexing="ij")
    grating = amplitude * np.sin(2 * np.pi * cycles * (x * np.cos(theta) + y * np.sin(theta)) + phase)
    return _finish(image + grating[:, :, None])


def checkerboard_cutout(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Grey (0.5) out alternate squares of a randomly offset checkerboard; the square's side grows with
    severity ((1 + severity) px at 32 px, scaled with the image side)."""
    height, width = image.shape[:2]
    side = max(1, round((1 + severity) * min(height, width) / 32))
    dy, dx = (int(v) for v in rng.integers(0, 2 * side, size=2))
    y, x = np.meshgrid(np.arange(height) + dy, np.arange(width) + dx, indexing="ij")
    mask = ((y // side + x // side) % 2).astype(bool)
    out = image.copy()
    out[mask] = 0.5
    return _finish(out)


CORRUPTIONS: dict[str, Corruption] = {
    f.__name__: f for f in (brownish_noise, plasma_lighting, sinusoid_grating, checkerboard_cutout)
}


def corrupt_view(image: np.ndarray, generator: torch.Generator | None) -> np.ndarray:
    """`image` (float32 `(H, W, 3)` in [0, 1]) under one of `CORRUPTIONS` at a severity in 1-5, both drawn
    uniformly; every draw comes from `generator`."""
    rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator)))
    corruptions = list(CORRUPTIONS.values())
    corruption = corruptions[int(rng.integers(len(corruptions)))]
    return corruption(np.asarray(image, dtype=np.float32), int(rng.integers(1, 6)), rng)


__all__ = ["CORRUPTIONS", "SEVERITIES", "corrupt_view"]
