"""Pair anchors from a pool of image-caption pairs that we embed (`anchorclip retrieve --pool`).

See `anchorclip.anchors` for the map of the pipelines. Each public name is loaded on first use.
"""

from __future__ import annotations

from typing import Any

from anchorclip._lazy import load_public, public_dir

_PUBLIC = {
    "RetrievalArguments": "anchorclip.anchors.pool.args",
    "retrieve_from_pool": "anchorclip.anchors.pool.job",
    "embed_pool": "anchorclip.anchors.pool.embedding",
    "EmbeddingStore": "anchorclip.anchors.pool.store",
    "build_index": "anchorclip.anchors.pool.faiss_index",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    return load_public(__name__, _PUBLIC, name)


def __dir__() -> list[str]:
    return public_dir(__name__, _PUBLIC)
