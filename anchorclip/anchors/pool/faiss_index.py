"""FAISS search over an embedded pool: the index factory and its defaults, building, searching, exact top-k and
recall against exact search.

An in-memory index over an `EmbeddingStore` (`anchorclip retrieve --pool`); the index over a precomputed
LAION-layout pool, built shard by shard, is `anchorclip.anchors.laion.index`.
"""

from __future__ import annotations

import logging
import math
import re
import time
from typing import TYPE_CHECKING

import numpy as np

from anchorclip.anchors.pool.store import EmbeddingStore

if TYPE_CHECKING:
    import faiss

logger = logging.getLogger(__name__)

# Up to this many pool rows the exact index is used by default: 1M x 512 float32 is 2 GB, and a batch of
# a thousand class queries takes seconds. Beyond it, an IVF index (see `default_index_factory`).
EXACT_SEARCH_MAX_ROWS = 1_000_000


def faiss_module():
    try:
        import faiss
    except ImportError as error:  # a core requirement, missing only from a broken or hand-made environment
        raise ImportError("Retrieval needs FAISS, a requirement of anchorclip: `pip install faiss-cpu`.") from error
    return faiss


def default_index_factory(num_rows: int, dim: int) -> str:
    """`Flat` (exact) up to `EXACT_SEARCH_MAX_ROWS`; beyond, IVF with ~4*sqrt(n) lists and re-ranked fast scan.

    The lists hold 4-bit fast-scan PQ codes (2 dimensions per code, scanned 16 codes per SIMD register),
    and each query's shortlist is re-ranked with float16 copies of the vectors: 1,152 bytes per 512-d
    vector. On 1M clustered vectors this beats 8-bit scalar codes (512 bytes) on both recall and speed,
    which PQ alone cannot (docs/results/retrieval.md measures all three).
    """
    if num_rows <= EXACT_SEARCH_MAX_ROWS:
        return "Flat"
    nlist = 2 ** round(math.log2(4 * math.sqrt(num_rows)))
    return f"IVF{nlist},PQ{dim // 2}x4fs,Refine(SQfp16)"


def default_index_params(index_factory: str) -> str | None:
    """`nprobe` for IVF indexes (1/128 of the lists), and a shortlist of 32·k candidates for re-ranked ones."""
    params = []
    match = re.search(r"IVF(\d+)", index_factory)
    if match is not None:
        params.append(f"nprobe={max(8, int(match.group(1)) // 128)}")
    if "Refine(" in index_factory or "RFlat" in index_factory:
        params.append("k_factor_rf=32")
    return ",".join(params) or None


def build_index(
    embeddings: np.ndarray | EmbeddingStore,
    index_factory: str | None = None,
    *,
    index_params: str | None = None,
    train_size: int = 262_144,
    seed: int = 0,
) -> faiss.Index:
    """A FAISS inner-product index over L2-normalised embeddings (ids are row numbers).

    `index_factory` is any `faiss.index_factory` string ("Flat", "IVF4096,SQ8", "OPQ64,IVF4096,PQ64", ...;
    default: `default_index_factory`). Trainable indexes are trained on a random sample of at most
    `train_size` valid rows, then rows are added chunk by chunk, so a store larger than memory as float32
    can be indexed. `index_params` is a `faiss.ParameterSpace` string such as "nprobe=64"; it overrides
    `default_index_params` key by key, so "nprobe=256" keeps the default re-ranking shortlist.
    """
    faiss = faiss_module()
    store = embeddings if isinstance(embeddings, EmbeddingStore) else EmbeddingStore.from_arrays(embeddings)
    if store.num_rows == 0:
        raise ValueError("Cannot build an index over zero embeddings.")
    index_factory = index_factory or default_index_factory(store.num_rows, store.dim)
    index = faiss.index_factory(store.dim, index_factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        valid_rows = np.nonzero(store.valid)[0]
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(valid_rows, size=min(train_size, len(valid_rows)), replace=False))
        started = time.perf_counter()
        index.train(store.gather(sample))
        logger.info("Trained %s on %d vectors in %.1fs.", index_factory, len(sample), time.perf_counter() - started)
    for _, block in store.chunks():
        index.add(np.ascontiguousarray(block))
    index_params = search_params(index_factory, index_params)
    if index_params:
        faiss.ParameterSpace().set_index_parameters(index, index_params)
    return index


def search_params(index_factory: str, index_params: str | None) -> str | None:
    """`default_index_params(index_factory)` with the keys given in `index_params` replaced or added."""
    merged = {}
    for params in (default_index_params(index_factory), index_params):
        for item in filter(None, (params or "").split(",")):
            key, _, value = item.partition("=")
            merged[key.strip()] = value.strip()
    return ",".join(f"{key}={value}" for key, value in merged.items()) or None


def search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """`(scores, ids)`, each `(num_queries, k)`, best first; ids are -1 where fewer than k were found."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    return index.search(queries, min(k, index.ntotal))


def exact_topk(store: EmbeddingStore, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by chunked matrix products over the store (invalid rows excluded), without an index."""
    queries = np.asarray(queries, dtype=np.float32)
    k = min(k, store.num_rows)
    best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_ids = np.zeros((len(queries), 0), dtype=np.int64)
    for start, block in store.chunks():
        scores = queries @ block.T
        scores[:, ~store.valid[start : start + len(block)]] = -np.inf
        ids = np.broadcast_to(np.arange(start, start + len(block)), scores.shape)
        scores, ids = np.concatenate([best_scores, scores], 1), np.concatenate([best_ids, ids], 1)
        keep = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
        best_scores, best_ids = np.take_along_axis(scores, keep, 1), np.take_along_axis(ids, keep, 1)
    order = np.argsort(-best_scores, axis=1, kind="stable")
    return np.take_along_axis(best_scores, order, 1), np.take_along_axis(best_ids, order, 1)


def measure_recall(index, store: EmbeddingStore, queries: np.ndarray, k: int) -> float:
    """Recall@k of `index` against exact search: mean |approx top-k ∩ exact top-k| / k over the queries."""
    _, exact_ids = exact_topk(store, queries, k)
    _, approx_ids = search(index, queries, k)
    hits = [len(set(a[a >= 0].tolist()) & set(e.tolist())) for a, e in zip(approx_ids, exact_ids)]
    return float(np.mean(hits) / exact_ids.shape[1])


def is_exact(index) -> bool:
    faiss = faiss_module()
    return isinstance(faiss.downcast_index(index), faiss.IndexFlat)
