"""`anchorclip retrieve`: image-text-pair anchors (ARF's L_itp set) retrieved from a pool of image-caption pairs.

The pipeline, top to bottom:

1. **Embed** the pool once with the *pretrained* CLIP (`embed_pool`): batched, split over Accelerate
   processes, cached as resumable `.npy` shards keyed by model + pool + column (see `_embedding.py`).
2. **Query** per class: the L2-normalised mean of the prompt-template ensemble (`query_mode="ensemble"`),
   or one query per template (`"each"`, "style-diverse": a single "a photo of a ..." query returns
   photo-style anchors only). `image2image` uses the finetune images instead of prompts.
3. **Search** with FAISS inner product on normalised embeddings (`build_index`): exact `IndexFlatIP` for
   pools up to a million rows, an IVF index from `faiss.index_factory` beyond, whose recall@k against
   exact search is measured on a sample of the queries and logged.
4. **Select**: drop pool items that are near-duplicates of evaluation images (leakage guard), give every
   pool item to its best class only, drop near-duplicate anchors (greedy, best score first), keep the
   top `k_per_class` per class, then at most `budget` overall (round-robin over classes by rank).
5. **Write** an HF dataset (`image`, `caption`, `class_name`, `class_index`, `score`, `pool_index`) with
   `save_to_disk`, `anchorclip_provenance.json`, and `report.html` with thumbnails for a person to check.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import logging
import math
import os
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import datasets
import numpy as np
import torch

from ._embedding import (
    EmbeddingStore,
    ImageEncoder,
    TextEncoder,
    cache_key,
    dataset_fingerprint,
    default_cache_dir,
    embed_column,
    model_fingerprint,
)
from .data import (
    CAPTION_COLUMNS,
    IMAGE_COLUMNS,
    LABEL_COLUMNS,
    class_names_from_features,
    decode_image,
    find_column,
    load_dataset_any,
    with_raw_images,
)
from .templates import resolve_templates

logger = logging.getLogger(__name__)

RULES = ("text2image", "text2text", "image2image")
QUERY_MODES = ("ensemble", "each")
PROVENANCE_FILE = "anchorclip_provenance.json"
REPORT_FILE = "report.html"
# Up to this many pool rows the exact index is used by default: 1M x 512 float32 is 2 GB, and a batch of
# a thousand class queries takes seconds. Beyond it, an IVF index (see `default_index_factory`).
EXACT_SEARCH_MAX_ROWS = 1_000_000


def _faiss():
    try:
        import faiss
    except ImportError as error:  # an optional dependency: `pip install anchorclip[retrieval]`
        raise ImportError("Retrieval needs FAISS: `pip install faiss-cpu` (or `anchorclip[retrieval]`).") from error
    return faiss


# ----------------------------------------------------------------------------------------------------------
# Model and embeddings
# ----------------------------------------------------------------------------------------------------------


def load_clip(model_name_or_path, processor=None):
    """A `CLIPModel` in eval mode and its processor, from a name/path (or an already loaded model)."""
    from transformers import AutoProcessor, CLIPModel

    if isinstance(model_name_or_path, (str, os.PathLike)):
        model = CLIPModel.from_pretrained(model_name_or_path)
        processor = processor or AutoProcessor.from_pretrained(model_name_or_path)
    else:
        model = model_name_or_path
        if processor is None:
            processor = AutoProcessor.from_pretrained(model.config._name_or_path)
    return model.eval(), processor


class LaunchProcesses:
    """The processes of the launch (one, `accelerate launch` or `torchrun`), embedding in full precision.

    The default `accelerator` of `embed_pool` and `retrieve_anchors`: it has what they use of an `Accelerator`
    (device, process index, barriers, autocast) but creates no `AcceleratorState`, so a `Trainer` built later in
    the same process still chooses its own mixed precision (`--bf16`). Pass an `Accelerator` to embed in its
    mixed precision instead (`anchorclip retrieve` does).
    """

    mixed_precision = "no"

    def __init__(self):
        from .anchors.shards import process_state

        self._state = process_state()

    def __getattr__(self, name: str):
        return getattr(self._state, name)

    @staticmethod
    def autocast():
        return contextlib.nullcontext()


def _resolve_dataset(data, split: str | None, streaming: bool) -> tuple[object, str | None]:
    """`(dataset, spec)`: load a spec with `load_dataset_any`, or pass a loaded dataset through."""
    if isinstance(data, (str, os.PathLike)):
        return load_dataset_any(str(data), split=split, streaming=streaming), str(data)
    return data, None


def embed_pool(
    pool,
    model,
    processor,
    *,
    kind: str = "image",
    column: str | None = None,
    split: str | None = "train",
    streaming: bool = False,
    pool_id: str | None = None,
    cache_dir: str | None = None,
    shard_size: int = 4096,
    batch_size: int = 256,
    num_workers: int = 0,
    accelerator=None,
) -> EmbeddingStore:
    """Embed the images (`kind="image"`) or captions (`kind="text"`) of a pool into a shard cache.

    `pool` is a dataset spec (Hub id, local folder, `save_to_disk` folder; `"spec:split"` allowed) or a
    loaded `Dataset`/`IterableDataset`. The cache lives under `cache_dir/<kind>-<digest>`, the digest being
    that of the model weights, the pool (`pool_id`, else its spec or fingerprint), the column, the
    preprocessing and the precision: another model never reads these embeddings. Returns a memory-mapped
    `EmbeddingStore` whose row `i` is pool row `i`, also for a stream embedded on several processes (each reads
    only its own files of it; see `_embedding.py`).
    """
    if kind not in ("image", "text"):
        raise ValueError(f"kind must be 'image' or 'text', got {kind!r}.")
    accelerator = accelerator or LaunchProcesses()
    dataset, spec = _resolve_dataset(pool, split, streaming)
    candidates = IMAGE_COLUMNS if kind == "image" else CAPTION_COLUMNS
    column = find_column(dataset, column, candidates, "image" if kind == "image" else "caption")
    pool_id = pool_id or dataset_fingerprint(dataset, spec, split if spec else None)
    model = model.to(accelerator.device).eval()
    if kind == "image":
        encoder = ImageEncoder(model, processor.image_processor if hasattr(processor, "image_processor")
                               else processor, accelerator.device, num_workers, accelerator.autocast)
    else:
        encoder = TextEncoder(model, getattr(processor, "tokenizer", processor), accelerator.device,
                              autocast=accelerator.autocast)
    key = cache_key(kind, model_fingerprint(model), pool_id, column, encoder.preprocessing,
                    str(accelerator.mixed_precision))
    return embed_column(dataset, column, encoder, kind=kind, key=key, cache_dir=cache_dir or default_cache_dir(),
                        shard_size=shard_size, batch_size=batch_size, accelerator=accelerator,
                        description=f"Embedding {kind}s of {spec or pool_id}")


# ----------------------------------------------------------------------------------------------------------
# FAISS index and search
# ----------------------------------------------------------------------------------------------------------


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
):
    """A FAISS inner-product index over L2-normalised embeddings (ids are row numbers).

    `index_factory` is any `faiss.index_factory` string ("Flat", "IVF4096,SQ8", "OPQ64,IVF4096,PQ64", ...;
    default: `default_index_factory`). Trainable indexes are trained on a random sample of at most
    `train_size` valid rows, then rows are added chunk by chunk, so a store larger than memory as float32
    can be indexed. `index_params` is a `faiss.ParameterSpace` string such as "nprobe=64"; it overrides
    `default_index_params` key by key, so "nprobe=256" keeps the default re-ranking shortlist.
    """
    faiss = _faiss()
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


def _is_exact(index) -> bool:
    faiss = _faiss()
    return isinstance(faiss.downcast_index(index), faiss.IndexFlat)


# ----------------------------------------------------------------------------------------------------------
# Queries
# ----------------------------------------------------------------------------------------------------------


def text_queries(
    class_names: Sequence[str], encoder: TextEncoder, templates: list[str], query_mode: str
) -> tuple[np.ndarray, np.ndarray]:
    """`(queries, query_class)`: the normalised template-ensemble mean per class, or one query per template."""
    prompts = [template.format(name) for name in class_names for template in templates]
    embeddings = encoder.encode(prompts).reshape(len(class_names), len(templates), -1)
    if query_mode == "each":
        return embeddings.reshape(len(prompts), -1), np.repeat(np.arange(len(class_names)), len(templates))
    return _normalize(embeddings.mean(axis=1)), np.arange(len(class_names))


def image_queries(
    store: EmbeddingStore, labels: np.ndarray, num_classes: int, query_mode: str, max_per_class: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """`(queries, query_class)` from finetune-image embeddings: the class prototype, or up to
    `max_per_class` images of each class (a seeded sample) as separate queries."""
    rng = np.random.default_rng(seed)
    queries, owners = [], []
    for label in range(num_classes):
        rows = np.nonzero((labels == label) & store.valid)[0]
        if len(rows) == 0:
            logger.warning("Class %d has no decodable finetune image: it gets no image2image query.", label)
            continue
        if query_mode == "each":
            rows = np.sort(rng.choice(rows, size=min(max_per_class, len(rows)), replace=False))
            queries.append(store.gather(rows))
            owners.append(np.full(len(rows), label))
        else:
            queries.append(_normalize(store.gather(rows).mean(axis=0, keepdims=True)))
            owners.append(np.array([label]))
    return np.concatenate(queries), np.concatenate(owners)


def _normalize(array: np.ndarray) -> np.ndarray:
    return (array / np.maximum(np.linalg.norm(array, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# Selection: leakage guard, one class per item, de-duplication, per-class k and global budget
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Candidates:
    """Parallel arrays, one entry per (class, pool row) pair still in the running."""

    label: np.ndarray
    row: np.ndarray
    score: np.ndarray

    def __len__(self) -> int:
        return len(self.row)

    def take(self, mask_or_index) -> Candidates:
        return Candidates(self.label[mask_or_index], self.row[mask_or_index], self.score[mask_or_index])


def collect_candidates(scores: np.ndarray, ids: np.ndarray, query_class: np.ndarray, valid: np.ndarray) -> Candidates:
    """Flatten search results to (class, row, score), keeping each class's best score for a row it reached
    through several queries (the union of a style-diverse query set)."""
    label = np.repeat(query_class, ids.shape[1])
    row, score = ids.reshape(-1), scores.reshape(-1)
    keep = row >= 0
    keep[keep] = valid[row[keep]]  # undecodable pool items are zero vectors: never an anchor
    found = Candidates(label[keep], row[keep].astype(np.int64), score[keep].astype(np.float32))
    order = np.lexsort((-found.score, found.row, found.label))
    found = found.take(order)
    first = np.ones(len(found), dtype=bool)
    first[1:] = (found.label[1:] != found.label[:-1]) | (found.row[1:] != found.row[:-1])
    return found.take(first)


def best_class_only(candidates: Candidates) -> Candidates:
    """Give each pool row to the class it scores highest for (ties: the lower class index)."""
    order = np.lexsort((candidates.label, -candidates.score, candidates.row))
    ordered = candidates.take(order)
    first = np.ones(len(ordered), dtype=bool)
    first[1:] = ordered.row[1:] != ordered.row[:-1]
    return ordered.take(first)


def near_duplicate_groups(embeddings: np.ndarray, threshold: float, exact_max: int = 50_000):
    """FAISS range search: `(lims, ids)` such that `ids[lims[i]:lims[i+1]]` are the rows with cosine >= threshold
    to row i (itself included). Exact up to `exact_max` rows; an IVF-Flat range search beyond (approximate)."""
    faiss = _faiss()
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    if len(embeddings) <= exact_max:
        index = faiss.IndexFlatIP(embeddings.shape[1])
    else:
        nlist = 2 ** round(math.log2(4 * math.sqrt(len(embeddings))))
        index = faiss.index_factory(embeddings.shape[1], f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
        index.train(embeddings[np.random.default_rng(0).choice(len(embeddings), min(len(embeddings), 64 * nlist),
                                                                 replace=False)])
        faiss.ParameterSpace().set_index_parameters(index, "nprobe=16")
    index.add(embeddings)
    # The float16 cache rounds cosines by ~1e-3; a small slack keeps exact copies (cosine 1.0) above threshold.
    lims, _, ids = index.range_search(embeddings, float(threshold) - 1e-3)
    return lims, ids


def deduplicate(candidates: Candidates, embeddings: np.ndarray, threshold: float) -> Candidates:
    """Greedy near-duplicate removal: in order of score, keep an item unless a kept one is a near-duplicate.

    `embeddings[i]` is the image embedding of `candidates.row[i]` (rows are unique here)."""
    lims, ids = near_duplicate_groups(embeddings, threshold)
    suppressed = np.zeros(len(candidates), dtype=bool)
    keep = np.zeros(len(candidates), dtype=bool)
    for i in np.argsort(-candidates.score, kind="stable"):
        if suppressed[i]:
            continue
        keep[i] = True
        suppressed[ids[lims[i] : lims[i + 1]]] = True
    return candidates.take(keep)


def select_anchors(candidates: Candidates, num_classes: int, k_per_class: int, budget: int | None) -> Candidates:
    """Top `k_per_class` per class by score; then, over budget, round-robin by rank so classes stay balanced."""
    order = np.lexsort((-candidates.score, candidates.label))
    ordered = candidates.take(order)
    starts = np.searchsorted(ordered.label, np.arange(num_classes))
    rank = np.arange(len(ordered)) - starts[ordered.label]
    ordered, rank = ordered.take(rank < k_per_class), rank[rank < k_per_class]
    if budget is not None and len(ordered) > budget:
        keep = np.lexsort((-ordered.score, rank))[:budget]
        ordered = ordered.take(np.sort(keep))
    return ordered


# ----------------------------------------------------------------------------------------------------------
# The whole pipeline
# ----------------------------------------------------------------------------------------------------------


def retrieve_anchors(
    pool,
    class_names: Sequence[str] | None,
    model_name_or_path,
    output_dir: str,
    *,
    rule: str = "text2image",
    k_per_class: int = 100,
    budget: int | None = None,
    templates: str | Sequence[str] | None = "simple",
    query_mode: str = "ensemble",
    dedup_threshold: float | None = 0.95,
    leakage_sets: Sequence | None = None,
    leakage_threshold: float = 0.95,
    index_factory: str | None = None,
    index_params: str | None = None,
    finetune=None,
    finetune_split: str = "train",
    finetune_image_column: str | None = None,
    finetune_label_column: str | None = None,
    max_image_queries_per_class: int = 32,
    pool_split: str | None = "train",
    streaming: bool = False,
    image_column: str | None = None,
    caption_column: str | None = None,
    pool_id: str | None = None,
    oversample: float = 2.0,
    recall_queries: int = 256,
    cache_dir: str | None = None,
    shard_size: int = 4096,
    batch_size: int = 256,
    num_workers: int = 0,
    report_per_class: int = 12,
    processor=None,
    accelerator=None,
    seed: int = 0,
    pool_embeddings: str | None = None,
) -> datasets.Dataset:
    """Retrieve image-caption anchors for `class_names` from `pool` and save them as a dataset at `output_dir`.

    Args:
        pool: the candidate image-caption pairs: a dataset spec (Hub id, local folder, `save_to_disk` folder,
            `"spec:split"`) or a loaded `Dataset`/`IterableDataset`. `streaming=True` streams a spec.
        class_names: the downstream class names; None takes the `ClassLabel` names of `finetune`.
        model_name_or_path: the *pretrained* CLIP checkpoint (name, path or loaded `CLIPModel`).
        rule: `text2image` (class prompts vs pool images), `text2text` (class prompts vs pool captions) or
            `image2image` (finetune images vs pool images; needs `finetune`).
        k_per_class: anchors kept per class; `budget`: at most this many overall (balanced across classes).
        templates: a template-set name or a list of templates with one `{}`; `query_mode`: `ensemble` (one
            normalised mean query per class) or `each` (one query per template / finetune image; the union
            of their results, a class keeping its best score per item: style-diverse anchors).
        dedup_threshold: anchors whose image embeddings have cosine >= this are near-duplicates, and only the
            best scoring one is kept (None disables).
        leakage_sets: evaluation datasets (specs, `"spec:split"`, or loaded); pool items with cosine >=
            `leakage_threshold` to any of their images are removed.
        index_factory / index_params: FAISS index (default `default_index_factory`) and search parameters.
        oversample: each query retrieves `ceil(k_per_class * oversample)` items, the slack that leakage
            removal, one-class-per-item and de-duplication consume.
        pool_embeddings: instead of `pool`, a folder of precomputed embeddings in LAION's layout
            (`anchorclip.anchors.precomputed`): nothing is embedded, the search uses an on-disk IVF-PQ index built
            once under `cache_dir` (`anchorclip.anchors.index`), and the anchors are URLs + captions
            (`anchorclip.anchors.url_anchors`).

    Returns the anchors dataset (also saved at `output_dir`, with provenance and `report.html`).
    """
    started = time.perf_counter()
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}.")
    if query_mode not in QUERY_MODES:
        raise ValueError(f"query_mode must be one of {QUERY_MODES}, got {query_mode!r}.")
    if k_per_class < 1 or (budget is not None and budget < 1):
        raise ValueError("k_per_class and budget must be positive.")
    accelerator = accelerator or LaunchProcesses()
    embed_kwargs = {"cache_dir": cache_dir, "shard_size": shard_size, "batch_size": batch_size,
                    "num_workers": num_workers, "accelerator": accelerator}

    # Inputs first, so that a typo fails in a second rather than after an hour of embedding.
    finetune_data = finetune_labels = None
    if finetune is not None:
        finetune_data, _ = _resolve_dataset(finetune, finetune_split, False)
        finetune_label_column = find_column(finetune_data, finetune_label_column, LABEL_COLUMNS, "label")
        if class_names is None:
            class_names = class_names_from_features(finetune_data, finetune_label_column)
            if class_names is None:
                raise ValueError(f"The finetune label column {finetune_label_column!r} is not a ClassLabel; "
                                 "pass class_names explicitly.")
    if class_names is None or len(class_names) == 0:
        raise ValueError("No class names: pass class_names (or a finetune dataset with a ClassLabel column).")
    class_names = [str(name) for name in class_names]
    if len(set(class_names)) != len(class_names):
        duplicates = sorted({name for name in class_names if class_names.count(name) > 1})
        raise ValueError(f"Class names must be unique; repeated: {duplicates}.")
    if rule == "image2image" and finetune_data is None:
        raise ValueError("rule='image2image' needs the finetune dataset (finetune=...).")
    templates = resolve_templates(list(templates) if isinstance(templates, (list, tuple)) else templates)

    precomputed = None
    if pool_embeddings is not None:  # a folder of LAION-layout embeddings: see anchorclip/anchors/
        from .anchors import precomputed as pre

        if pool is not None:
            raise ValueError("Pass either a pool or pool_embeddings, not both.")
        precomputed = pre.PrecomputedPool.open(pool_embeddings)
        pool_data, pool_spec, pool_split = None, precomputed.path, None
        image_column, caption_column = precomputed.column(pre.URL_COLUMNS), precomputed.column(pre.CAPTION_COLUMNS)
        pool_id = pool_id or precomputed.path
    else:
        pool_data, pool_spec = _resolve_dataset(pool, pool_split, streaming)
        if isinstance(pool_data, datasets.Dataset) and len(pool_data) == 0:
            raise ValueError(f"The pool {pool_spec or ''} is empty: there is nothing to retrieve from."
                             .replace("  ", " "))
        image_column = find_column(pool_data, image_column, IMAGE_COLUMNS, "image")
        caption_column = find_column(pool_data, caption_column, CAPTION_COLUMNS, "caption")
        pool_id = pool_id or dataset_fingerprint(pool_data, pool_spec, pool_split if pool_spec else None)
    model, processor = load_clip(model_name_or_path, processor)
    model.to(accelerator.device)
    model_name = str(model.config._name_or_path or "<in-memory model>")
    if precomputed is not None:
        text_encoder = TextEncoder(model, getattr(processor, "tokenizer", processor), accelerator.device,
                                   autocast=accelerator.autocast)
        pre.check_model(precomputed, model_name, model.config.projection_dim, text_encoder.encode)

    # 1. Embeddings (cached). Image embeddings are also what de-duplication and the leakage guard compare.
    counts: dict = {}
    needs_images = rule != "text2text" or bool(dedup_threshold) or bool(leakage_sets)
    if precomputed is not None:
        image_store = precomputed.store("image") if needs_images else None
        caption_store = precomputed.store("text") if rule == "text2text" else None
    else:
        image_store = embed_pool(pool_data, model, processor, kind="image", column=image_column, pool_id=pool_id,
                                 **embed_kwargs) if needs_images else None
        caption_store = embed_pool(pool_data, model, processor, kind="text", column=caption_column,
                                   pool_id=pool_id, **embed_kwargs) if rule == "text2text" else None
    search_store = caption_store if rule == "text2text" else image_store
    counts["pool_rows"] = search_store.num_rows
    counts["pool_unembeddable"] = int((~search_store.valid).sum())
    if image_store is not None:
        counts["pool_undecodable_images"] = int((~image_store.valid).sum())

    # Every process takes part in each embedding (they synchronise); only the main process searches and writes.
    finetune_store = None
    if rule == "image2image":
        finetune_store = embed_pool(finetune_data, model, processor, kind="image", column=finetune_image_column,
                                    **embed_kwargs)
    evaluation = _evaluation_embeddings(leakage_sets, model, processor, embed_kwargs) if leakage_sets else None

    anchors = None
    provenance = None
    if accelerator.is_main_process:
        # 2. Queries.
        if rule == "image2image":
            finetune_labels = np.asarray(finetune_data[finetune_label_column])
            queries, query_class = image_queries(finetune_store, finetune_labels, len(class_names), query_mode,
                                                 max_image_queries_per_class, seed)
        else:
            encoder = TextEncoder(model, getattr(processor, "tokenizer", processor), accelerator.device,
                                  autocast=accelerator.autocast)
            queries, query_class = text_queries(class_names, encoder, templates, query_mode)
        counts["queries"] = len(queries)

        # 3. Search.
        if precomputed is not None:
            from .anchors.index import pool_index

            index = pool_index(precomputed, "text" if rule == "text2text" else "image",
                               cache_dir or default_cache_dir(), index_factory, index_params, seed)
        else:
            index = build_index(search_store, index_factory, index_params=index_params, seed=seed)
        k_search = min(math.ceil(k_per_class * oversample), search_store.num_rows)
        search_started = time.perf_counter()
        scores, ids = search(index, queries, k_search)
        search_seconds = time.perf_counter() - search_started
        factory = getattr(index, "factory", None) or index_factory or default_index_factory(search_store.num_rows,
                                                                                              search_store.dim)
        recall = None
        if precomputed is not None or not _is_exact(index):
            sample = np.random.default_rng(seed).choice(len(queries), min(recall_queries, len(queries)),
                                                        replace=False)
            recall = measure_recall(index, search_store, queries[sample], min(k_search, 100))
            logger.info("Index %s: recall@%d = %.4f against exact search on %d queries.", factory,
                        min(k_search, 100), recall, len(sample))
        logger.info("Searched %d queries (k=%d) in %.2fs.", len(queries), k_search, search_seconds)

        # 4. Selection.
        candidates = collect_candidates(scores, ids, query_class, search_store.valid)
        counts["candidates"] = len(candidates)
        counts["candidate_pool_items"] = len(np.unique(candidates.row))
        leaked = np.zeros(0, dtype=np.int64)
        if leakage_sets:
            leaked = _leaked_rows(candidates, image_store, evaluation, leakage_threshold)
            candidates = candidates.take(~np.isin(candidates.row, leaked))
        counts["leakage_removed_pool_items"] = len(leaked)
        assigned = best_class_only(candidates)
        counts["other_class_duplicates_removed"] = len(candidates) - len(assigned)
        deduplicated = assigned
        if dedup_threshold:
            deduplicated = deduplicate(assigned, image_store.gather(assigned.row), dedup_threshold)
        counts["near_duplicates_removed"] = len(assigned) - len(deduplicated)
        selected = select_anchors(deduplicated, len(class_names), k_per_class, budget)
        per_class = np.bincount(selected.label, minlength=len(class_names))
        counts["anchors"] = len(selected)
        counts["per_class"] = {"min": int(per_class.min()), "max": int(per_class.max()),
                               "mean": float(per_class.mean())}
        short = [class_names[i] for i in np.nonzero(per_class < min(k_per_class, budget or k_per_class))[0]]
        counts["classes_below_k"] = len(short)
        for name, value in counts.items():
            logger.info("  %s: %s", name, value)
        if short and budget is None:
            logger.warning("%d classes got fewer than %d anchors (e.g. %s): raise `oversample` or lower the "
                           "thresholds.", len(short), k_per_class, short[:5])

        # 5. Outputs.
        if precomputed is not None:
            from .anchors.url_anchors import write_url_anchors, write_url_report

            anchors = write_url_anchors(precomputed, selected, class_names, output_dir)
        else:
            anchors = _write_anchors(pool_data, image_column, caption_column, selected, class_names, output_dir)
        provenance = {
            "pool": pool_spec or pool_id, "pool_split": pool_split if pool_spec else None, "pool_id": pool_id,
            "image_column": image_column, "caption_column": caption_column, "model": model_name,
            "model_fingerprint": model_fingerprint(model), "rule": rule, "query_mode": query_mode,
            "templates": templates, "k_per_class": k_per_class, "budget": budget, "oversample": oversample,
            "k_search": k_search, "dedup_threshold": dedup_threshold,
            "leakage_sets": [s if isinstance(s, str) else dataset_fingerprint(s) for s in (leakage_sets or [])],
            "leakage_threshold": leakage_threshold, "index_factory": factory,
            "index_params": index.params if precomputed is not None else search_params(factory, index_params),
            "index_recall": recall, "recall_k": min(k_search, 100) if recall is not None else None,
            "finetune": finetune if isinstance(finetune, str) else (None if finetune is None else "<dataset>"),
            "counts": counts, "per_class_counts": dict(zip(class_names, per_class.tolist())),
            "embedding_cache": {"image": getattr(image_store, "path", None),
                                "text": getattr(caption_store, "path", None)},
            "seconds": round(time.perf_counter() - started, 2), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": _versions(),
        }
        with open(os.path.join(output_dir, PROVENANCE_FILE), "w") as file:
            json.dump(provenance, file, indent=2)
        (write_url_report if precomputed is not None else write_report)(
            anchors, class_names, os.path.join(output_dir, REPORT_FILE), per_class=report_per_class,
                     title=f"{rule} anchors from {pool_spec or pool_id}", provenance=provenance)
        logger.info("Wrote %d anchors to %s (report: %s).", len(anchors), output_dir,
                    os.path.join(output_dir, REPORT_FILE))
    accelerator.wait_for_everyone()
    return anchors if anchors is not None else datasets.load_from_disk(output_dir)


def _evaluation_embeddings(leakage_sets, model, processor, embed_kwargs) -> np.ndarray:
    """The valid image embeddings of all evaluation sets (cached like the pool)."""
    evaluation = []
    for entry in leakage_sets:
        # A spec without ":split" means its test split; "imagenet-1k:validation" names another.
        store = embed_pool(entry, model, processor, kind="image", split="test", **embed_kwargs)
        evaluation.append(store.to_numpy()[store.valid])
        logger.info("Leakage guard: %d images from %s.", int(store.valid.sum()),
                    entry if isinstance(entry, str) else "a dataset")
    return np.concatenate(evaluation)


def _leaked_rows(candidates: Candidates, image_store: EmbeddingStore, evaluation: np.ndarray,
                 threshold: float) -> np.ndarray:
    """Pool rows among the candidates whose image has cosine >= threshold to an evaluation image."""
    faiss = _faiss()
    rows = np.unique(candidates.row)
    if len(evaluation) == 0 or len(rows) == 0:
        return np.zeros(0, dtype=np.int64)
    index = faiss.IndexFlatIP(evaluation.shape[1])
    index.add(np.ascontiguousarray(evaluation))
    scores, _ = index.search(np.ascontiguousarray(image_store.gather(rows)), 1)
    leaked = rows[scores[:, 0] >= threshold - 1e-3]  # same float16 slack as de-duplication
    logger.info("Leakage guard: %d of %d candidate pool items are near-duplicates (cosine >= %.3f) of "
                "evaluation images; removed.", len(leaked), len(rows), threshold)
    return leaked


def _versions() -> dict:
    import transformers

    return {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
            "datasets": datasets.__version__, "faiss": getattr(_faiss(), "__version__", None)}


# ----------------------------------------------------------------------------------------------------------
# Writing the dataset and the report
# ----------------------------------------------------------------------------------------------------------


def _image_cell(value) -> dict | None:
    """An `Image()` cell holding the original encoded bytes (no re-encoding), or PNG for in-memory images."""
    from PIL import Image

    if isinstance(value, dict):
        if value.get("bytes"):
            return {"bytes": value["bytes"], "path": None}
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": bytes(value), "path": None}
    if isinstance(value, str) and os.path.exists(value):
        with open(value, "rb") as file:
            return {"bytes": file.read(), "path": None}
    if isinstance(value, Image.Image):
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return {"bytes": buffer.getvalue(), "path": None}
    return None


def _anchor_rows(pool, image_column, caption_column, rows, labels, scores, class_names):
    """Rows of the anchors dataset, in pool order (one pass, so a streamed pool is read once more only)."""
    wanted = {int(row): (int(label), float(score)) for row, label, score in zip(rows, labels, scores)}
    ordered = sorted(wanted)
    if isinstance(pool, datasets.Dataset):
        source = zip(ordered, pool.select(ordered))
    else:
        source = ((i, item) for i, item in enumerate(pool) if i in wanted)
    for row, item in source:
        label, score = wanted[row]
        yield {"image": _image_cell(item[image_column]), "caption": item[caption_column],
               "class_name": class_names[label], "class_index": label, "score": score, "pool_index": row}


def _write_anchors(pool, image_column, caption_column, selected: Candidates, class_names, output_dir):
    features = datasets.Features({
        "image": datasets.Image(), "caption": datasets.Value("string"), "class_name": datasets.Value("string"),
        "class_index": datasets.ClassLabel(names=list(class_names)), "score": datasets.Value("float32"),
        "pool_index": datasets.Value("int64"),
    })
    pool = with_raw_images(pool.select_columns([image_column, caption_column]), image_column)
    os.makedirs(output_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        if len(selected):
            anchors = datasets.Dataset.from_generator(
                _anchor_rows, features=features, cache_dir=scratch, fingerprint=uuid.uuid4().hex,
                gen_kwargs={"pool": pool, "image_column": image_column, "caption_column": caption_column,
                            "rows": selected.row, "labels": selected.label, "scores": selected.score,
                            "class_names": tuple(class_names)},  # a list would be split into shards
            )
            # Rows come in pool order; reorder by class, best first (what a person reads in the report and what
            # a trainer may truncate). `np.lexsort` rather than `Dataset.sort`: no pyarrow sort of the table.
            in_pool_order = np.argsort(selected.row, kind="stable")
            anchors = anchors.select(in_pool_order[np.lexsort((-selected.score[in_pool_order],
                                                                selected.label[in_pool_order]))])
        else:
            anchors = datasets.Dataset.from_dict({name: [] for name in features}, features=features)
        anchors.save_to_disk(output_dir)
    return datasets.load_from_disk(output_dir)


def _thumbnail(cell, size: int = 112) -> str | None:
    image = decode_image(cell)
    if image is None:
        return None
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def write_report(anchors: datasets.Dataset, class_names: Sequence[str], path: str, *, per_class: int = 12,
                 title: str = "Retrieved anchors", provenance: dict | None = None) -> None:
    """A self-contained HTML page: per class, its top `per_class` anchors (inline PNG thumbnails, caption, score)."""
    raw = with_raw_images(anchors, "image")
    labels = np.asarray(raw["class_index"], dtype=np.int64) if len(raw) else np.zeros(0, np.int64)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        (f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;margin:1em}}"
        ".row{display:flex;flex-wrap:wrap;gap:8px}.card{width:140px;font-size:11px}"
        ".card img{width:112px;height:112px;object-fit:contain;background:#eee;display:block}"
        "h2{font-size:15px;margin:1.2em 0 .3em}</style></head><body>"),
        f"<h1>{html.escape(title)}</h1>",
    ]
    if provenance:
        summary = {key: provenance.get(key) for key in ("model", "rule", "query_mode", "k_per_class", "budget",
                                                        "dedup_threshold", "leakage_threshold", "index_factory",
                                                        "index_recall", "counts")}
        parts.append(f"<pre>{html.escape(json.dumps(summary, indent=1))}</pre>")
    for label, name in enumerate(class_names):
        rows = np.nonzero(labels == label)[0]
        parts.append(f"<h2>{html.escape(name)} — {len(rows)} anchors</h2><div class='row'>")
        for row in rows[:per_class]:
            item = raw[int(row)]
            thumbnail = _thumbnail(item["image"])
            image = f"<img src='data:image/png;base64,{thumbnail}'>" if thumbnail else "<div>(undecodable)</div>"
            parts.append(f"<div class='card'>{image}<b>{item['score']:.3f}</b> {html.escape(str(item['caption']))}"
                         "</div>")
        parts.append("</div>")
    parts.append("</body></html>")
    with open(path, "w", encoding="utf-8") as file:
        file.write("\n".join(parts))


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------


@dataclass
class RetrievalArguments:
    """`anchorclip retrieve` options (see `retrieve_anchors` and docs/retrieval.md)."""

    model_name_or_path: str = field(metadata={"help": "The pretrained CLIP checkpoint used for retrieval."})
    output_dir: str = field(metadata={"help": "Where the anchors dataset, provenance and report.html are written."})
    pool: str | None = field(default=None, metadata={"help": "Pool of image-caption pairs: Hub id, local folder or "
                                                             "save_to_disk folder (`spec:split` allowed)."})
    pool_embeddings: str | None = field(
        default=None, metadata={"help": "Instead of --pool: a folder of precomputed embeddings in LAION's layout "
                                        "(img_emb/, text_emb/, metadata/); anchors are URLs + captions."}
    )
    class_names: list[str] | None = field(default=None, metadata={"help": "Downstream class names."})
    class_names_file: str | None = field(default=None, metadata={"help": "A text file with one class name a line."})
    finetune_dataset: str | None = field(
        default=None, metadata={"help": "Finetune dataset: its ClassLabel names are the classes; image2image queries."}
    )
    finetune_split: str = field(default="train", metadata={"help": "Split of the finetune dataset."})
    finetune_image_column: str | None = field(default=None, metadata={"help": "Finetune image column (detected)."})
    finetune_label_column: str | None = field(default=None, metadata={"help": "Finetune label column (detected)."})
    rule: str = field(default="text2image", metadata={"help": f"Retrieval rule: {RULES}."})
    query_mode: str = field(
        default="ensemble",
        metadata={"help": "ensemble: one mean query per class; each: one query per template or finetune image "
                          "(style-diverse, union of results)."},
    )
    templates: list[str] = field(
        default_factory=lambda: ["simple"],
        metadata={"help": "A template set name (simple, photo, openai_imagenet) or templates with one {}."},
    )
    k_per_class: int = field(default=100, metadata={"help": "Anchors per class."})
    budget: int | None = field(default=None, metadata={"help": "At most this many anchors in total."})
    oversample: float = field(default=2.0, metadata={"help": "Retrieve k_per_class*oversample per query."})
    max_image_queries_per_class: int = field(default=32, metadata={"help": "image2image + each: images per class."})
    dedup_threshold: float = field(default=0.95, metadata={"help": "Near-duplicate cosine; <= 0 disables."})
    leakage_sets: list[str] | None = field(
        default=None, metadata={"help": "Evaluation datasets (`spec:split`) whose near-duplicates are removed."}
    )
    leakage_threshold: float = field(default=0.95, metadata={"help": "Cosine at which a pool item counts as leaked."})
    index_factory: str | None = field(default=None, metadata={"help": "faiss.index_factory string (default: auto)."})
    index_params: str | None = field(
        default=None, metadata={"help": "faiss ParameterSpace string, e.g. nprobe=64 (replaces those default keys)."}
    )
    pool_split: str = field(default="train", metadata={"help": "Split of the pool."})
    streaming: bool = field(
        default=False, metadata={"help": "Stream the pool instead of downloading it (each process reads its files)."}
    )
    image_column: str | None = field(default=None, metadata={"help": "Pool image column (detected)."})
    caption_column: str | None = field(default=None, metadata={"help": "Pool caption column (detected)."})
    pool_id: str | None = field(default=None, metadata={"help": "Name keying the embedding cache (default: spec)."})
    cache_dir: str | None = field(default=None, metadata={"help": "Embedding cache (default: $HF_HOME/anchorclip)."})
    shard_size: int = field(default=4096, metadata={"help": "Rows per cached embedding shard."})
    batch_size: int = field(default=256, metadata={"help": "Embedding batch size per process."})
    num_workers: int = field(default=0, metadata={"help": "Image-decoding threads per process."})
    recall_queries: int = field(default=256, metadata={"help": "Queries used to measure an approximate index."})
    report_per_class: int = field(default=12, metadata={"help": "Thumbnails per class in report.html."})
    seed: int = field(default=0, metadata={"help": "Seed of index training and query sampling."})


def main(argv: list[str] | None = None) -> int:
    from transformers import HfArgumentParser

    parser = HfArgumentParser(RetrievalArguments)
    parser.prog = "anchorclip retrieve"
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    if (args.pool is None) == (args.pool_embeddings is None):
        parser.error("pass one of --pool and --pool_embeddings")
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    class_names = list(args.class_names or [])
    if args.class_names_file:
        with open(args.class_names_file, encoding="utf-8") as file:
            class_names += [line.strip() for line in file if line.strip()]
    templates = args.templates[0] if len(args.templates) == 1 and "{}" not in args.templates[0] else args.templates
    options = asdict(args)
    for name in ("pool", "model_name_or_path", "output_dir", "class_names", "class_names_file", "finetune_dataset",
                 "templates", "dedup_threshold"):
        options.pop(name)
    from accelerate import Accelerator

    retrieve_anchors(
        args.pool, class_names or None, args.model_name_or_path, args.output_dir, finetune=args.finetune_dataset,
        accelerator=Accelerator(),  # the command owns its processes: embed in the launcher's mixed precision
        templates=templates, dedup_threshold=args.dedup_threshold if args.dedup_threshold > 0 else None, **options,
    )
    return 0
