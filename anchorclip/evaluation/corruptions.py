"""The ImageNet-C corruptions (Hendrycks & Dietterich, ICLR 2019) in numpy, PIL and scipy.

The reference is the `imagecorruptions` package (Michaelis et al. 2019, bethgelab, Apache-2.0, v1.1.2), the
ImageNet-C code packaged; it does not import on today's stack (it needs `pkg_resources`, `np.float_` and
scikit-image's removed `multichannel` argument) and pulls opencv and scikit-image, so its formulas are written
here again, with the same constants and the same draws from the same random stream: with
`rng=np.random.RandomState(s)` a function gives what the reference gives after `np.random.seed(s)`.
`tests/test_corruptions.py` checks each against outputs of the reference (fixtures made by
`scripts/make_corruption_fixtures.py`) and says which match exactly and which within a tolerance (the ones
where the reference calls an opencv routine re-implemented here, and `impulse_noise`, whose reference draws
from an unseeded generator).

`scale` (default 1) multiplies the spatial parameters that the reference sets in pixels of a 224 px image
(blur radii and sigmas, motion length, snow flake size, glass-blur displacement, frost texture size, spatter
smoothing), so that a corruption covers the same fraction of a smaller image: `corrupt(..., scale=32 / 224)`
on the 32 px miniworld images. Per-pixel corruptions (noise, brightness, contrast, saturate) and those
already relative to the image size (zoom blur, fog, elastic, pixelate) do not change; JPEG's 8x8 blocks
cannot scale. At scale 1 every function is the reference's.
"""

from __future__ import annotations

import functools
import os
from io import BytesIO

import numpy as np
from PIL import Image

from .corruption_helpers import (
    canny,
    clipped_zoom,
    correlate2d,
    disk,
    equalize_hist,
    gaussian,
    hsv2rgb,
    motion_blur_layer,
    plasma_fractal,
    rgb2hsv,
)

FROST_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "corruptions", "frost")
FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")  # the reference draws 1-5


def _px(value: float, scale: float, minimum: float = 0.0) -> float:
    return max(minimum, value * scale)


def gaussian_noise(x, severity, rng, scale=1.0):
    c = [0.08, 0.12, 0.18, 0.26, 0.38][severity - 1]
    x = np.array(x) / 255.0
    return np.clip(x + rng.normal(size=x.shape, scale=c), 0, 1) * 255


def shot_noise(x, severity, rng, scale=1.0):
    c = [60, 25, 12, 5, 3][severity - 1]
    x = np.array(x) / 255.0
    return np.clip(rng.poisson(x * c) / float(c), 0, 1) * 255


def impulse_noise(x, severity, rng, scale=1.0):
    # skimage.util.random_noise(mode="s&p", amount=c, salt_vs_pepper=0.5), per value (channels independently)
    c = [0.03, 0.06, 0.09, 0.17, 0.27][severity - 1]
    x = np.array(x) / 255.0
    flipped = rng.random_sample(x.shape) <= c
    salted = rng.random_sample(x.shape) <= 0.5
    x[flipped & salted], x[flipped & ~salted] = 1.0, 0.0
    return np.clip(x, 0, 1) * 255


def speckle_noise(x, severity, rng, scale=1.0):
    c = [0.15, 0.2, 0.35, 0.45, 0.6][severity - 1]
    x = np.array(x) / 255.0
    return np.clip(x + x * rng.normal(size=x.shape, scale=c), 0, 1) * 255


def gaussian_blur(x, severity, rng, scale=1.0):
    c = [1, 2, 3, 4, 6][severity - 1]
    return np.clip(gaussian(np.array(x) / 255.0, _px(c, scale)), 0, 1) * 255


def glass_blur(x, severity, rng, scale=1.0):
    sigma, delta, iterations = [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)][severity - 1]
    sigma, delta = _px(sigma, scale), max(1, round(delta * scale))
    x = np.uint8(gaussian(np.array(x) / 255.0, sigma) * 255)
    height, width = x.shape[:2]
    for _ in range(iterations):
        rows = range(height - delta, delta, -1)
        cols = range(width - delta, delta, -1)
        offsets = rng.randint(-delta, delta, size=(len(rows) * len(cols), 2))  # the reference's draws, in order
        step = 0
        for h in rows:
            for w in cols:
                dx, dy = offsets[step]
                step += 1
                # The reference's tuple "swap" of two numpy views copies x[h', w'] into x[h, w] and leaves
                # x[h', w'] as it was: kept, since it is what ImageNet-C's images were made with.
                x[h, w] = x[h + dy, w + dx]
    return np.clip(gaussian(x / 255.0, sigma), 0, 1) * 255


def defocus_blur(x, severity, rng, scale=1.0):
    radius, alias_blur = [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)][severity - 1]
    x = np.array(x) / 255.0
    kernel = disk(_px(radius, scale), alias_blur)  # alias_blur is in kernel pixels: it antialiases the disk
    channels = np.stack([correlate2d(x[:, :, d], kernel) for d in range(3)], axis=-1)
    return np.clip(channels, 0, 1) * 255


def motion_blur(x, severity, rng, scale=1.0):
    radius, sigma = [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)][severity - 1]
    angle = rng.uniform(-45, 45)
    x = motion_blur_layer(np.array(x), max(1, round(radius * scale)), _px(sigma, scale, 1e-3), angle)
    return np.clip(x, 0, 255)


def zoom_blur(x, severity, rng, scale=1.0):
    factors = [
        np.arange(1, 1.11, 0.01),
        np.arange(1, 1.16, 0.01),
        np.arange(1, 1.21, 0.02),
        np.arange(1, 1.26, 0.02),
        np.arange(1, 1.31, 0.03),
    ][severity - 1]
    x = (np.array(x) / 255.0).astype(np.float32)
    out = np.zeros_like(x)
    for factor in factors:
        layer = clipped_zoom(x, factor)[: x.shape[0], : x.shape[1], :]
        out[: layer.shape[0], : layer.shape[1]] += layer
    return np.clip((x + out) / (len(factors) + 1), 0, 1) * 255


def snow(x, severity, rng, scale=1.0):
    c = [
        (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
        (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
        (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
        (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
        (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
    ][severity - 1]
    x = np.array(x, dtype=np.float32) / 255.0
    layer = rng.normal(size=x.shape[:2], loc=c[0], scale=c[1])
    layer = clipped_zoom(layer[..., np.newaxis], _px(c[2], scale, 1.0))  # flakes of at least one pixel
    layer[layer < c[3]] = 0
    layer = np.clip(layer.squeeze(), 0, 1)
    angle = rng.uniform(-135, -45)
    layer = motion_blur_layer(layer, max(1, round(c[4] * scale)), _px(c[5], scale, 1e-3), angle)
    layer = (np.round(layer * 255).astype(np.uint8) / 255.0)[..., np.newaxis][: x.shape[0], : x.shape[1], :]
    gray = (x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114)[..., np.newaxis]  # cv2 RGB2GRAY
    x = c[6] * x + (1 - c[6]) * np.maximum(x, gray * 1.5 + 0.5)
    return np.clip(x + layer + np.rot90(layer, k=2), 0, 1) * 255


def frost(x, severity, rng, scale=1.0):
    c = [(1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)][severity - 1]
    index = rng.randint(5)
    height, width = np.array(x).shape[:2]
    tex_w, tex_h = _frost_texture(index).size
    tex_w_s, tex_h_s = tex_w * scale, tex_h * scale  # the texture at the image's scale, then fitted as the ref
    factor = max(1.0, height / tex_h_s, width / tex_w_s) * 1.1 * scale
    texture = _frost_resized(index, int(np.ceil(tex_w * factor)), int(np.ceil(tex_h * factor)))
    top, left = rng.randint(0, texture.shape[0] - height), rng.randint(0, texture.shape[1] - width)
    texture = texture[top : top + height, left : left + width]
    return np.clip(c[0] * np.array(x) + c[1] * texture, 0, 255)


@functools.lru_cache(maxsize=len(FROST_FILES))
def _frost_texture(index: int) -> Image.Image:
    path = os.path.join(FROST_DIR, FROST_FILES[index])
    if not os.path.isfile(path):
        raise FileNotFoundError(f"frost needs its texture images, shipped under {FROST_DIR}; {path} is missing.")
    return Image.open(path).convert("RGB")  # cv2.imread drops the alpha channel the same way


@functools.lru_cache(maxsize=32)
def _frost_resized(index: int, width: int, height: int) -> np.ndarray:
    resized = _frost_texture(index).resize((width, height), Image.Resampling.BICUBIC)  # cv2.INTER_CUBIC there
    texture = np.asarray(resized, dtype=np.float64)
    texture.flags.writeable = False
    return texture


def fog(x, severity, rng, scale=1.0):
    c = [(1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)][severity - 1]
    x = np.array(x) / 255.0
    height, width = x.shape[:2]
    max_val = x.max()
    map_size = 1 << (max(height, width) - 1).bit_length()
    x += c[0] * plasma_fractal(rng, map_size, c[1])[:height, :width][..., np.newaxis]
    return np.clip(x * max_val / (max_val + c[0]), 0, 1) * 255


def spatter(x, severity, rng, scale=1.0):
    c = [
        (0.65, 0.3, 4, 0.69, 0.6, 0),
        (0.65, 0.3, 3, 0.68, 0.6, 0),
        (0.65, 0.3, 2, 0.68, 0.5, 0),
        (0.65, 0.3, 1, 0.65, 1.5, 1),
        (0.67, 0.4, 1, 0.65, 1.5, 1),
    ][severity - 1]
    x = np.array(x, dtype=np.float32) / 255.0
    liquid = gaussian(rng.normal(size=x.shape[:2], loc=c[0], scale=c[1]), _px(c[2], scale))
    liquid[liquid < c[3]] = 0
    if c[5] == 0:  # water: the opencv pipeline of the reference (Canny, distance, equalised, embossed)
        from scipy import ndimage

        liquid = (liquid * 255).astype(np.uint8)
        edges = canny(liquid, 50, 150)
        dist = np.minimum(ndimage.distance_transform_edt(~edges), _px(20, scale, 1.0)).astype(np.float32)
        dist = correlate2d(dist, np.full((3, 3), 1 / 9.0)).astype(np.uint8)
        dist = equalize_hist(dist)
        emboss = correlate2d(dist.astype(np.float64), np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], float))
        dist = correlate2d(np.clip(np.round(emboss), 0, 255), np.full((3, 3), 1 / 9.0)).astype(np.float32)
        m = liquid * dist
        m = m / max(float(m.max()), 1e-12) * c[4]
        colour = np.array([175, 238, 238], dtype=np.float32) / 255.0  # pale turquoise
        return np.clip(x + m[..., np.newaxis] * colour, 0, 1) * 255
    m = gaussian(np.where(liquid > c[3], 1, 0).astype(np.float32), _px(c[4], scale))
    m[m < 0.8] = 0
    colour = np.array([63, 42, 20], dtype=np.float64) / 255.0 * m[..., np.newaxis]  # mud brown
    return np.clip(x * (1 - m[..., np.newaxis]) + colour, 0, 1) * 255


def contrast(x, severity, rng, scale=1.0):
    c = [0.4, 0.3, 0.2, 0.1, 0.05][severity - 1]
    x = np.array(x) / 255.0
    means = np.mean(x, axis=(0, 1), keepdims=True)
    return np.clip((x - means) * c + means, 0, 1) * 255


def brightness(x, severity, rng, scale=1.0):
    c = [0.1, 0.2, 0.3, 0.4, 0.5][severity - 1]
    x = rgb2hsv(np.array(x) / 255.0)
    x[:, :, 2] = np.clip(x[:, :, 2] + c, 0, 1)
    return np.clip(hsv2rgb(x), 0, 1) * 255


def saturate(x, severity, rng, scale=1.0):
    c = [(0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)][severity - 1]
    x = rgb2hsv(np.array(x) / 255.0)
    x[:, :, 1] = np.clip(x[:, :, 1] * c[0] + c[1], 0, 1)
    return np.clip(hsv2rgb(x), 0, 1) * 255


def jpeg_compression(x, severity, rng, scale=1.0):
    c = [25, 18, 15, 10, 7][severity - 1]
    output = BytesIO()
    Image.fromarray(np.uint8(x)).save(output, "JPEG", quality=c)
    return np.array(Image.open(output))


def pixelate(x, severity, rng, scale=1.0):
    c = [0.6, 0.5, 0.4, 0.3, 0.25][severity - 1]
    image = Image.fromarray(np.uint8(x))
    width, height = image.size
    image = image.resize((int(width * c), int(height * c)), Image.BOX)
    return np.array(image.resize((width, height), Image.NEAREST))


def elastic_transform(x, severity, rng, scale=1.0):
    from scipy.ndimage import map_coordinates

    image = np.array(x, dtype=np.float32) / 255.0
    shape = image.shape
    sigma = np.array(shape[:2]) * 0.01
    alpha = [250 * 0.05, 250 * 0.065, 250 * 0.085, 250 * 0.1, 250 * 0.12][severity - 1]
    max_d = shape[0] * 0.005
    dx = (gaussian(rng.uniform(-max_d, max_d, size=shape[:2]), sigma, "reflect", 3) * alpha).astype(np.float32)
    dy = (gaussian(rng.uniform(-max_d, max_d, size=shape[:2]), sigma, "reflect", 3) * alpha).astype(np.float32)
    dx, dy = dx[..., np.newaxis], dy[..., np.newaxis]
    xs, ys, zs = np.meshgrid(np.arange(shape[1]), np.arange(shape[0]), np.arange(shape[2]))
    indices = np.reshape(ys + dy, (-1, 1)), np.reshape(xs + dx, (-1, 1)), np.reshape(zs, (-1, 1))
    return np.clip(map_coordinates(image, indices, order=1, mode="reflect").reshape(shape), 0, 1) * 255


TEST_CORRUPTIONS = {
    f.__name__: f
    for f in (gaussian_noise, shot_noise, impulse_noise, defocus_blur, glass_blur, motion_blur, zoom_blur)
    + (snow, frost, fog, brightness, contrast, elastic_transform, pixelate, jpeg_compression)
}
VALIDATION_CORRUPTIONS = {f.__name__: f for f in (speckle_noise, gaussian_blur, spatter, saturate)}
CORRUPTIONS = {**TEST_CORRUPTIONS, **VALIDATION_CORRUPTIONS}
SEVERITIES = (1, 2, 3, 4, 5)


def corrupt(
    image: np.ndarray | Image.Image, name: str, severity: int, seed: int | np.random.RandomState = 0, scale=1.0
) -> np.ndarray:
    """`image` (H x W x 3 uint8, or a PIL image) with corruption `name` at `severity` 1-5, as uint8.

    `seed` seeds the corruption's random draws (or is a `RandomState`); `scale` is the image's size over the
    224 px the reference's spatial parameters assume (see the module docstring)."""
    if name not in CORRUPTIONS:
        raise ValueError(f"Unknown corruption {name!r}; known: {sorted(CORRUPTIONS)}.")
    if severity not in SEVERITIES:
        raise ValueError(f"Corruption severity must be one of {SEVERITIES}, got {severity!r}.")
    x = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if x.ndim == 2:
        x = np.stack([x] * 3, axis=-1)
    if x.dtype != np.uint8 or x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f"corrupt expects an H x W x 3 uint8 image, got {x.dtype} {x.shape}.")
    rng = seed if isinstance(seed, np.random.RandomState) else np.random.RandomState(seed)
    return np.uint8(CORRUPTIONS[name](x, severity, rng, scale))


def corruption_names(subset: str | list[str] = "test") -> list[str]:
    """Names of a subset: `test` (the 15), `validation` (the 4 held out for choices), `all`, or a list."""
    if isinstance(subset, (list, tuple)):
        unknown = sorted(set(subset) - set(CORRUPTIONS))
        if unknown:
            raise ValueError(f"Unknown corruptions {unknown}; known: {sorted(CORRUPTIONS)}.")
        return list(subset)
    subsets = {"test": TEST_CORRUPTIONS, "validation": VALIDATION_CORRUPTIONS, "all": CORRUPTIONS}
    if subset not in subsets:
        raise ValueError(f"Corruption subset must be one of {sorted(subsets)} or a list of names, got {subset!r}.")
    return list(subsets[subset])


__all__ = ["CORRUPTIONS", "SEVERITIES", "TEST_CORRUPTIONS", "VALIDATION_CORRUPTIONS", "corrupt", "corruption_names"]
