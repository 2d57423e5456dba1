"""Shape masks: each shape is a few polygons on a 64x64 canvas, filled (255) or cut out (0).

Shapes are defined on the unit disc and then scaled, rotated and moved, so every shape of one size has
the same extent; rotation is kept small (the caller's choice) so that a square never becomes a diamond.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

CANVAS = 64


def _regular(sides: int, radius: float = 1.0, start_deg: float = -90.0) -> list[tuple[float, float]]:
    start = math.radians(start_deg)
    return [
        (radius * math.cos(start + 2 * math.pi * k / sides), radius * math.sin(start + 2 * math.pi * k / sides))
        for k in range(sides)
    ]


def _star(points: int = 5, inner: float = 0.45) -> list[tuple[float, float]]:
    outer_tips = _regular(points)
    inner_tips = _regular(points, inner, -90.0 + 180.0 / points)
    return [vertex for pair in zip(outer_tips, inner_tips, strict=True) for vertex in pair]


def _heart(steps: int = 40) -> list[tuple[float, float]]:
    # The classic parametric heart, scaled into the unit disc (y grows downwards on images).
    ts = np.linspace(0, 2 * np.pi, steps, endpoint=False)
    xs = 16 * np.sin(ts) ** 3 / 17
    ys = -(13 * np.cos(ts) - 5 * np.cos(2 * ts) - 2 * np.cos(3 * ts) - np.cos(4 * ts)) / 17 + 0.1
    return list(zip(xs.tolist(), ys.tolist(), strict=True))


_CIRCLE = _regular(40)
_CROSS_ARM = 0.33
# Each shape: list of (polygon, fill) drawn in order; fill 0 cuts a hole into what came before.
POLYGONS: dict[str, list[tuple[list[tuple[float, float]], int]]] = {
    "circle": [(_CIRCLE, 255)],
    "square": [(_regular(4, 1.0, 45.0), 255)],
    "triangle": [(_regular(3, 1.05), 255)],
    "star": [(_star(), 255)],
    "heart": [(_heart(), 255)],
    "cross": [
        ([(-1, -_CROSS_ARM), (1, -_CROSS_ARM), (1, _CROSS_ARM), (-1, _CROSS_ARM)], 255),
        ([(-_CROSS_ARM, -1), (_CROSS_ARM, -1), (_CROSS_ARM, 1), (-_CROSS_ARM, 1)], 255),
    ],
    "diamond": [([(0, -1), (0.62, 0), (0, 1), (-0.62, 0)], 255)],
    "hexagon": [(_regular(6, 1.0, 0.0), 255)],
    "pentagon": [(_regular(5), 255)],
    "ring": [(_CIRCLE, 255), (_regular(40, 0.55), 0)],
    "crescent": [(_CIRCLE, 255), ([(x * 0.85 + 0.45, y * 0.85 - 0.2) for x, y in _CIRCLE], 0)],
    "arrow": [
        ([(-1, -0.25), (0.15, -0.25), (0.15, 0.25), (-1, 0.25)], 255),
        ([(0.1, -0.7), (1, 0), (0.1, 0.7)], 255),
    ],
}


def shape_mask(shape: str, center: tuple[float, float], radius: float, angle_deg: float = 0.0) -> Image.Image:
    """An 'L' mask of `shape` on the 64x64 canvas: 255 inside, 0 outside."""
    cos, sin = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    cx, cy = center
    mask = Image.new("L", (CANVAS, CANVAS), 0)
    draw = ImageDraw.Draw(mask)
    for polygon, fill in POLYGONS[shape]:
        placed = [(cx + radius * (x * cos - y * sin), cy + radius * (x * sin + y * cos)) for x, y in polygon]
        draw.polygon(placed, fill=fill)
    return mask
