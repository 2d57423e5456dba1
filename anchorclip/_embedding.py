"""Moved: the embedding cache is `anchorclip.anchors.embedding_store` (keys, `EmbeddingStore`),
`anchorclip.anchors.encoders` (`ImageEncoder`, `TextEncoder`) and `anchorclip.anchors.embed_column` (`embed_column`,
streamed pools). This private module re-exports their names for one release and will then be removed.
"""

from __future__ import annotations

from anchorclip.anchors.embed_column import embed_column, stream_sources
from anchorclip.anchors.embedding_store import (
    CACHE_FORMAT_VERSION,
    KINDS,
    EmbeddingStore,
    cache_key,
    cache_path,
    dataset_fingerprint,
    default_cache_dir,
    model_fingerprint,
)
from anchorclip.anchors.encoders import ImageEncoder, TextEncoder, projected_features

_features = projected_features

__all__ = [
    "CACHE_FORMAT_VERSION",
    "KINDS",
    "EmbeddingStore",
    "ImageEncoder",
    "TextEncoder",
    "cache_key",
    "cache_path",
    "dataset_fingerprint",
    "default_cache_dir",
    "embed_column",
    "model_fingerprint",
    "projected_features",
    "stream_sources",
]
