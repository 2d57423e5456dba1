"""Building blocks of `corruptions.py`: the scikit-image and opencv routines the reference calls, in numpy/scipy.

Each names what it replaces. scikit-image's `gaussian`, `rgb2hsv` and `hsv2rgb` are the same arithmetic as
theirs; opencv's `GaussianBlur`, `filter2D` and `blur` are the same filters with opencv's default border
(`BORDER_REFLECT_101`, scipy's `mirror`); `canny` and `equalize_hist` follow opencv's algorithms, with a
Euclidean distance in place of opencv's 5x5 mask approximation (tested within a tolerance).
"""

from __future__ import annotations

import math

import numpy as np


def _ndimage():
    try:
        from scipy import ndimage
    except ImportError as error:  # pragma: no cover - scipy comes with the `corruptions` extra
        raise ImportError("Image corruptions need scipy: pip install 'anchorclip[corruptions]'.") from error
    return ndimage


def gaussian(x: np.ndarray, sigma, mode: str = "nearest", truncate: float = 4.0) -> np.ndarray:
    """`skimage.filters.gaussian(x, sigma, mode=mode, truncate=truncate, channel_axis=-1 for H x W x C)`."""
    if np.ndim(sigma) == 0:
        sigma = (sigma, sigma, 0) if x.ndim == 3 else (sigma, sigma)
    return _ndimage().gaussian_filter(x, sigma, mode=mode, truncate=truncate)


def correlate2d(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """`cv2.filter2D(x, -1, kernel)` (a correlation, border reflect-101) of one channel."""
    return _ndimage().correlate(x, np.asarray(kernel, dtype=np.float64), mode="mirror")


def _cv2_gaussian_kernel(size: int, sigma: float) -> np.ndarray:
    """`cv2.getGaussianKernel(size, sigma)` for sigma > 0."""
    offsets = np.arange(size) - (size - 1) / 2
    kernel = np.exp(-(offsets**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def disk(radius: float, alias_blur: float = 0.1, dtype=np.float32) -> np.ndarray:
    """The reference's defocus kernel: a disk, normalised, antialiased by `cv2.GaussianBlur`."""
    grid: np.ndarray = np.arange(-8, 8 + 1) if radius <= 8 else np.arange(-radius, radius + 1)
    size = 3 if radius <= 8 else 5
    xs, ys = np.meshgrid(grid, grid)
    aliased = np.array((xs**2 + ys**2) <= radius**2, dtype=dtype)
    aliased /= np.sum(aliased)
    blur = _cv2_gaussian_kernel(size, alias_blur)
    ndimage = _ndimage()
    out = ndimage.correlate1d(aliased.astype(np.float64), blur, axis=0, mode="mirror")
    return ndimage.correlate1d(out, blur, axis=1, mode="mirror").astype(dtype)


def clipped_zoom(img: np.ndarray, zoom_factor: float) -> np.ndarray:
    """The centre `1 / zoom_factor` of `img`, zoomed back up (bilinear), as the reference's `clipped_zoom`."""
    ch0 = int(np.ceil(img.shape[0] / float(zoom_factor)))
    top0 = (img.shape[0] - ch0) // 2
    ch1 = int(np.ceil(img.shape[1] / float(zoom_factor)))
    top1 = (img.shape[1] - ch1) // 2
    return _ndimage().zoom(img[top0 : top0 + ch0, top1 : top1 + ch1], (zoom_factor, zoom_factor, 1), order=1)


def _shift(image: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Shift by (dx, dy), repeating the edge row / column into the vacated border (the reference's `shift`)."""
    shifted = image
    if dx < 0:
        shifted = np.roll(image, shift=image.shape[1] + dx, axis=1)
        shifted[:, dx:] = shifted[:, dx - 1 : dx]
    elif dx > 0:
        shifted = np.roll(image, shift=dx, axis=1)
        shifted[:, :dx] = shifted[:, dx : dx + 1]
    if dy < 0:
        shifted = np.roll(shifted, shift=image.shape[0] + dy, axis=0)
        shifted[dy:, :] = shifted[dy - 1 : dy, :]
    elif dy > 0:
        shifted = np.roll(shifted, shift=dy, axis=0)
        shifted[:dy, :] = shifted[dy : dy + 1, :]
    return shifted


def motion_blur_layer(x: np.ndarray, radius: int, sigma: float, angle: float) -> np.ndarray:
    """A one-sided Gaussian-weighted sum of shifted copies along `angle`: imagecorruptions' numpy version of
    ImageMagick's motion blur (which ImageNet-C was made with, through Wand)."""
    width = radius * 2 + 1
    kernel = np.exp(-(np.arange(width) ** 2) / (2 * sigma**2)) / (np.sqrt(2 * np.pi) * sigma)
    kernel = kernel / kernel.sum()
    point = (width * np.sin(np.deg2rad(angle)), width * np.cos(np.deg2rad(angle)))
    hypot = math.hypot(point[0], point[1])
    blurred = np.zeros_like(x, dtype=np.float32)
    for i in range(width):
        dy = -math.ceil(((i * point[0]) / hypot) - 0.5)
        dx = -math.ceil(((i * point[1]) / hypot) - 0.5)
        if abs(dy) >= x.shape[0] or abs(dx) >= x.shape[1]:
            break  # the simulated motion left the image
        blurred = blurred + kernel[i] * _shift(x, dx, dy)
    return blurred


def plasma_fractal(rng: np.random.RandomState, mapsize: int = 256, wibbledecay: float = 3) -> np.ndarray:
    """A diamond-square height map in [0, 1], `mapsize` a power of two (the reference's `plasma_fractal`)."""
    if mapsize & (mapsize - 1):
        raise ValueError(f"plasma_fractal: mapsize must be a power of two, got {mapsize}.")
    maparray = np.empty((mapsize, mapsize), dtype=np.float64)
    maparray[0, 0] = 0
    stepsize, wibble = mapsize, 100.0

    def wibbledmean(array):
        return array / 4 + wibble * rng.uniform(-wibble, wibble, array.shape)

    while stepsize >= 2:
        half = stepsize // 2
        corners = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]  # squares: centres from their corners
        squares = corners + np.roll(corners, shift=-1, axis=0)
        squares += np.roll(squares, shift=-1, axis=1)
        maparray[half:mapsize:stepsize, half:mapsize:stepsize] = wibbledmean(squares)
        centres = maparray[half:mapsize:stepsize, half:mapsize:stepsize]  # diamonds: edges from both
        corners = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        sums = (centres + np.roll(centres, 1, axis=0)) + (corners + np.roll(corners, -1, axis=1))
        maparray[0:mapsize:stepsize, half:mapsize:stepsize] = wibbledmean(sums)
        sums = (centres + np.roll(centres, 1, axis=1)) + (corners + np.roll(corners, -1, axis=0))
        maparray[half:mapsize:stepsize, 0:mapsize:stepsize] = wibbledmean(sums)
        stepsize //= 2
        wibble /= wibbledecay
    maparray -= maparray.min()
    return maparray / maparray.max()


def rgb2hsv(rgb: np.ndarray) -> np.ndarray:
    """`skimage.color.rgb2hsv` of a float H x W x 3 image in [0, 1]."""
    arr = np.asarray(rgb, dtype=np.float64)
    out = np.empty_like(arr)
    value = arr.max(-1)
    delta = np.ptp(arr, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        saturation = delta / value
        saturation[delta == 0.0] = 0.0
        for channel, (offset, a, b) in enumerate(((0.0, 1, 2), (2.0, 2, 0), (4.0, 0, 1))):
            idx = arr[..., channel] == value
            out[idx, 0] = offset + (arr[idx, a] - arr[idx, b]) / delta[idx]
        hue = (out[..., 0] / 6.0) % 1.0
    hue[delta == 0.0] = 0.0
    out[..., 0], out[..., 1], out[..., 2] = hue, saturation, value
    out[np.isnan(out)] = 0
    return out


def hsv2rgb(hsv: np.ndarray) -> np.ndarray:
    """`skimage.color.hsv2rgb`."""
    arr = np.asarray(hsv, dtype=np.float64)
    hi = np.floor(arr[..., 0] * 6)
    f = arr[..., 0] * 6 - hi
    p = arr[..., 2] * (1 - arr[..., 1])
    q = arr[..., 2] * (1 - f * arr[..., 1])
    t = arr[..., 2] * (1 - (1 - f) * arr[..., 1])
    v = arr[..., 2]
    hi = np.stack([hi, hi, hi], axis=-1).astype(np.uint8) % 6
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    return np.choose(hi, np.stack([np.stack(c, axis=-1) for c in choices]))


def canny(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """Edges of a uint8 image as `cv2.Canny(image, low, high)` finds them (Sobel 3x3, L1 magnitude, non-maximum
    suppression in four directions, hysteresis over 8-connected pixels); a boolean mask."""
    ndimage = _ndimage()
    image = image.astype(np.float64)
    gx = ndimage.sobel(image, axis=1, mode="nearest")
    gy = ndimage.sobel(image, axis=0, mode="nearest")
    magnitude = np.abs(gx) + np.abs(gy)
    angle = (np.rad2deg(np.arctan2(gy, gx)) + 180.0) % 180.0
    direction = np.round(angle / 45.0).astype(int) % 4  # 0: horizontal gradient, 1: 45°, 2: vertical, 3: 135°
    padded = np.pad(magnitude, 1)
    height, width = magnitude.shape
    keep = np.zeros_like(magnitude, dtype=bool)
    for code, (dy, dx) in enumerate(((0, 1), (1, 1), (1, 0), (1, -1))):
        ahead = padded[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]
        behind = padded[1 - dy : 1 - dy + height, 1 - dx : 1 - dx + width]
        keep |= (direction == code) & (magnitude > behind) & (magnitude >= ahead)
    weak = keep & (magnitude > low)
    labels, count = ndimage.label(weak, structure=np.ones((3, 3)))
    strong = np.unique(labels[keep & (magnitude > high)])
    return np.isin(labels, strong[strong > 0]) if count else weak


def equalize_hist(image: np.ndarray) -> np.ndarray:
    """`cv2.equalizeHist` of a uint8 image."""
    hist = np.bincount(image.ravel(), minlength=256)
    first = int(np.flatnonzero(hist)[0])
    total = image.size
    if hist[first] == total:
        return np.full_like(image, first)
    cumulative = np.cumsum(hist)
    lut = np.clip(np.round((cumulative - hist[first]) * (255.0 / (total - hist[first]))), 0, 255)
    lut[: first + 1] = 0
    return lut.astype(np.uint8)[image]
