"""Rendering a scene in one of four styles (the domains): photo, sketch, painting, pixel art.

Everything is drawn on a 64x64 canvas and box-downsampled to 32x32, which gives clean anti-aliased
edges for free; pixel art is instead made at 16x16 and blown up with nearest-neighbour.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from .backgrounds import GRID_X, GRID_Y, neutral_base, pattern_ink
from .shapes import CANVAS, shape_mask

IMAGE_SIZE = 32


def _to_image(array: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), "RGB")


def _downsample(array: np.ndarray) -> np.ndarray:
    # 2x2 box average: 64x64 -> 32x32.
    return array.reshape(IMAGE_SIZE, 2, IMAGE_SIZE, 2, 3).mean(axis=(1, 3))


def _flat_scene(mask: np.ndarray, colour: np.ndarray, ink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flat-colour composite used by painting and pixel art: patterned background, uniformly filled shape."""
    base = neutral_base(rng)
    background = np.where(ink[..., None], base - rng.uniform(35, 60), base)
    return background * (1 - mask[..., None]) + colour * mask[..., None]


def _render_photo(mask, colour, ink, center, radius, rng) -> Image.Image:
    base = neutral_base(rng)
    background = np.where(ink[..., None], base * rng.uniform(0.72, 0.85), base)
    # Drop shadow: the mask shifted down-right and blurred darkens the background.
    shift = int(rng.integers(2, 5))
    shadow = np.roll(np.roll(mask, shift, axis=0), shift, axis=1)
    shadow = np.asarray(Image.fromarray((shadow * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(2))) / 255
    background = background * (1 - 0.45 * shadow[..., None])
    # Shading: a light from the top left, so the fill goes from 1.2x to 0.75x of the colour.
    cx, cy = center
    t = ((GRID_X - cx) + (GRID_Y - cy)) / (4 * radius) + 0.5
    shaded = colour * np.clip(1.2 - 0.45 * t, 0.6, 1.3)[..., None]
    scene = _downsample(background * (1 - mask[..., None]) + shaded * mask[..., None])
    scene = scene + rng.normal(0, rng.uniform(3, 9), size=scene.shape)
    return _to_image(scene)


def _render_sketch(mask, colour, ink, center, radius, rng) -> Image.Image:
    paper = np.array([245.0, 240.0, 225.0]) + rng.uniform(-8, 8, size=3)
    # Pencil marks for the pattern are faint; only their outlines are drawn, like hatching.
    ink_edges = ink & ~np.asarray(Image.fromarray(ink.astype(np.uint8) * 255).filter(ImageFilter.MinFilter(3)), bool)
    background = np.where(ink_edges[..., None], paper - rng.uniform(45, 70), paper)
    solid = (mask > 0.5).astype(np.uint8) * 255
    inner = np.asarray(Image.fromarray(solid).filter(ImageFilter.MinFilter(5)))
    outline = ((solid > 0) & (inner == 0)).astype(np.float64)
    stroke = colour * rng.uniform(0.75, 1.0)
    scene = _downsample(background * (1 - outline[..., None]) + stroke * outline[..., None])
    scene = scene + rng.normal(0, 2.5, size=scene.shape)  # paper grain
    return _to_image(scene)


def _render_painting(mask, colour, ink, center, radius, rng) -> Image.Image:
    scene = _flat_scene(mask, colour, ink, rng)
    # Low-frequency colour noise: a 4x4 random field blown up smoothly, like uneven brush strokes.
    field = rng.normal(0, 14, size=(4, 4, 3)) + 128
    field = np.asarray(_to_image(field).resize((CANVAS, CANVAS), Image.Resampling.BICUBIC), dtype=np.float64) - 128
    blurred = _to_image(scene + field).filter(ImageFilter.GaussianBlur(rng.uniform(1.0, 1.6)))
    return _to_image(_downsample(np.asarray(blurred, dtype=np.float64)))


def _render_pixel_art(mask, colour, ink, center, radius, rng) -> Image.Image:
    scene = _flat_scene(mask, colour, ink, rng)
    small = np.asarray(_to_image(scene).resize((16, 16), Image.Resampling.BOX), dtype=np.float64)
    small = np.round(small / 51) * 51  # posterise to 6 levels per channel
    solid = Image.fromarray((mask * 255).astype(np.uint8)).resize((16, 16), Image.Resampling.BOX)
    inside = np.asarray(solid) >= 96
    grown = np.asarray(Image.fromarray(inside.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(3))) > 0
    small[grown & ~inside] = 0  # black outline just outside the shape keeps its colour visible
    return _to_image(small).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.NEAREST)


RENDERERS = {
    "photo": _render_photo,
    "sketch": _render_sketch,
    "painting": _render_painting,
    "pixel art": _render_pixel_art,
}


def render(scene, rng: np.random.Generator) -> Image.Image:
    """Draw `scene` (a `world.Scene`) as a 32x32 RGB PIL image; nuisance factors come from `rng`."""
    mask = np.asarray(shape_mask(scene.shape, scene.center, scene.radius, scene.angle), dtype=np.float64) / 255
    ink = pattern_ink(scene.background, rng)
    return RENDERERS[scene.style](mask, np.asarray(scene.rgb, dtype=np.float64), ink, scene.center, scene.radius, rng)
