"""An IVF-PQ index over a precomputed pool, built without the pool in memory, its lists on disk.

Building, in a folder of its own (each step resumable, each file written under a temporary name and renamed):

1. `trained.index`: the coarse quantiser (k-means centroids) and the PQ codebooks, trained on a random sample.
2. `shards/shard_00012.index`: pool shard 12's rows, encoded into a copy of the trained index (ids = pool rows).
   A finished shard is never re-encoded: an interrupted build resumes at the first missing one.
3. `lists.ivfdata` + `populated.index`: the shards' inverted lists merged into one memory-mapped file
   (`faiss.contrib.ondisk.merge_ondisk`, `OnDiskInvertedLists`); the shard files are then deleted.

Only one pool shard's float32 chunk (65,536 rows) and one shard's codes are in memory while building. Searching
maps `lists.ivfdata`: resident memory is the centroids plus the list pages the queries touch.

Codes: `PQ128` (128 bytes per vector, 8 bits per sub-quantiser) plus an 8-byte id per vector in the lists: 136
bytes a vector. PQ codes alone lose much of the order between close neighbours, so `search` re-ranks a shortlist
of `k_factor_rf * k` candidates with the pool's own float16 embeddings (read from the memory-mapped `.npy`
shards, which are on disk anyway: they cost no index bytes, one random 1-2 KB read per candidate).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time

import numpy as np
from tqdm.auto import tqdm

from anchorclip.anchors.pool.store import EmbeddingStore

logger = logging.getLogger(__name__)

TRAINED, POPULATED, LISTS, CONFIG = "trained.index", "populated.index", "lists.ivfdata", "build.json"
DEFAULT_PARAMS = {"nprobe": "16", "k_factor_rf": "10"}


def default_pool_factory(num_rows: int, dim: int) -> str:
    """`IVF<nlist>,PQ128`: nlist the power of two nearest 4·√n; 128 8-bit codes = 128 bytes a vector.

    The coarse quantiser is exact (a scan of the centroids). An HNSW graph over them (`IVF<n>_HNSW32`) assigns
    faster, but on clustered embeddings it funnels vectors into a few lists: on the 1M benchmark pool it agreed
    with exact assignment for 37% of vectors, put 22% of the pool in one list and left 1,161 of 4,096 lists empty
    (docs/results/retrieval.md), which made queries slow and recall low. Where d is not a multiple of 128 (small
    test models), d/4 sub-quantisers or fewer.
    """
    nlist = max(16, 2 ** round(math.log2(4 * math.sqrt(num_rows))))
    nlist = min(nlist, max(16, 2 ** int(math.log2(max(1, num_rows // 39)))))  # >= 39 training rows per list
    m = 128 if dim % 128 == 0 else next(m for m in range(max(1, min(128, dim // 4)), 0, -1) if dim % m == 0)
    return f"IVF{nlist},PQ{m}"


def _nlist(factory: str) -> int:
    match = re.search(r"IVF(\d+)", factory)
    if match is None:
        raise ValueError(f"A pool index must be an IVF index (its lists go on disk); got {factory!r}.")
    return int(match.group(1))


def _pool_search_params(factory: str, index_params: str | None) -> dict[str, str]:
    """Defaults (nprobe = 16, k_factor_rf = 10: recall@10 0.95 on the 1M benchmark pool), `index_params` replacing
    them key by key."""
    _nlist(factory)
    params = dict(DEFAULT_PARAMS)
    for item in filter(None, (index_params or "").split(",")):
        key, _, value = item.partition("=")
        params[key.strip()] = value.strip()
    return params


class PoolIndex:
    """A populated on-disk IVF index plus re-ranking with the pool's embeddings; `search` like a faiss index."""

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
        """`(scores, ids)`, each `(num_queries, k)`; scores are exact cosines when re-ranked."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(k, self.ntotal)
        shortlist = min(self.ntotal, k * max(1, self.k_factor))
        scores, ids = self.index.search(queries, shortlist)
        if self.k_factor <= 1:
            return scores[:, :k], ids[:, :k]
        out_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        out_ids = np.full((len(queries), k), -1, dtype=np.int64)
        for start in range(0, len(queries), block):
            found = ids[start : start + block]
            rows = np.unique(found[found >= 0])  # sorted: the reads go through each shard in order
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
    """An empty IVF index of `factory`, trained on a random sample of at most `train_size` rows."""
    import faiss

    index = faiss.index_factory(store.dim, factory, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    ivf.cp.niter = niter  # type: ignore[attr-defined]  # faiss's stubs type downcast_index as a plain Index
    if isinstance(ivf, faiss.IndexIVFPQ):
        ivf.pq.cp.niter = niter
        # Its annealing would take longer than the codebooks themselves. (The attribute is missing from faiss's stubs.)
        ivf.do_polysemous_training = False  # type: ignore[attr-defined]
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(store.num_rows, size=min(train_size, store.num_rows), replace=False))
    index.train(store.gather(sample))
    return index


def build_pool_index(
    store: EmbeddingStore,
    directory: str,
    factory: str | None = None,
    *,
    index_params: str | None = None,
    train_size: int = 262_144,
    seed: int = 0,
    niter: int = 10,
    chunk_rows: int = 65_536,
    keep_shards: bool = False,
) -> PoolIndex:
    """Build (or resume, or just open) the on-disk index of `store` in `directory`; see the module docstring.

    `store` is an `EmbeddingStore` whose shards are the units of work (a `PrecomputedPool.store()`: one per pool
    shard). Returns the searchable `PoolIndex`; `directory/build.json` holds the configuration and the seconds
    each phase took.
    """
    import faiss
    from faiss.contrib.ondisk import merge_ondisk

    factory = factory or default_pool_factory(store.num_rows, store.dim)
    _nlist(factory)
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
        _write_index_atomic(train(store, factory, train_size, seed, niter), trained_path)
        record["seconds"]["train"] = round(time.perf_counter() - started, 2)
        save_record()
        logger.info("Trained %s in %.1fs.", factory, record["seconds"]["train"])

    shard_files = [os.path.join(directory, "shards", f"shard_{s:05d}.index") for s in range(len(store.shards))]
    todo = [s for s, path in enumerate(shard_files) if not os.path.exists(path)]
    if len(todo) < len(shard_files):
        logger.info("Resuming: %d of %d shards already encoded.", len(shard_files) - len(todo), len(shard_files))
    started = time.perf_counter()
    for s in tqdm(todo, desc="Encoding pool shards", unit="shard"):
        index = faiss.read_index(trained_path)
        shard, first = store.shards[s], int(store.offsets[s])
        for start in range(0, len(shard), chunk_rows):
            block = np.ascontiguousarray(shard[start : start + chunk_rows], dtype=np.float32)
            index.add_with_ids(block, np.arange(first + start, first + start + len(block), dtype=np.int64))
        _write_index_atomic(index, shard_files[s])
        del index
    if todo:
        record["seconds"]["add"] = round(record["seconds"].get("add", 0) + time.perf_counter() - started, 2)
        save_record()

    started = time.perf_counter()
    index = faiss.read_index(trained_path)
    merge_ondisk(index, shard_files, os.path.join(directory, LISTS))
    _write_index_atomic(index, populated)
    record["seconds"]["merge"] = round(time.perf_counter() - started, 2)
    save_record()
    del index
    if not keep_shards:
        for path in shard_files:
            os.remove(path)
    return open_pool_index(directory, store, index_params)


def open_pool_index(directory: str, store: EmbeddingStore, index_params: str | None = None) -> PoolIndex:
    """The populated index of `directory`, its lists memory-mapped (the folder may have been moved)."""
    import faiss

    index = faiss.read_index(os.path.join(directory, POPULATED), faiss.IO_FLAG_ONDISK_SAME_DIR)
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
