"""Pair anchors from a pool of precomputed CLIP embeddings in LAION's layout (`anchorclip retrieve
--pool_embeddings`). See `anchorclip.anchors` for the map of the pipelines. Each public name is loaded on first
use.
"""

from __future__ import annotations

from typing import Any

from anchorclip._lazy import load_public, public_dir

_PUBLIC = {
    "retrieve_from_precomputed": "anchorclip.anchors.laion.job",
    "PrecomputedPool": "anchorclip.anchors.laion.precomputed",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    return load_public(__name__, _PUBLIC, name)


def __dir__() -> list[str]:
    return public_dir(__name__, _PUBLIC)
