"""Background patterns: a light neutral base with plain, striped, dotted or checkered marks.

Returned as a boolean "ink" map, so each rendering style decides how the marks look (tinted paper for
a photo, faint pencil for a sketch).
"""

from __future__ import annotations

import numpy as np

from .shapes import CANVAS

# Pixel row and column indices of the 64x64 canvas, shared by the pattern and shading formulas.
# Row and column index of every pixel of the canvas, shared by the pattern and shading formulas.
GRID_Y, GRID_X = np.mgrid[0:CANVAS, 0:CANVAS]


def pattern_ink(background: str, rng: np.random.Generator) -> np.ndarray:
    """A (64, 64) bool map of where the background pattern puts its marks."""
    if background == "plain":
        return np.zeros((CANVAS, CANVAS), dtype=bool)
    offset = int(rng.integers(0, 12))
    if background == "striped":
        # Horizontal, vertical or diagonal stripes, period 12 px on the 64 px canvas (6 px after downsampling).
        direction = int(rng.integers(0, 3))
        coordinate = (GRID_Y, GRID_X, GRID_X + GRID_Y)[direction]
        return (coordinate + offset) % 12 < 5
    if background == "dotted":
        dy = (GRID_Y + offset) % 12 - 6
        dx = (GRID_X + offset // 2) % 12 - 6
        return dx * dx + dy * dy <= 6
    if background == "checkered":
        return (((GRID_Y + offset) // 8) + ((GRID_X + offset) // 8)) % 2 == 0
    raise ValueError(f"Unknown background {background!r}.")


def neutral_base(rng: np.random.Generator) -> np.ndarray:
    """A light neutral RGB tone with a slight random tint, shape (3,)."""
    level = rng.uniform(185, 235)
    return np.clip(level + rng.uniform(-12, 12, size=3), 0, 255)
