"""Re-ranking reads from a pool on disk: a shortlist's rows read one after another vs announced first
(`EmbeddingStore.prefetch`), with the pool's pages dropped from the page cache before every shortlist.

    python benchmarks/pool_reads.py --pool_embeddings outputs/index_scale/pool-8000000

A 400M-row pool (410 GB of float16) does not fit in RAM, so every query's re-ranking reads its `k_factor_rf * k`
shortlist rows (200 at the defaults) from disk, and a real pool's neighbours lie anywhere in it. This measures that
term of a query on the pool written by benchmarks/index_scale.py, with random rows: `gather` alone (each row a page
fault, one after another), `prefetch` then `gather` (one round of concurrent reads), and, for batched queries,
`--concurrent` shortlists prefetched together (the device's throughput: ms of reading per query when many queries
share it). With `--index` (the pool's populated index folder, e.g. index_scale.py's) it also times whole queries
at the default search settings, one at a time on one thread, with and without the prefetch. Last, what the
prefetch costs when the rows are already cached (a pool held in RAM). No other process
may hold the pool mapped meanwhile: the kernel does not drop mapped pages, and the reads would be of a cached pool.
Results go to docs/results/pool_reads.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from anchorclip.anchors.laion.precomputed import PrecomputedPool  # noqa: E402


def drop_page_cache(store) -> None:
    for shard in store.shards:
        descriptor = os.open(shard.filename, os.O_RDONLY)
        try:
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(descriptor)


def time_reads(pool, rng, rows: int, batches: int, queries: int, prefetch: bool) -> float:
    """Median ms per query over `batches` rounds of `queries` shortlists of `rows` random rows each. Each round maps
    the pool afresh: pages an earlier round touched stay mapped while its arrays live, and mapped pages stay cached."""
    times = []
    for _ in range(batches):
        store = pool.store("image")
        shortlists = [np.unique(rng.integers(0, store.num_rows, rows)) for _ in range(queries)]
        drop_page_cache(store)
        start = time.perf_counter()
        if prefetch:
            for shortlist in shortlists:
                store.prefetch(shortlist)
        for shortlist in shortlists:
            store.gather(shortlist)
        times.append((time.perf_counter() - start) * 1000 / queries)
        del store
    return statistics.median(times)


def read_ahead_kb(path: str) -> int | None:
    """The kernel's readahead window of the block device holding `path`: what one page fault also reads."""
    device = os.stat(path).st_dev
    folder = f"/sys/dev/block/{os.major(device)}:{os.minor(device)}"
    for candidate in (f"{folder}/queue/read_ahead_kb", f"{folder}/../queue/read_ahead_kb"):
        if os.path.exists(candidate):
            with open(candidate) as handle:
                return int(handle.read())
    return None


def cached_prefetch_ms(pool, rng, rows: int, batches: int) -> float:
    """Median ms of `prefetch` alone on a shortlist already in the page cache: what it costs a pool held in RAM."""
    store = pool.store("image")
    shortlists = [np.unique(rng.integers(0, store.num_rows, rows)) for _ in range(batches)]
    for shortlist in shortlists:
        store.gather(shortlist)
    times = []
    for shortlist in shortlists:
        start = time.perf_counter()
        store.prefetch(shortlist)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def end_to_end_ms(pool, directory: str, rng, queries: int) -> dict:
    """One query at a time on one thread through `PoolIndex.search` (defaults), the pool's pages dropped before
    each: median ms, with and without the shortlist prefetch. Queries are pool rows plus noise, renormalised."""
    import faiss

    from anchorclip.anchors.laion import index as laion_index

    faiss.omp_set_num_threads(1)
    loaded = laion_index.open_pool_index(directory, pool.store("image"))
    store = pool.store("image")
    rows = rng.integers(0, store.num_rows, queries)
    points = store.gather(np.sort(rows)) + rng.normal(0, 0.02, (queries, store.dim)).astype(np.float32)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    del store, loaded.store
    result = {}
    for prefetch in (True, False):
        times = []
        for point in points:
            store = pool.store("image")  # mapped afresh for each query (see time_reads)
            if not prefetch:  # the search path as it was without prefetch: `gather` alone
                store.prefetch = lambda rows: None  # type: ignore[method-assign]
            searcher = laion_index.PoolIndex(loaded.index, store, loaded.params, loaded.path, loaded.factory)
            drop_page_cache(store)
            start = time.perf_counter()
            searcher.search(point[None], 10)
            times.append((time.perf_counter() - start) * 1000)
            del searcher, store
        result["prefetch" if prefetch else "page_faults"] = round(statistics.median(times), 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool_embeddings", required=True, help="a LAION-layout pool (benchmarks/index_scale.py)")
    parser.add_argument("--rows", type=int, default=200, help="shortlist rows per query (k_factor_rf x k)")
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--concurrent", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--index", help="the pool's populated index folder: also time whole queries on one thread")
    parser.add_argument("--queries", type=int, default=30, help="whole queries timed (--index)")
    parser.add_argument("--output", default="docs/results/pool_reads.json")
    args = parser.parse_args()

    pool = PrecomputedPool.open(args.pool_embeddings)
    store = pool.store("image")  # for its files only: every measurement maps the pool afresh
    pool_bytes = sum(os.path.getsize(shard.filename) for shard in store.shards)
    rng = np.random.default_rng(0)
    rows = []
    for queries in args.concurrent:
        for prefetch in (False, True) if queries == 1 else (True,):
            ms = time_reads(pool, rng, args.rows, args.batches, queries, prefetch)
            rows.append({"queries_together": queries, "prefetch": prefetch, "ms_per_query_median": round(ms, 3)})
            print(rows[-1], flush=True)
    cached = cached_prefetch_ms(pool, rng, args.rows, args.batches)
    print(f"prefetch of a cached shortlist: {cached:.3f} ms", flush=True)
    whole = end_to_end_ms(pool, args.index, rng, args.queries) if args.index else None
    if whole:
        print("one query, one thread, pool out of the page cache:", whole, flush=True)
    report = {
        "command": "python benchmarks/pool_reads.py " + " ".join(sys.argv[1:]),
        "date": datetime.date.today().isoformat(),
        "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}",
        "pool_rows": store.num_rows,
        "pool_gib": round(pool_bytes / 2**30, 2),
        "shortlist_rows": args.rows,
        "read_ahead_kb": read_ahead_kb(store.shards[0].filename),
        "batches": args.batches,
        "results": rows,
        "prefetch_ms_median_cached_shortlist": round(cached, 3),
        "one_query_ms_median_1_thread": whole,
        "index": args.index,
    }
    with open(args.output, "w") as handle:
        json.dump(report, handle, indent=1)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
