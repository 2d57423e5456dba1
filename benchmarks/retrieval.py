"""Benchmark of `anchorclip retrieve`'s search and pool embedding (not a test).

    python benchmarks/retrieval.py                    # 1M vectors, ~3 min on 2 idle cores; writes docs/results/
    python benchmarks/retrieval.py --num_vectors 100000 --no_write   # a quick dry run

**Search.** 1M synthetic 512-d L2-normalised vectors shaped like CLIP image embeddings rather than uniform
noise (on which every neighbour is equally far and recall means nothing):
`x = normalize(0.5 * m + c_j + 1.0 * g / sqrt(d))`, with `m` one shared direction (CLIP embeddings sit in a
narrow cone), `c_j` one of 5,000 random unit cluster centres drawn with Zipf-like frequencies (weight
`1 / rank**0.8`: some concepts are common, most rare), and `g` standard normal noise. Queries are 1,000 fresh
draws from the same mixture. Each query's true top-10 lies in its own cluster, and ranking inside a cluster
rests on the noise term: exactly where coarse quantisation (IVF) is easy and fine codes (PQ) lose recall.
Recall@10 = mean over queries of |approximate top-10 ∩ exact top-10| / 10, exact = `IndexFlatIP`.

Indexes: exact `Flat`; IVF with float (`Flat`), 8-bit scalar (`SQ8`) or 8-bit PQ (`PQ64`) codes; and IVF with
4-bit *fast-scan* PQ codes (`PQ256x4fs`, 128 bytes, scanned 16 codes per SIMD register) whose shortlist of
`k_factor * k` candidates is re-ranked with better codes: the float vectors (`RFlat`, 2 KB) or float16 ones
(`Refine(SQfp16)`, 1 KB). Fast scan makes the list scan ~8x cheaper than SQ8; the re-ranking recovers the
within-cluster order that 4-bit codes cannot see.

Latency: "batch" is the wall time of one `search` call over all 1,000 queries divided by 1,000 (how
`anchorclip retrieve` searches); "single" is the median of 200 one-query calls. All IVF variants share one
coarse quantiser (4,096 lists, k-means on a 131k sample) and one assignment of the vectors to lists; SQ8/PQ
codecs are trained on 65k vectors. So their differences are their codes alone.

**Embedding.** Pool-embedding throughput of `embed_pool` (decode PNG bytes, CLIP preprocessing, forward,
shard write) with a tiny random CLIP (the miniature-world size: patch 8, width 128, 4 layers, 32 px).
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

DIM = 512


def clustered_vectors(rng, n: int, centres: np.ndarray, weights: np.ndarray, shared: np.ndarray) -> np.ndarray:
    out = np.empty((n, DIM), dtype=np.float32)
    for start in range(0, n, 100_000):  # in chunks: 1M x 512 float64 noise would be 4 GB
        stop = min(start + 100_000, n)
        cluster = rng.choice(len(centres), size=stop - start, p=weights)
        block = 0.5 * shared + centres[cluster] + rng.standard_normal((stop - start, DIM), dtype=np.float32) / DIM**0.5
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def recall_at(approx: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(e)) for a, e in zip(approx, exact)]) / exact.shape[1])


def time_search(index, queries: np.ndarray, k: int, singles: int) -> tuple[np.ndarray, float, float]:
    started = time.perf_counter()
    _, ids = index.search(queries, k)
    batch_ms = (time.perf_counter() - started) * 1000 / len(queries)
    single = []
    for i in range(min(singles, len(queries))):
        started = time.perf_counter()
        index.search(queries[i : i + 1], k)
        single.append((time.perf_counter() - started) * 1000)
    return ids, batch_ms, statistics.median(single)


def bench_search(args) -> dict:
    import faiss
    from faiss.contrib.ivf_tools import add_preassigned

    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((args.clusters, DIM), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    shared = rng.standard_normal(DIM).astype(np.float32)
    shared /= np.linalg.norm(shared)
    weights = 1.0 / np.arange(1, args.clusters + 1) ** 0.8
    weights /= weights.sum()
    started = time.perf_counter()
    data = clustered_vectors(rng, args.num_vectors, centres, weights, shared)
    queries = clustered_vectors(rng, args.num_queries, centres, weights, shared)
    print(f"generated {args.num_vectors} x {DIM} in {time.perf_counter() - started:.1f}s", flush=True)
    k, rows = 10, []

    flat = faiss.IndexFlatIP(DIM)
    flat.add(data)
    exact, batch_ms, single_ms = time_search(flat, queries, k, singles=10)  # slow: a few single queries suffice
    rows.append(
        {
            "index": "Flat (exact)",
            "nprobe": None,
            "recall@10": 1.0,
            "batch_ms_per_query": batch_ms,
            "single_ms_median": single_ms,
            "build_s": 0.0,
            "bytes_per_vector": DIM * 4,
        }
    )
    print(rows[-1], flush=True)

    # One coarse quantiser for every IVF variant.
    started = time.perf_counter()
    sample = data[rng.choice(len(data), size=min(args.train_size, len(data)), replace=False)]
    quantizer = faiss.IndexFlatIP(DIM)
    ivf_flat = faiss.IndexIVFFlat(quantizer, DIM, args.nlist, faiss.METRIC_INNER_PRODUCT)
    ivf_flat.cp.niter = 10
    ivf_flat.train(sample)
    train_s = time.perf_counter() - started
    print(f"trained IVF{args.nlist} on {len(sample)} in {train_s:.1f}s", flush=True)

    # Assign every vector to its list once (the costly part of `add`), then fill each variant from it.
    started = time.perf_counter()
    assignment = np.concatenate(
        [quantizer.search(data[i : i + 100_000], 1)[1].ravel() for i in range(0, len(data), 100_000)]
    )
    assign_s = time.perf_counter() - started
    print(f"assigned {len(data)} vectors in {assign_s:.1f}s", flush=True)

    variants = {
        f"IVF{args.nlist},Flat": lambda: faiss.IndexIVFFlat(quantizer, DIM, args.nlist, faiss.METRIC_INNER_PRODUCT),
        f"IVF{args.nlist},SQ8": lambda: faiss.IndexIVFScalarQuantizer(
            quantizer, DIM, args.nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
        ),
        f"IVF{args.nlist},PQ64": lambda: faiss.IndexIVFPQ(
            quantizer, DIM, args.nlist, 64, 8, faiss.METRIC_INNER_PRODUCT
        ),
    }
    for name, make in variants.items():
        index = make()
        started = time.perf_counter()
        index.train(sample[: args.codec_train_size])  # the codec only: the shared quantiser is already trained
        for start in range(0, len(data), 200_000):
            add_preassigned(index, data[start : start + 200_000], assignment[start : start + 200_000])
        build_s = time.perf_counter() - started + train_s + assign_s
        searchable = [(name, index)]
        if name.endswith("PQ64"):  # PQ codes re-ranked with the exact vectors held by the Flat index
            for k_factor in (8, 32):
                refine = faiss.IndexRefine(index, flat)
                refine.k_factor = k_factor
                searchable.append((f"{name},RFlat(k_factor={k_factor})", refine))
        code_bytes = {"Flat": DIM * 4, "SQ8": DIM, "PQ64": 64}[name.split(",")[1]]
        for label, searched in searchable:
            for nprobe in args.nprobe:
                faiss.ParameterSpace().set_index_parameter(searched, "nprobe", nprobe)
                ids, batch_ms, single_ms = time_search(searched, queries, k, args.singles)
                rows.append(
                    {
                        "index": label,
                        "nprobe": nprobe,
                        "recall@10": recall_at(ids, exact),
                        "batch_ms_per_query": batch_ms,
                        "single_ms_median": single_ms,
                        "build_s": build_s,
                        "bytes_per_vector": code_bytes + (DIM * 4 if "RFlat" in label else 0),
                    }
                )
                print(rows[-1], flush=True)
        del searchable, index

    # 4-bit fast-scan PQ, re-ranked. FastScan packs codes per list on `add`, so it is filled with `add`
    # (re-assigning with the same shared quantiser) rather than from the pre-computed assignment.
    name = f"IVF{args.nlist},PQ{DIM // 2}x4fs"
    started = time.perf_counter()
    fast_scan = faiss.IndexIVFPQFastScan(quantizer, DIM, args.nlist, DIM // 2, 4, faiss.METRIC_INNER_PRODUCT)
    fast_scan.train(sample[: args.codec_train_size])
    fast_scan.add(data)
    fp16 = faiss.IndexScalarQuantizer(DIM, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    fp16.add(data)
    build_s = time.perf_counter() - started + train_s
    for refine_name, refine_codes, extra_bytes in (("RFlat", flat, DIM * 4), ("Refine(SQfp16)", fp16, DIM * 2)):
        for k_factor in (16, 32):
            refine = faiss.IndexRefine(fast_scan, refine_codes)
            refine.k_factor = k_factor
            label = f"{name},{refine_name}(k_factor={k_factor})"
            for nprobe in args.nprobe:
                faiss.ParameterSpace().set_index_parameter(refine, "nprobe", nprobe)
                ids, batch_ms, single_ms = time_search(refine, queries, k, args.singles)
                rows.append(
                    {
                        "index": label,
                        "nprobe": nprobe,
                        "recall@10": recall_at(ids, exact),
                        "batch_ms_per_query": batch_ms,
                        "single_ms_median": single_ms,
                        "build_s": build_s,
                        "bytes_per_vector": DIM // 2 // 2 + extra_bytes,
                    }
                )
                print(rows[-1], flush=True)
    return {"rows": rows, "train_size": len(sample), "nlist": args.nlist}


def bench_embedding(args) -> dict:
    import datasets
    import torch
    from PIL import Image
    from tokenizers import Tokenizer, models
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, PreTrainedTokenizerFast

    from anchorclip.anchors.pool.embedding import embed_pool

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    images = []
    for _ in range(args.embed_images):  # 64x64 PNGs, like the miniature world's pool before downsampling
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, format="PNG")
        images.append({"bytes": buffer.getvalue(), "path": None})
    pool = datasets.Dataset.from_dict(
        {"image": images, "caption": ["a"] * len(images)},
        features=datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")}),
    )
    config = CLIPConfig(
        text_config={
            "vocab_size": 100,
            "hidden_size": 128,
            "intermediate_size": 512,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "max_position_embeddings": 24,
            "bos_token_id": 2,
            "eos_token_id": 3,
            "pad_token_id": 0,
        },
        vision_config={
            "image_size": 32,
            "patch_size": 8,
            "hidden_size": 128,
            "intermediate_size": 512,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
        },
        projection_dim=128,
    )
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0}, "[UNK]")), unk_token="[UNK]"
    )
    processor = CLIPProcessor(
        CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}), tokenizer
    )
    results = {}
    for workers in (0, 2):
        with tempfile.TemporaryDirectory() as cache:
            started = time.perf_counter()
            embed_pool(
                pool,
                model,
                processor,
                cache_dir=cache,
                batch_size=256,
                shard_size=1024,
                num_workers=workers,
                pool_id="bench",
            )
            seconds = time.perf_counter() - started
        results[f"num_workers={workers}"] = {
            "images": len(images),
            "seconds": seconds,
            "images_per_s": len(images) / seconds,
        }
        print(results, flush=True)
    return {
        "model": "tiny CLIP ViT (patch 8, width 128, 4 layers, 32 px, 1.5M params)",
        "image": "64x64 PNG",
        "batch_size": 256,
        "runs": results,
    }


def write_results(result: dict, out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "retrieval.json"), "w") as file:
        json.dump(result, file, indent=2)
    search = result["search"]
    lines = [
        "# Retrieval benchmark",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']}  ",
        f"Date: {result['date']}",
        "",
        f"Search over {result['config']['num_vectors']:,} synthetic clustered 512-d normalised vectors "
        f"({result['config']['clusters']:,} Zipf-weighted clusters in a shared cone; see `benchmarks/retrieval.py`), "
        f"{result['config']['num_queries']:,} queries, k = 10. IVF variants share one coarse quantiser "
        f"({search['nlist']} lists, trained on {search['train_size']:,} vectors). Target: < 1 ms per query at "
        "recall@10 >= 0.95.",
        "",
        "| index | nprobe | recall@10 | batch ms/query | single ms (median) | bytes/vector | build s | target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in search["rows"]:
        ok = row["recall@10"] >= 0.95 and row["batch_ms_per_query"] < 1.0
        lines.append(
            f"| {row['index']} | {row['nprobe'] or '-'} | {row['recall@10']:.3f} | {row['batch_ms_per_query']:.3f} | "
            f"{row['single_ms_median']:.3f} | {row['bytes_per_vector']} | {row['build_s']:.0f} | "
            f"{'yes' if ok else ''} |"
        )
    embedding = result["embedding"]
    lines += [
        "",
        f"Pool embedding (`embed_pool`, {embedding['model']}, {embedding['image']}, batch "
        f"{embedding['batch_size']}, shards written to disk):",
        "",
        "| decoding threads | images | seconds | images/s |",
        "|---|---|---|---|",
    ]
    for name, run in embedding["runs"].items():
        lines.append(f"| {name.split('=')[1]} | {run['images']} | {run['seconds']:.1f} | {run['images_per_s']:.0f} |")
    lines += ["", result.get("notes", "")]
    with open(os.path.join(out_dir, "retrieval.md"), "w") as file:
        file.write("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_vectors", type=int, default=1_000_000)
    parser.add_argument("--num_queries", type=int, default=1000)
    parser.add_argument("--clusters", type=int, default=5000)
    parser.add_argument("--nlist", type=int, default=4096)
    parser.add_argument("--train_size", type=int, default=131_072)
    parser.add_argument("--codec_train_size", type=int, default=65_536)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--singles", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--embed_images", type=int, default=4096)
    parser.add_argument("--out_dir", default=os.path.join(os.path.dirname(__file__), "..", "docs", "results"))
    parser.add_argument("--no_write", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    result = {
        "command": "python benchmarks/retrieval.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores "
        f"({args.threads} threads used), {platform.system()}, Python {platform.python_version()}",
        "date": datetime.date.today().isoformat(),
        "config": {k: v for k, v in vars(args).items() if k not in ("out_dir", "no_write")},
        "search": bench_search(args),
        "embedding": bench_embedding(args),
    }
    result["seconds"] = time.perf_counter() - started
    print(f"total {result['seconds']:.0f}s")
    if not args.no_write:
        write_results(result, args.out_dir)


if __name__ == "__main__":
    main()
