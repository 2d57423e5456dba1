"""The IVF index over a precomputed pool: two-level k-means, 4-bit fast-scan codes in RAM, exact re-ranking.

Building, in a folder of its own (each step resumable, each file written under a temporary name and renamed):

1. `trained.index`: `nlist` centroids from two-level k-means (`two_level_kmeans`: √nlist top clusters, each split
   in proportion to its share of the sample, so the cost is ~2·√nlist rather than nlist distances a sample row), an
   IVF coarse quantiser over those centroids for queries (`IVF<nlist>(IVF<√nlist>,Flat)`: a query is compared with
   the √nlist top centroids and the centroids of the 8 nearest, not with all nlist), and the PQ codebooks of the
   residuals. Trained on a random sample of the pool's rows.
2. `shards/shard_00012.index`: pool shard 12's rows, each put in the list of its nearest centroid (exact: one matrix
   product a chunk, `exact_assigner`) and encoded into a copy of the trained index (ids = pool rows). A finished
   shard is never re-encoded: an interrupted build resumes at the first missing one.
3. `populated.index`: the shards merged (`merge_from`) into one index, which searching loads into RAM; the shard
   files are then deleted.

Codes: `PQ<m>x4fsr`: 4-bit *fast-scan* codes of the residual to the list's centroid, scanned 32 codes per SIMD
register; m = d/2 up to 256 (128 bytes a 512-d or 768-d vector) + an 8-byte id. PQ codes alone lose much of the
order between close neighbours, so `search` re-ranks a shortlist of `k_factor_rf * k` candidates with the pool's own
float16 embeddings (read from the memory-mapped `.npy` shards, which are on disk anyway: they cost no index bytes,
one random 1-2 KB read per candidate). The pool's vectors are unit-norm, so the index measures L2 distance, whose
order is the inner product's (cos = 1 - L2²/2), and which k-means and the IVF quantiser handle best.
Measured, and modelled to 400M rows, in docs/retrieval.md and docs/results/retrieval_scale.md.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from anchorclip.anchors.pool.store import EmbeddingStore

logger = logging.getLogger(__name__)

TRAINED, POPULATED, CONFIG = "trained.index", "populated.index", "build.json"
# nprobe 32 of 4·√n lists, each query's 20·k best codes re-ranked: recall@10 0.964 on the 1M benchmark pool and
# 0.942 on the 8M one (10·k: 0.952 and 0.911), docs/results/retrieval_scale.md; quantizer_nprobe: top clusters whose
# centroids the coarse quantiser compares.
DEFAULT_PARAMS = {"nprobe": "32", "quantizer_nprobe": "8", "k_factor_rf": "20"}


def default_pool_factory(num_rows: int, dim: int) -> str:
    """`IVF<nlist>(IVF<√nlist>,Flat),PQ<m>x4fsr`: nlist the power of two nearest 4·√n, m = d/2 up to 256.

    An HNSW graph over the centroids (`IVF<n>_HNSW32`) would be faster still for a query, but on clustered embeddings
    its greedy walk misses: on the 1M benchmark pool (4,096 centroids) it found a row's nearest centroid for 63% of
    rows at faiss's default efSearch 16, 76% at 64, 84% at 256 (docs/results/retrieval_scale.md).
    """
    nlist = max(16, 2 ** round(math.log2(4 * math.sqrt(num_rows))))
    nlist = min(nlist, max(16, 2 ** int(math.log2(max(1, num_rows // 39)))))  # >= 39 training rows per list
    top = 2 ** round(math.log2(math.sqrt(nlist)))
    m = next(m for m in range(max(1, min(256, dim // 2)), 0, -1) if dim % m == 0)
    return f"IVF{nlist}(IVF{top},Flat),PQ{m}x4fsr"


def _nlist(factory: str) -> int:
    match = re.match(r"IVF(\d+)", factory)
    if match is None:
        raise ValueError(f"A pool index must be an IVF index (built shard by shard, then merged); got {factory!r}.")
    return int(match.group(1))


def _pool_search_params(factory: str, index_params: str | None) -> dict[str, str]:
    """Defaults (`DEFAULT_PARAMS`, `quantizer_nprobe` only where the quantiser is an IVF), `index_params` replacing
    them key by key."""
    _nlist(factory)
    params = dict(DEFAULT_PARAMS)
    if not re.match(r"IVF\d+\(IVF", factory):
        del params["quantizer_nprobe"]
    for item in filter(None, (index_params or "").split(",")):
        key, _, value = item.partition("=")
        params[key.strip()] = value.strip()
    return params


def two_level_kmeans(
    sample: np.ndarray, nlist: int, niter: int = 10, seed: int = 0, top_count: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """`(centroids, top)`: `nlist` k-means centroids of `sample` in two levels, `top_count` (default √nlist) top
    clusters, then each split into a share of `nlist` proportional to its size (at least one centroid, at most one
    per row); `top` are the top clusters' centroids.

    The cost is 2·(√nlist + ~√nlist)·d flop a row and iteration instead of 2·nlist·d: 65,536 centroids take minutes,
    not days. `faiss.contrib.clustering.two_level_clustering` does the same but fails on skewed pools (the Zipf-
    weighted benchmark pool): its proportional split gives a small top cluster 0 centroids (k-means of k = 0), and its
    even split gives a 1-row cluster 64.
    """
    import faiss

    rows, dim = sample.shape
    top_count = top_count or max(1, round(math.sqrt(nlist)))
    top = faiss.Kmeans(dim, top_count, niter=niter, seed=seed, max_points_per_centroid=2000)
    top.train(sample)
    assignment = top.index.search(sample, 1)[1][:, 0]
    sizes = np.bincount(assignment, minlength=top_count)
    share = sizes * nlist / rows
    split = np.minimum(np.maximum(np.floor(share).astype(np.int64), (sizes > 0).astype(np.int64)), sizes)
    while split.sum() != nlist:  # largest remainders first, never more centroids than rows
        if split.sum() < nlist:
            split[np.argmax(np.where(split < sizes, share - split, -np.inf))] += 1
        else:
            split[np.argmax(np.where(split > 1, split - share, -np.inf))] -= 1
    centroids = []
    for cluster in np.flatnonzero(split):
        members = sample[assignment == cluster]
        if split[cluster] == len(members):
            centroids.append(members)
            continue
        kmeans = faiss.Kmeans(dim, int(split[cluster]), niter=niter, seed=seed + 1 + int(cluster))
        kmeans.train(members)
        centroids.append(kmeans.centroids)
    return np.ascontiguousarray(np.vstack(centroids), dtype=np.float32), np.asarray(top.centroids)


class PoolIndex:
    """A populated IVF index plus re-ranking with the pool's embeddings; `search` like a faiss index."""

    def __init__(
        self, index, store: EmbeddingStore, params: dict[str, str], path: str | None = None, factory: str | None = None
    ):
        import faiss

        self.index, self.store, self.path, self.factory = index, store, path, factory
        self.params = dict(params)
        self.k_factor = int(float(self.params.get("k_factor_rf", 1)))
        faiss_params = ",".join(f"{k}={v}" for k, v in self.params.items() if k != "k_factor_rf")
        if faiss_params:
            # faiss's stubs list only the (name, value) overload; the "k=v,k=v" string form is documented faiss API
            faiss.ParameterSpace().set_index_parameters(index, faiss_params)  # type: ignore[arg-type]

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int, block: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """`(scores, ids)`, each `(num_queries, k)`; scores are exact cosines when re-ranked, else from the codes."""
        import faiss

        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(k, self.ntotal)
        shortlist = min(self.ntotal, k * max(1, self.k_factor))
        distances, ids = self.index.search(queries, shortlist)
        if self.k_factor <= 1:
            scores = 1 - distances[:, :k] / 2 if self.index.metric_type == faiss.METRIC_L2 else distances[:, :k]
            return np.where(ids[:, :k] >= 0, scores, -np.inf).astype(np.float32), ids[:, :k]
        out_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        out_ids = np.full((len(queries), k), -1, dtype=np.int64)
        for start in range(0, len(queries), block):
            found = ids[start : start + block]
            rows = np.unique(found[found >= 0])  # sorted: the reads go through each shard in order
            self.store.prefetch(rows)  # one round of concurrent reads, not a page fault a row (store.py)
            vectors = self.store.gather(rows)
            exact = np.einsum(
                "qd,qkd->qk", queries[start : start + block], vectors[np.searchsorted(rows, np.maximum(found, 0))]
            )
            exact[found < 0] = -np.inf
            top = np.argsort(-exact, axis=1, kind="stable")[:, :k]
            out_scores[start : start + block] = np.take_along_axis(exact, top, 1)
            out_ids[start : start + block] = np.where(
                np.take_along_axis(found, top, 1) >= 0, np.take_along_axis(found, top, 1), -1
            )
        return out_scores, out_ids


def _write_index_atomic(index, path: str) -> None:
    import faiss

    tmp = f"{path}.tmp-{os.getpid()}"
    faiss.write_index(index, tmp)
    os.replace(tmp, path)


def _config(store: EmbeddingStore, factory: str, train_size: int, seed: int, niter: int) -> dict:
    return {
        "factory": factory,
        "num_rows": store.num_rows,
        "dim": store.dim,
        "train_size": train_size,
        "seed": seed,
        "niter": niter,
        "shard_rows": np.diff(store.offsets).tolist(),
    }


def train(store: EmbeddingStore, factory: str, train_size: int, seed: int = 0, niter: int = 10):
    """An empty IVF index of `factory` (L2, on the unit-norm rows), trained on a random sample of at most
    `train_size` rows: centroids by `two_level_kmeans`, then the codes of the residuals."""
    import faiss

    index = faiss.index_factory(store.dim, factory, faiss.METRIC_L2)
    ivf = faiss.extract_index_ivf(index)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(store.num_rows, size=min(train_size, store.num_rows), replace=False))
    sample = np.ascontiguousarray(store.gather(rows), dtype=np.float32)
    started = time.perf_counter()
    quantizer: Any = faiss.downcast_index(ivf.quantizer)  # faiss's stubs type it as a plain Index
    nested = isinstance(quantizer, faiss.IndexIVF)
    centroids, top = two_level_kmeans(sample, ivf.nlist, niter, seed, quantizer.nlist if nested else None)
    if nested:
        # Its top level is the k-means' top level, fitted to the pool: k-means of the centroids themselves put
        # 46,044 of 65,536 in one top list on the 8M benchmark pool (a 4.5 ms coarse step for one query).
        quantizer.quantizer.add(top)
        quantizer.is_trained = True
    else:
        quantizer.train(centroids)
    quantizer.add(centroids)
    if nested:
        quantizer.nprobe = int(DEFAULT_PARAMS["quantizer_nprobe"])  # for the residuals of training and adding
        quantizer.make_direct_map()  # residuals need each centroid back by its number
    kmeans_seconds = time.perf_counter() - started
    index.train(sample)  # the coarse quantiser is full, so this trains the codes only
    return index, kmeans_seconds


def build_pool_index(
    store: EmbeddingStore,
    directory: str,
    factory: str | None = None,
    *,
    index_params: str | None = None,
    train_size: int | None = None,
    seed: int = 0,
    niter: int = 10,
    chunk_rows: int = 65_536,
    keep_shards: bool = False,
) -> PoolIndex:
    """Build (or resume, or just open) the index of `store` in `directory`; see the module docstring.

    `store` is an `EmbeddingStore` whose shards are the units of work (a `PrecomputedPool.store()`: one per pool
    shard). Returns the searchable `PoolIndex`; `directory/build.json` holds the configuration and the seconds
    each phase took.
    """
    import faiss

    factory = factory or default_pool_factory(store.num_rows, store.dim)
    train_size = train_size or max(262_144, 40 * _nlist(factory))  # faiss asks for >= 39 rows a centroid
    os.makedirs(os.path.join(directory, "shards"), exist_ok=True)
    config_path = os.path.join(directory, CONFIG)
    config = _config(store, factory, train_size, seed, niter)
    record = {"config": config, "seconds": {}}
    if os.path.exists(config_path):
        with open(config_path) as file:
            record = json.load(file)
        if record["config"] != config:
            raise ValueError(
                f"{directory} holds an index built with {record['config']}, not {config}: "
                "use another folder or delete it."
            )
    populated = os.path.join(directory, POPULATED)
    if os.path.exists(populated):
        return open_pool_index(directory, store, index_params)

    def save_record():
        tmp = f"{config_path}.tmp-{os.getpid()}"
        with open(tmp, "w") as file:
            json.dump(record, file, indent=2)
        os.replace(tmp, config_path)

    trained_path = os.path.join(directory, TRAINED)
    if not os.path.exists(trained_path):
        started = time.perf_counter()
        trained, kmeans_seconds = train(store, factory, train_size, seed, niter)
        _write_index_atomic(trained, trained_path)
        record["seconds"]["train"] = round(time.perf_counter() - started, 2)
        record["seconds"]["train_kmeans"] = round(kmeans_seconds, 2)
        save_record()
        logger.info("Trained %s in %.1fs (k-means %.1fs).", factory, record["seconds"]["train"], kmeans_seconds)

    shard_files = [os.path.join(directory, "shards", f"shard_{s:05d}.index") for s in range(len(store.shards))]
    todo = [s for s, path in enumerate(shard_files) if not os.path.exists(path)]
    if len(todo) < len(shard_files):
        logger.info("Resuming: %d of %d shards already encoded.", len(shard_files) - len(todo), len(shard_files))
    started = time.perf_counter()
    assigner = exact_assigner(faiss.read_index(trained_path)) if todo else None
    for s in tqdm(todo, desc="Encoding pool shards", unit="shard"):
        index = faiss.read_index(trained_path)
        shard, first = store.shards[s], int(store.offsets[s])
        for start in range(0, len(shard), chunk_rows):
            block = np.ascontiguousarray(shard[start : start + chunk_rows], dtype=np.float32)
            add_rows(index, block, np.arange(first + start, first + start + len(block), dtype=np.int64), assigner)
        _write_index_atomic(index, shard_files[s])
        del index
    if todo:
        record["seconds"]["add"] = round(record["seconds"].get("add", 0) + time.perf_counter() - started, 2)
        save_record()

    started = time.perf_counter()
    _write_index_atomic(_merge(trained_path, shard_files, store), populated)
    record["seconds"]["merge"] = round(time.perf_counter() - started, 2)
    save_record()
    if not keep_shards:
        for path in shard_files:
            os.remove(path)
    return open_pool_index(directory, store, index_params)


def exact_assigner(index):
    """A flat index of the centroids of `index` (any index with an IVF in it), to assign rows when adding them.

    One matrix product a chunk against every centroid is exact and, at 65,536 centroids on one thread, encodes 1,431
    rows/s where the IVF quantiser's assignment alone runs at 1,119 (docs/results/retrieval_scale.md).
    """
    import faiss

    ivf = faiss.extract_index_ivf(index)
    flat = faiss.IndexFlat(ivf.d, ivf.metric_type)
    flat.add(faiss.downcast_index(ivf.quantizer).reconstruct_n(0, ivf.nlist))
    return flat


def add_rows(index, rows: np.ndarray, ids: np.ndarray, assigner=None) -> None:
    """Add float32 `rows` with `ids`; with `assigner` (from `exact_assigner`), each goes to the list of its exact
    nearest centroid: the assigner stands in for the quantiser while adding (same centroids, same list numbers;
    faiss's `add_preassigned` does not pack fast-scan codes)."""
    import faiss

    if assigner is None:
        index.add_with_ids(rows, ids)
        return
    ivf = faiss.extract_index_ivf(index)
    quantizer = ivf.quantizer
    ivf.quantizer = assigner
    try:
        index.add_with_ids(rows, ids)
    finally:
        ivf.quantizer = quantizer


def _merge(trained_path: str, shard_files: list[str], store: EmbeddingStore):
    """The trained index holding every shard's codes (their ids are pool rows already)."""
    import faiss

    index = faiss.read_index(trained_path)
    assigner = None
    for path in tqdm(shard_files, desc="Merging shards", unit="shard"):
        shard = faiss.read_index(path)
        assigner = _sidestep_block_overflow(index, shard, store, assigner)
        index.merge_from(shard, 0)
    return index


def _sidestep_block_overflow(index, shard, store: EmbeddingStore, assigner):
    """Move around a faiss 1.15 bug in merging fast-scan lists: `BlockInvertedLists::add_entries`, appending to a
    list whose length is a positive multiple of its block's byte size (4,096 entries for 128-byte codes), copies the
    whole list's block count past the list's end (a heap overflow, seen as `malloc(): corrupted top size` merging
    the 8M benchmark pool). Such lists take the shard's rows by encoding them again from the pool (`add_with_ids`
    packs codes itself) and are emptied in the shard before `merge_from`. Returns the assigner, built on first use."""
    import faiss

    target: Any = faiss.extract_index_ivf(index)
    lists: Any = faiss.downcast_InvertedLists(target.invlists)
    if not isinstance(lists, faiss.BlockInvertedLists):  # type: ignore[attr-defined]  # missing from the stubs
        return assigner
    shard_ivf: Any = faiss.extract_index_ivf(shard)
    source = shard_ivf.invlists
    for list_no in range(target.nlist):
        size, incoming = lists.list_size(list_no), source.list_size(list_no)
        if size == 0 or incoming == 0 or size % lists.block_size != 0:
            continue
        ids = faiss.rev_swig_ptr(source.get_ids(list_no), incoming).copy()
        assigner = assigner or exact_assigner(index)
        add_rows(index, np.ascontiguousarray(store.gather(ids), dtype=np.float32), ids, assigner)
        source.resize(list_no, 0)
        shard_ivf.ntotal -= incoming  # merge_from adds the shard's count to the index's
        if not isinstance(faiss.downcast_index(shard), faiss.IndexIVF):
            shard.ntotal -= incoming
    return assigner


def open_pool_index(directory: str, store: EmbeddingStore, index_params: str | None = None) -> PoolIndex:
    """The populated index of `directory`, loaded into RAM (the folder may have been moved)."""
    import faiss

    index = faiss.read_index(os.path.join(directory, POPULATED))
    if index.ntotal != store.num_rows:
        raise ValueError(f"{directory}: the index holds {index.ntotal} rows, the pool {store.num_rows}.")
    with open(os.path.join(directory, CONFIG)) as file:
        factory = json.load(file)["config"]["factory"]
    return PoolIndex(index, store, _pool_search_params(factory, index_params), directory, factory)


def pool_index(
    pool, kind: str, cache_dir: str, factory: str | None = None, index_params: str | None = None, seed: int = 0
) -> PoolIndex:
    """The index of a `PrecomputedPool`'s `kind` embeddings, built once under `cache_dir/pool-index/` and reused."""
    import hashlib

    store = pool.store(kind)
    factory = factory or default_pool_factory(store.num_rows, store.dim)
    digest = hashlib.sha256(json.dumps([pool.path, kind, pool.rows.tolist(), store.dim, factory, seed]).encode())
    directory = os.path.join(cache_dir, "pool-index", f"{kind}-{digest.hexdigest()[:16]}")
    logger.info("Pool index %s (%s) in %s.", factory, kind, directory)
    return build_pool_index(store, directory, factory, index_params=index_params, seed=seed)
