"""Indexing a precomputed pool at scale: the index of `anchorclip.anchors.laion.index`, measured, and the per-row
costs of the 400M-row configuration measured directly.

    python benchmarks/index_scale.py --rows 1000000 --k_factor 1 10 20 --recall_queries 300
    python benchmarks/index_scale.py --rows 8000000 --k_factor 1 10 20 --recall_queries 300
    python benchmarks/index_scale.py --rows 8000000 --coarse_model 65536 --train_size 2621440
    python benchmarks/index_scale.py --rows 100000 --no_write   # a quick dry run

The pool is written in LAION's layout under `--work_dir` (`img_emb/img_emb_0000.npy` float16 + metadata
parquet, `--shard_rows` rows a shard) and reused by later runs; shard s is the same whatever `--rows`, so the 8M pool
starts with the 1M pool. Its vectors are the clustered model of benchmarks/retrieval.py:
`normalize(0.5 m + c_j + g / sqrt(d))`, 5,000 Zipf-weighted unit centres `c_j` in a shared cone `m`, d = 512: each
query's true neighbours share its cluster and differ by noise only, which is where PQ codes lose order. Queries are
1,000 fresh draws from the same mixture. Exact top-10 comes from a chunked scan of the memory-mapped shards.

Measured: the build phases (k-means, the rest of training, add, merge) and the process's peak RSS while building;
bytes on disk per vector; resident memory added by loading the index and by running every query; recall@10 against
exact search, the batched ms/query over all threads and the median ms of 1,000 one-query calls on one thread, for a
sweep of nprobe and re-ranking shortlist. `--coarse_model NLIST` instead trains NLIST centroids (two-level k-means)
on `--train_size` rows of the pool and measures what a build and a query at that list count cost per row, which does
not depend on the pool's size: k-means seconds, rows encoded a second (1 thread and all), the coarse quantiser's
agreement with exact assignment, and the coarse step of one query. Results go to docs/results/retrieval_scale.json.
Every query here runs on a cached pool: the exact scan leaves the whole pool mapped in this process, and the kernel
does not drop mapped pages (`posix_fadvise(DONTNEED)` skips them). Re-ranking reads from a pool on disk are
measured by benchmarks/pool_reads.py.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

DIM, CLUSTERS = 512, 5000
DEFAULT_PARAMS_NPROBE = 32  # the coarse step returns this many lists, as a default search asks
RESULTS = os.path.join(os.path.dirname(__file__), "..", "docs", "results", "retrieval_scale.json")


def mixture(seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CLUSTERS, DIM), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    shared = rng.standard_normal(DIM).astype(np.float32)
    shared /= np.linalg.norm(shared)
    weights = 1.0 / np.arange(1, CLUSTERS + 1) ** 0.8
    return centres, shared, weights / weights.sum()


def draw(rng, n: int, centres, shared, weights) -> np.ndarray:
    cluster = rng.choice(len(centres), size=n, p=weights)
    block = 0.5 * shared + centres[cluster] + rng.standard_normal((n, DIM), dtype=np.float32) / DIM**0.5
    return block / np.linalg.norm(block, axis=1, keepdims=True)


def write_pool(path: str, rows: int, shard_rows: int) -> None:
    """LAION-layout shards, written once (a shard is renamed into place when complete)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    centres, shared, weights = mixture()
    for folder in ("img_emb", "metadata"):
        os.makedirs(os.path.join(path, folder), exist_ok=True)
    for shard, first in enumerate(range(0, rows, shard_rows)):
        n = min(shard_rows, rows - first)
        npy = os.path.join(path, "img_emb", f"img_emb_{shard:04d}.npy")
        meta = os.path.join(path, "metadata", f"metadata_{shard:04d}.parquet")
        if os.path.exists(npy) and os.path.exists(meta):
            continue
        rng = np.random.default_rng(1000 + shard)
        tmp = npy + ".tmp.npy"
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n, DIM))
        for start in range(0, n, 100_000):
            out[start : start + 100_000] = draw(rng, min(100_000, n - start), centres, shared, weights)
        out.flush()
        del out
        ids = np.arange(first, first + n)
        table = pa.table(
            {"url": [f"https://example.com/{i}.jpg" for i in ids], "caption": [f"synthetic image {i}" for i in ids]}
        )
        pq.write_table(table, meta + ".tmp")
        os.replace(meta + ".tmp", meta)
        os.replace(tmp, npy)
        print(f"wrote shard {shard} ({n} rows)", flush=True)


def rss_mib() -> float:
    with open("/proc/self/status") as file:
        for line in file:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def recall(approx: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(e)) for a, e in zip(approx, exact)]) / exact.shape[1])


def list_sizes(index) -> dict:
    import faiss

    ivf = faiss.extract_index_ivf(index)
    sizes = np.array([ivf.invlists.list_size(i) for i in range(ivf.nlist)])
    return {
        "nlist": int(ivf.nlist),
        "mean": round(float(sizes.mean()), 1),
        "max": int(sizes.max()),
        "empty": int((sizes == 0).sum()),
        "imbalance": round(float((sizes.astype(np.float64) ** 2).sum() * len(sizes) / sizes.sum() ** 2), 3),
    }


def single_ms(index, queries: np.ndarray, k: int) -> float:
    times = []
    for i in range(len(queries)):
        started = time.perf_counter()
        index.search(queries[i : i + 1], k)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def codes_scanned(index, queries: np.ndarray, k: int) -> float:
    """Codes compared a query, as faiss counts them (`indexIVF_stats.ndis`), one query at a time."""
    import faiss

    faiss.cvar.indexIVF_stats.reset()
    for i in range(len(queries)):
        index.search(queries[i : i + 1], k)
    return faiss.cvar.indexIVF_stats.ndis / len(queries)


def save(key: str, report: dict) -> None:
    results = {}
    if os.path.exists(RESULTS):
        with open(RESULTS) as file:
            results = json.load(file)
    results[key] = report
    with open(RESULTS, "w") as file:
        json.dump(results, file, indent=2)
        file.write("\n")


def machine() -> str:
    import faiss

    return (
        f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}, Python {platform.python_version()}, "
        f"faiss {faiss.__version__}"
    )


def coarse_model(args, store, argv) -> dict:
    """What one pool row costs to encode, and one query's coarse step, at `args.coarse_model` lists."""
    import faiss

    from anchorclip.anchors.laion.index import DEFAULT_PARAMS, add_rows, default_pool_factory, exact_assigner, train

    nlist, threads = args.coarse_model, os.cpu_count()
    factory = args.factory or default_pool_factory(400_000_000, store.dim).replace(
        "IVF65536(IVF256", f"IVF{nlist}(IVF{round(nlist**0.5)}"
    )
    started = time.perf_counter()
    train_size = args.train_size or 40 * nlist
    index, kmeans_s = train(store, factory, train_size, niter=args.niter)
    train_s = time.perf_counter() - started
    print(f"trained {factory} on {train_size} rows: k-means {kmeans_s:.0f}s, all {train_s:.0f}s", flush=True)
    ivf = faiss.extract_index_ivf(index)
    quantizer = faiss.downcast_index(ivf.quantizer)
    centroids = quantizer.reconstruct_n(0, nlist)
    rows = np.ascontiguousarray(store.shards[-1][-args.encode_rows :], dtype=np.float32)  # the pool's last rows
    exact = faiss.IndexFlatL2(store.dim)
    exact.add(centroids)
    nearest = exact.search(rows[:10_000], 1)[1]
    agreement = float(np.mean(nearest == quantizer.search(rows[:10_000], 1)[1]))
    wider = {}
    if isinstance(quantizer, faiss.IndexHNSW):  # a wider graph walk; the index encodes with faiss's default, 16
        for breadth in (64, 256):
            quantizer.hnsw.efSearch = breadth
            wider[breadth] = round(float(np.mean(nearest == quantizer.search(rows[:10_000], 1)[1])), 4)
        quantizer.hnsw.efSearch = 16
        print(f"HNSW agreement at efSearch 16: {agreement:.4f}, wider: {wider}", flush=True)
    encode = {}
    assigner = exact_assigner(index)
    for count in (1, threads):
        faiss.omp_set_num_threads(count)
        fresh = faiss.clone_index(index)
        started = time.perf_counter()
        add_rows(fresh, rows, np.arange(len(rows), dtype=np.int64), assigner)  # as build_pool_index adds
        encode[f"rows_per_second_{count}_threads"] = round(len(rows) / (time.perf_counter() - started), 1)
        started = time.perf_counter()
        quantizer.assign(rows[:5_000], 1)  # the same rows through the IVF quantiser instead, for comparison
        seconds = time.perf_counter() - started
        encode[f"quantizer_assign_rows_per_second_{count}_threads"] = round(5_000 / seconds, 1)
        print(f"encoded {len(rows)} rows on {count} threads: {encode}", flush=True)
    faiss.omp_set_num_threads(1)
    centres, shared, weights = mixture()
    queries = draw(np.random.default_rng(7), 1000, centres, shared, weights)
    coarse_ms = single_ms(quantizer, queries, DEFAULT_PARAMS_NPROBE)
    coarse_sweep = []
    if isinstance(quantizer, faiss.IndexIVF):  # the coarse step's cost and accuracy against its breadth
        exact_lists = exact.search(queries, DEFAULT_PARAMS_NPROBE)[1]
        for breadth in (1, 2, 4, 8):
            quantizer.nprobe = breadth
            lists = quantizer.search(queries, DEFAULT_PARAMS_NPROBE)[1]
            coarse_sweep.append(
                {
                    "quantizer_nprobe": breadth,
                    "ms_median_1_thread": round(single_ms(quantizer, queries, DEFAULT_PARAMS_NPROBE), 3),
                    f"recall_of_the_{DEFAULT_PARAMS_NPROBE}_nearest_lists": round(recall(lists, exact_lists), 4),
                }
            )
            print(coarse_sweep[-1], flush=True)
        quantizer.nprobe = int(DEFAULT_PARAMS["quantizer_nprobe"])
        sizes = np.array([quantizer.invlists.list_size(i) for i in range(quantizer.nlist)])
        coarse_sweep.append({"top_list_sizes": {"mean": float(sizes.mean()), "max": int(sizes.max())}})
    faiss.omp_set_num_threads(threads)
    report = {
        "nlist": nlist,
        "factory": factory,
        "train_size": train_size,
        "kmeans_iterations": args.niter,
        "kmeans_seconds": round(kmeans_s, 1),
        "train_seconds": round(train_s, 1),
        "quantizer_nprobe": int(quantizer.nprobe) if isinstance(quantizer, faiss.IndexIVF) else None,
        "assignment_agreement_with_exact": round(agreement, 4),
        "hnsw_agreement_at_efSearch": wider or None,
        "encode_rows": len(rows),
        **encode,
        f"coarse_step_ms_median_1_thread_nprobe_{DEFAULT_PARAMS_NPROBE}": round(coarse_ms, 3),
        "coarse_step_by_quantizer_nprobe": coarse_sweep or None,
        "machine": machine(),
        "date": datetime.date.today().isoformat(),
        "command": "python benchmarks/index_scale.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    if not args.no_write:
        save(f"coarse-{factory}", report)
    print(json.dumps(report, indent=1))
    return report


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--shard_rows", type=int, default=1_000_000)
    parser.add_argument("--work_dir", default="/tmp/anchorclip_index_scale")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--recall_queries", type=int, default=None, help="recall on the first N (default: all)")
    parser.add_argument("--train_size", type=int, default=None, help="default: the library's, 40 rows a list")
    parser.add_argument("--niter", type=int, default=10)
    parser.add_argument("--factory", default=None, help="default: default_pool_factory(rows, 512)")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--k_factor", type=int, nargs="+", default=[1, 10, 20])
    parser.add_argument("--coarse_model", type=int, default=None, metavar="NLIST")
    parser.add_argument("--encode_rows", type=int, default=200_000, help="--coarse_model: rows encoded, timed")
    parser.add_argument("--no_write", action="store_true")
    parser.add_argument("--key", help="the json entry to write (default: the rows, and the factory if not default)")
    args = parser.parse_args(argv)

    import faiss

    from anchorclip.anchors.laion.index import (
        DEFAULT_PARAMS,
        PoolIndex,
        build_pool_index,
        default_pool_factory,
        open_pool_index,
    )
    from anchorclip.anchors.laion.precomputed import PrecomputedPool
    from anchorclip.anchors.pool.faiss_index import exact_topk

    threads = os.cpu_count()
    pool_dir = os.path.join(args.work_dir, f"pool-{args.rows}")
    started = time.perf_counter()
    write_pool(pool_dir, args.rows, args.shard_rows)
    print(f"pool ready in {time.perf_counter() - started:.0f}s", flush=True)
    pool = PrecomputedPool.open(pool_dir)
    store = pool.store("image")
    if args.coarse_model:
        return coarse_model(args, store, argv)
    factory = args.factory or default_pool_factory(pool.num_rows, pool.dim)
    index_dir = os.path.join(args.work_dir, f"index-{args.rows}-{factory.replace(',', '_')}")

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    build_pool_index(store, index_dir, factory, train_size=args.train_size, niter=args.niter)
    build_wall = time.perf_counter() - started
    peak_build = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with open(os.path.join(index_dir, "build.json")) as file:
        record = json.load(file)
    phases = record["seconds"]
    disk = os.path.getsize(os.path.join(index_dir, "populated.index"))
    print(f"built {factory} in {build_wall:.0f}s {phases}; {disk / pool.num_rows:.1f} B/vector", flush=True)

    centres, shared, weights = mixture()
    queries = draw(np.random.default_rng(7), args.queries, centres, shared, weights)
    started = time.perf_counter()
    _, exact = exact_topk(store, queries[: args.recall_queries or len(queries)], 10)
    exact_s = time.perf_counter() - started
    print(f"exact top-10 of {len(queries)} queries in {exact_s:.0f}s", flush=True)

    rss_closed = rss_mib()
    index = open_pool_index(index_dir, store)
    rss_open = rss_mib()
    rows = []
    for k_factor in args.k_factor:
        for nprobe in args.nprobe:
            params = {**index.params, "nprobe": str(nprobe), "k_factor_rf": str(k_factor)}
            index = PoolIndex(index.index, store, params, index.path, index.factory)
            faiss.omp_set_num_threads(1)
            row_single = single_ms(index, queries, 10)
            scanned = codes_scanned(index, queries[:100], 10)
            faiss.omp_set_num_threads(threads)
            started = time.perf_counter()
            _, ids = index.search(queries, 10)
            batch_ms = (time.perf_counter() - started) * 1000 / len(queries)
            row = {
                "nprobe": nprobe,
                "k_factor_rf": k_factor,
                "recall@10": round(recall(ids[: len(exact)], exact), 4),
                f"batch_ms_per_query_{threads}_threads": round(batch_ms, 3),
                "single_ms_median_1_thread": round(row_single, 3),
                "codes_scanned_per_query": round(scanned),
            }
            rows.append(row)
            print(row, flush=True)
    default = {"nprobe": int(DEFAULT_PARAMS["nprobe"]), "k_factor_rf": int(DEFAULT_PARAMS["k_factor_rf"])}
    chosen = next((row for row in rows if all(row[key] == value for key, value in default.items())), None)
    rss_searched = rss_mib()
    report = {
        "rows": pool.num_rows,
        "dim": pool.dim,
        "shards": len(pool.shard_numbers),
        "factory": factory,
        "train_size": min(record["config"]["train_size"], pool.num_rows),
        "kmeans_iterations": args.niter,
        "build_seconds": {**phases, "total_wall": round(build_wall, 1)},
        "build_peak_rss_mib": round(peak_build, 1),
        "rss_before_build_mib": round(rss_before, 1),
        "index_bytes_on_disk": disk,
        "bytes_per_vector": round(disk / pool.num_rows, 2),
        "pool_embedding_bytes": int(pool.num_rows * pool.dim * 2),
        "search_rss_mib": {
            "before_open": round(rss_closed, 1),
            "after_open": round(rss_open, 1),
            "after_all_queries": round(rss_searched, 1),
        },
        "add_rows_per_second": round(pool.num_rows / phases["add"], 1) if phases.get("add") else None,
        "exact_scan_seconds": round(exact_s, 1),
        "list_sizes": list_sizes(index.index),
        "recall_queries": len(exact),
        "queries": len(queries),
        "sweep": rows,
        "default_params": chosen,
        "machine": machine(),
        "date": datetime.date.today().isoformat(),
        "command": "python benchmarks/index_scale.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    if not args.no_write:
        default = factory == default_pool_factory(pool.num_rows, pool.dim)
        save(args.key or (str(pool.num_rows) if default else f"{pool.num_rows}-{factory}"), report)
    print(json.dumps({key: value for key, value in report.items() if key != "sweep"}, indent=1))
    return report


if __name__ == "__main__":
    main()
