"""The retrieval job: image-text-pair anchors (ARF's L_itp set) from a pool of image-caption pairs.

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

The steps live in `pool_embedding` (1), `selection` (2, 4), `pool_index` (3) and `report` (5); this module is the
job: `RetrievalArguments` and `retrieve_anchors`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import datasets
import numpy as np
import torch

from anchorclip._embedding import TextEncoder, dataset_fingerprint, default_cache_dir, model_fingerprint
from anchorclip.anchors.pool_embedding import (
    LaunchProcesses,
    embed_pool,
    evaluation_embeddings,
    load_clip,
    resolve_dataset,
)
from anchorclip.anchors.pool_index import (
    build_index,
    default_index_factory,
    faiss_module,
    is_exact,
    measure_recall,
    search,
    search_params,
)
from anchorclip.anchors.report import write_anchors, write_report
from anchorclip.anchors.selection import (
    best_class_only,
    collect_candidates,
    deduplicate,
    image_queries,
    leaked_rows,
    select_anchors,
    text_queries,
)
from anchorclip.data import CAPTION_COLUMNS, IMAGE_COLUMNS, LABEL_COLUMNS, class_names_from_features, find_column
from anchorclip.templates import resolve_templates

logger = logging.getLogger(__name__)

RULES = ("text2image", "text2text", "image2image")
QUERY_MODES = ("ensemble", "each")
PROVENANCE_FILE = "anchorclip_provenance.json"
REPORT_FILE = "report.html"


@dataclass
class RetrievalArguments:
    """`anchorclip retrieve` options (see `retrieve_anchors` and docs/retrieval.md)."""

    model_name_or_path: str = field(metadata={"help": "The pretrained CLIP checkpoint used for retrieval."})
    output_dir: str = field(metadata={"help": "Where the anchors dataset, provenance and report.html are written."})
    pool: str | None = field(
        default=None,
        metadata={
            "help": "Pool of image-caption pairs: Hub id, local folder or save_to_disk folder (`spec:split` allowed)."
        },
    )
    pool_embeddings: str | None = field(
        default=None,
        metadata={
            "help": "Instead of --pool: a folder of precomputed embeddings in LAION's layout "
            "(img_emb/, text_emb/, metadata/); anchors are URLs + captions."
        },
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
        metadata={
            "help": "ensemble: one mean query per class; each: one query per template or finetune image "
            "(style-diverse, union of results)."
        },
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
    embed_kwargs = {
        "cache_dir": cache_dir,
        "shard_size": shard_size,
        "batch_size": batch_size,
        "num_workers": num_workers,
        "accelerator": accelerator,
    }

    # Inputs first, so that a typo fails in a second rather than after an hour of embedding.
    finetune_data = finetune_labels = None
    if finetune is not None:
        finetune_data, _ = resolve_dataset(finetune, finetune_split, False)
        finetune_label_column = find_column(finetune_data, finetune_label_column, LABEL_COLUMNS, "label")
        if class_names is None:
            class_names = class_names_from_features(finetune_data, finetune_label_column)
            if class_names is None:
                raise ValueError(
                    f"The finetune label column {finetune_label_column!r} is not a ClassLabel; "
                    "pass class_names explicitly."
                )
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
        from anchorclip.anchors import precomputed as pre

        if pool is not None:
            raise ValueError("Pass either a pool or pool_embeddings, not both.")
        precomputed = pre.PrecomputedPool.open(pool_embeddings)
        pool_data, pool_spec, pool_split = None, precomputed.path, None
        image_column, caption_column = precomputed.column(pre.URL_COLUMNS), precomputed.column(pre.CAPTION_COLUMNS)
        pool_id = pool_id or precomputed.path
    else:
        pool_data, pool_spec = resolve_dataset(pool, pool_split, streaming)
        if isinstance(pool_data, datasets.Dataset) and len(pool_data) == 0:
            raise ValueError(
                f"The pool {pool_spec or ''} is empty: there is nothing to retrieve from.".replace("  ", " ")
            )
        image_column = find_column(pool_data, image_column, IMAGE_COLUMNS, "image")
        caption_column = find_column(pool_data, caption_column, CAPTION_COLUMNS, "caption")
        pool_id = pool_id or dataset_fingerprint(pool_data, pool_spec, pool_split if pool_spec else None)
    model, processor = load_clip(model_name_or_path, processor)
    model.to(accelerator.device)
    model_name = str(model.config._name_or_path or "<in-memory model>")
    if precomputed is not None:
        text_encoder = TextEncoder(
            model, getattr(processor, "tokenizer", processor), accelerator.device, autocast=accelerator.autocast
        )
        pre.check_model(precomputed, model_name, model.config.projection_dim, text_encoder.encode)

    # 1. Embeddings (cached). Image embeddings are also what de-duplication and the leakage guard compare.
    counts: dict = {}
    needs_images = rule != "text2text" or bool(dedup_threshold) or bool(leakage_sets)
    if precomputed is not None:
        image_store = precomputed.store("image") if needs_images else None
        caption_store = precomputed.store("text") if rule == "text2text" else None
    else:
        image_store = (
            embed_pool(pool_data, model, processor, kind="image", column=image_column, pool_id=pool_id, **embed_kwargs)
            if needs_images
            else None
        )
        caption_store = (
            embed_pool(
                pool_data, model, processor, kind="text", column=caption_column, pool_id=pool_id, **embed_kwargs
            )
            if rule == "text2text"
            else None
        )
    search_store = caption_store if rule == "text2text" else image_store
    counts["pool_rows"] = search_store.num_rows
    counts["pool_unembeddable"] = int((~search_store.valid).sum())
    if image_store is not None:
        counts["pool_undecodable_images"] = int((~image_store.valid).sum())

    # Every process takes part in each embedding (they synchronise); only the main process searches and writes.
    finetune_store = None
    if rule == "image2image":
        finetune_store = embed_pool(
            finetune_data, model, processor, kind="image", column=finetune_image_column, **embed_kwargs
        )
    evaluation = evaluation_embeddings(leakage_sets, model, processor, embed_kwargs) if leakage_sets else None

    anchors = None
    provenance = None
    if accelerator.is_main_process:
        # 2. Queries.
        if rule == "image2image":
            finetune_labels = np.asarray(finetune_data[finetune_label_column])
            queries, query_class = image_queries(
                finetune_store, finetune_labels, len(class_names), query_mode, max_image_queries_per_class, seed
            )
        else:
            encoder = TextEncoder(
                model, getattr(processor, "tokenizer", processor), accelerator.device, autocast=accelerator.autocast
            )
            queries, query_class = text_queries(class_names, encoder, templates, query_mode)
        counts["queries"] = len(queries)

        # 3. Search.
        if precomputed is not None:
            from anchorclip.anchors.index import pool_index

            index = pool_index(
                precomputed,
                "text" if rule == "text2text" else "image",
                cache_dir or default_cache_dir(),
                index_factory,
                index_params,
                seed,
            )
        else:
            index = build_index(search_store, index_factory, index_params=index_params, seed=seed)
        k_search = min(math.ceil(k_per_class * oversample), search_store.num_rows)
        search_started = time.perf_counter()
        scores, ids = search(index, queries, k_search)
        search_seconds = time.perf_counter() - search_started
        factory = (
            getattr(index, "factory", None)
            or index_factory
            or default_index_factory(search_store.num_rows, search_store.dim)
        )
        recall = None
        if precomputed is not None or not is_exact(index):
            sample = np.random.default_rng(seed).choice(len(queries), min(recall_queries, len(queries)), replace=False)
            recall = measure_recall(index, search_store, queries[sample], min(k_search, 100))
            logger.info(
                "Index %s: recall@%d = %.4f against exact search on %d queries.",
                factory,
                min(k_search, 100),
                recall,
                len(sample),
            )
        logger.info("Searched %d queries (k=%d) in %.2fs.", len(queries), k_search, search_seconds)

        # 4. Selection.
        candidates = collect_candidates(scores, ids, query_class, search_store.valid)
        counts["candidates"] = len(candidates)
        counts["candidate_pool_items"] = len(np.unique(candidates.row))
        leaked = np.zeros(0, dtype=np.int64)
        if leakage_sets:
            leaked = leaked_rows(candidates, image_store, evaluation, leakage_threshold)
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
        counts["per_class"] = {
            "min": int(per_class.min()),
            "max": int(per_class.max()),
            "mean": float(per_class.mean()),
        }
        short = [class_names[i] for i in np.nonzero(per_class < min(k_per_class, budget or k_per_class))[0]]
        counts["classes_below_k"] = len(short)
        for name, value in counts.items():
            logger.info("  %s: %s", name, value)
        if short and budget is None:
            logger.warning(
                "%d classes got fewer than %d anchors (e.g. %s): raise `oversample` or lower the thresholds.",
                len(short),
                k_per_class,
                short[:5],
            )

        # 5. Outputs.
        if precomputed is not None:
            from anchorclip.anchors.url_anchors import write_url_anchors, write_url_report

            anchors = write_url_anchors(precomputed, selected, class_names, output_dir)
        else:
            anchors = write_anchors(pool_data, image_column, caption_column, selected, class_names, output_dir)
        provenance = {
            "pool": pool_spec or pool_id,
            "pool_split": pool_split if pool_spec else None,
            "pool_id": pool_id,
            "image_column": image_column,
            "caption_column": caption_column,
            "model": model_name,
            "model_fingerprint": model_fingerprint(model),
            "rule": rule,
            "query_mode": query_mode,
            "templates": templates,
            "k_per_class": k_per_class,
            "budget": budget,
            "oversample": oversample,
            "k_search": k_search,
            "dedup_threshold": dedup_threshold,
            "leakage_sets": [s if isinstance(s, str) else dataset_fingerprint(s) for s in (leakage_sets or [])],
            "leakage_threshold": leakage_threshold,
            "index_factory": factory,
            "index_params": index.params if precomputed is not None else search_params(factory, index_params),
            "index_recall": recall,
            "recall_k": min(k_search, 100) if recall is not None else None,
            "finetune": finetune if isinstance(finetune, str) else (None if finetune is None else "<dataset>"),
            "counts": counts,
            "per_class_counts": dict(zip(class_names, per_class.tolist())),
            "embedding_cache": {
                "image": getattr(image_store, "path", None),
                "text": getattr(caption_store, "path", None),
            },
            "seconds": round(time.perf_counter() - started, 2),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": _versions(),
        }
        with open(os.path.join(output_dir, PROVENANCE_FILE), "w") as file:
            json.dump(provenance, file, indent=2)
        (write_url_report if precomputed is not None else write_report)(
            anchors,
            class_names,
            os.path.join(output_dir, REPORT_FILE),
            per_class=report_per_class,
            title=f"{rule} anchors from {pool_spec or pool_id}",
            provenance=provenance,
        )
        logger.info(
            "Wrote %d anchors to %s (report: %s).", len(anchors), output_dir, os.path.join(output_dir, REPORT_FILE)
        )
    accelerator.wait_for_everyone()
    return anchors if anchors is not None else datasets.load_from_disk(output_dir)


def _versions() -> dict:
    import transformers

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
        "faiss": getattr(faiss_module(), "__version__", None),
    }
