"""Scenes: sampling the attributes of one image, and turning (seed, index) into an example.

An example is a pure function of (split seed, index): its random generator is seeded with both, so any
slice of any split can be regenerated anywhere, in any order, by any number of worker processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .attributes import BACKGROUNDS, COLOURS, POSITION_XY, POSITIONS, SHAPES, SIZE_RADIUS, SIZES, STYLES
from .captions import make_caption
from .render import render


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    size: str
    position: str
    background: str
    style: str
    # Nuisance factors: jitter that no caption mentions.
    rgb: tuple[float, float, float]
    center: tuple[float, float]
    radius: float
    angle: float


def _sample_scene(rng: np.random.Generator, shapes=SHAPES, styles=STYLES) -> Scene:
    """Attributes uniformly at random (shape among `shapes`, style among `styles`), plus jitter."""

    def pick(options):
        return options[int(rng.integers(len(options)))]

    shape, colour, size, position = pick(shapes), pick(tuple(COLOURS)), pick(SIZES), pick(POSITIONS)
    background, style = pick(BACKGROUNDS), pick(styles)
    rgb = tuple(np.clip(np.asarray(COLOURS[colour]) + rng.uniform(-18, 18, size=3), 0, 255).tolist())
    x, y = POSITION_XY[position]
    center = (x + rng.uniform(-3, 3), y + rng.uniform(-3, 3))
    radius = SIZE_RADIUS[size] * rng.uniform(0.9, 1.1)
    angle = rng.uniform(-15, 15)  # small, so that a square never turns into a diamond
    return Scene(shape, colour, size, position, background, style, rgb, center, radius, angle)


def make_example(
    seed: int, index: int, shapes: Sequence[str] = SHAPES, styles: Sequence[str] = STYLES
) -> dict[str, Any]:
    """One example: a 32x32 PIL image, its caption, and its attribute names."""
    rng = np.random.default_rng([seed, index])
    scene = _sample_scene(rng, shapes, styles)
    image = render(scene, rng)
    caption = make_caption(scene, rng)
    return {
        "image": image,
        "caption": caption,
        "shape": scene.shape,
        "colour": scene.colour,
        "size": scene.size,
        "position": scene.position,
        "background": scene.background,
        "style": scene.style,
    }
