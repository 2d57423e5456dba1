"""The steps both retrieval jobs share: the classes and finetune set, the model and its text encoder, the queries,
the search with its recall check, the selection with its counts, and the provenance.

`anchorclip.anchors.pool.job` (a pool we embed) and `anchorclip.anchors.laion.job` (precomputed LAION-layout
embeddings) call these in the same order; only where the embeddings, the index and the anchors' rows come from
differ between them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import datasets
import numpy as np
import torch

from anchorclip.anchors.pool.args import RetrievalArguments
from anchorclip.anchors.pool.embedding import embed_pool, evaluation_embeddings, load_clip, resolve_dataset
from anchorclip.anchors.pool.encoders import TextEncoder
from anchorclip.anchors.pool.faiss_index import faiss_module, measure_recall, search
from anchorclip.anchors.pool.selection import (
    best_class_only,
    collect_candidates,
    deduplicate,
    image_queries,
    leaked_rows,
    select_anchors,
    text_queries,
)
from anchorclip.anchors.pool.store import EmbeddingStore, dataset_fingerprint, model_fingerprint
from anchorclip.data import LABEL_COLUMNS, class_names_from_features, find_column
from anchorclip.filesystems import datasets_cache_first, probe_folder, sync_folder

logger = logging.getLogger(__name__)

PROVENANCE_FILE = "anchorclip_provenance.json"
REPORT_FILE = "report.html"


@dataclass
class Downstream:
    """The classes anchors are retrieved for, and the finetune set (as given, and loaded) they may come from."""

    class_names: list[str]
    finetune: Any = None  # a spec or a Dataset, as given
    data: Any = None  # the loaded finetune set
    label_column: str | None = None


def resolve_downstream(args: RetrievalArguments, class_names, finetune, accelerator) -> Downstream:
    """The class names (given, else `args`', else the finetune set's `ClassLabel` names) and the finetune set.

    Called first, so that a typo fails in a second rather than after an hour of embedding."""
    finetune = args.finetune_dataset if finetune is None else finetune
    names = _given_class_names(args, class_names)
    data, label_column = None, None
    if finetune is not None:
        with datasets_cache_first():  # one process per copy of the cache builds it; the others then read it
            data, _ = resolve_dataset(finetune, args.finetune_split, False)
        label_column = find_column(data, args.finetune_label_column, LABEL_COLUMNS, "label")
        if names is None:
            names = class_names_from_features(data, label_column)
            if names is None:
                raise ValueError(
                    f"The finetune label column {label_column!r} is not a ClassLabel; pass class_names explicitly."
                )
    if names is None or len(names) == 0:
        raise ValueError("No class names: pass class_names (or a finetune dataset with a ClassLabel column).")
    names = [str(name) for name in names]
    if len(set(names)) != len(names):
        duplicates = sorted({name for name in names if names.count(name) > 1})
        raise ValueError(f"Class names must be unique; repeated: {duplicates}.")
    if args.rule == "image2image" and data is None:
        raise ValueError("rule='image2image' needs the finetune dataset (finetune=...).")
    return Downstream(names, finetune, data, label_column)


def _given_class_names(args: RetrievalArguments, class_names: Sequence[str] | None) -> list[str] | None:
    """`class_names`, else `args.class_names` followed by the lines of `args.class_names_file`; None if neither."""
    if class_names is not None:
        return list(class_names)
    names = list(args.class_names or [])
    if args.class_names_file:
        with open(args.class_names_file, encoding="utf-8") as file:
            names += [line.strip() for line in file if line.strip()]
    return names or None


def load_model(args: RetrievalArguments, model, processor, accelerator):
    """`(model, processor, text_encoder)`: the pretrained CLIP (given, else `args.model_name_or_path`) on the
    launch's device, with the encoder of the class prompts."""
    model, processor = load_clip(args.model_name_or_path if model is None else model, processor)
    model.to(accelerator.device)
    tokenizer = getattr(processor, "tokenizer", processor)
    return model, processor, TextEncoder(model, tokenizer, accelerator.device, autocast=accelerator.autocast)


def embedding_settings(args: RetrievalArguments, accelerator) -> dict:
    """The keywords of `embed_pool` that come from the job's settings."""
    return {
        "cache_dir": args.cache_dir,
        "shard_size": args.shard_size,
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "accelerator": accelerator,
    }


def needs_image_embeddings(args: RetrievalArguments, leakage: list) -> bool:
    """Image embeddings are searched (all rules but text2text) and compared (de-duplication, leakage, diversity)."""
    return args.rule != "text2text" or args.dedup_threshold is not None or bool(leakage) or args.diversity > 0


def query_embeddings(args, downstream: Downstream, leakage: list, model, processor, embed_kwargs: dict):
    """`(finetune_store, evaluation)`: the finetune images (image2image's queries) and the evaluation images (the
    leakage guard), embedded by every process together; None where the job does not need them."""
    finetune_store = None
    if args.rule == "image2image":
        finetune_store = embed_pool(
            downstream.data, model, processor, kind="image", column=args.finetune_image_column, **embed_kwargs
        )
    evaluation = evaluation_embeddings(leakage, model, processor, embed_kwargs) if leakage else None
    return finetune_store, evaluation


def make_queries(args, downstream: Downstream, text_encoder, templates, finetune_store):
    """`(queries, query_class)`: one row per query, and the class each one stands for."""
    if args.rule == "image2image":
        labels = np.asarray(downstream.data[downstream.label_column])
        n_classes, mode = len(downstream.class_names), args.query_mode
        return image_queries(finetune_store, labels, n_classes, mode, args.max_image_queries_per_class, args.seed)
    return text_queries(downstream.class_names, text_encoder, templates, args.query_mode)


def search_pool(args, index, search_store: EmbeddingStore, queries, factory: str, approximate: bool) -> dict:
    """Search `index` for each query: `{"scores", "ids", "k_search", "recall", "recall_k"}`; an approximate
    index's recall@k against exact search is measured on a sample of the queries and logged."""
    k_search = min(math.ceil(args.k_per_class * args.oversample), search_store.num_rows)
    started = time.perf_counter()
    scores, ids = search(index, queries, k_search)
    seconds = time.perf_counter() - started
    recall, recall_k = None, min(k_search, 100)
    if approximate:
        rng = np.random.default_rng(args.seed)
        sample = rng.choice(len(queries), min(args.recall_queries, len(queries)), replace=False)
        recall = measure_recall(index, search_store, queries[sample], recall_k)
        logger.info(
            "Index %s: recall@%d = %.4f against exact search on %d queries.", factory, recall_k, recall, len(sample)
        )
    logger.info("Searched %d queries (k=%d) in %.2fs.", len(queries), k_search, seconds)
    return {"scores": scores, "ids": ids, "k_search": k_search, "recall": recall, "recall_k": recall_k}


def select(args, found: dict, query_class, search_store, image_store, evaluation, class_names, counts: dict):
    """The anchors from the search results: leakage guard, best class only, de-duplication, per-class quota and
    budget (`anchorclip.anchors.pool.selection`). Fills `counts`; returns `(selected, per_class)`."""
    candidates = collect_candidates(found["scores"], found["ids"], query_class, search_store.valid)
    counts["candidates"] = len(candidates)
    counts["candidate_pool_items"] = len(np.unique(candidates.row))
    leaked = np.zeros(0, dtype=np.int64)
    if evaluation is not None:
        leaked = leaked_rows(candidates, image_store, evaluation, args.leakage_threshold)
        candidates = candidates.take(~np.isin(candidates.row, leaked))
    counts["leakage_removed_pool_items"] = len(leaked)
    if len(candidates) == 0:
        raise ValueError(
            f"No anchor candidates are left: the leakage guard removed all {counts['candidate_pool_items']} "
            f"candidate pool items (cosine >= leakage_threshold {args.leakage_threshold} to an evaluation image). "
            "The retrieval model may not separate the pool from the evaluation sets (an untrained model embeds "
            "everything alike): retrieve with a pretrained CLIP, or raise --leakage_threshold."
        )
    assigned = best_class_only(candidates)
    counts["other_class_duplicates_removed"] = len(candidates) - len(assigned)
    deduplicated = assigned
    if args.dedup_threshold is not None:
        deduplicated = deduplicate(assigned, image_store.gather(assigned.row), args.dedup_threshold)
    counts["near_duplicates_removed"] = len(assigned) - len(deduplicated)
    k_per_class, budget = args.k_per_class, args.budget
    selected = select_anchors(
        deduplicated,
        len(class_names),
        k_per_class,
        budget,
        embeddings=image_store.gather(deduplicated.row) if args.diversity > 0 else None,
        diversity=args.diversity,
    )
    per_class = np.bincount(selected.label, minlength=len(class_names))
    counts["anchors"] = len(selected)
    counts["per_class"] = {"min": int(per_class.min()), "max": int(per_class.max()), "mean": float(per_class.mean())}
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
    return selected, per_class


def provenance(
    args: RetrievalArguments,
    source: dict,
    model,
    templates: list[str],
    found: dict,
    index_info: dict,
    *,
    downstream: Downstream,
    leakage: list,
    counts: dict,
    per_class: np.ndarray,
    stores: tuple,
    started: float,
) -> dict:
    """The record written beside the anchors: the settings whole, then what the job resolved them to.

    `source` holds the pool's keys (`pool`, `pool_split`, `pool_id`, `image_column`, `caption_column`), `index_info`
    the index's (`index_factory`, `index_params`), `found` the search's (`search_pool`), `stores` the image and
    caption embeddings (or None), `started` the job's start (`time.perf_counter()`)."""
    finetune, (image_store, caption_store) = downstream.finetune, stores
    return {
        "settings": asdict(args),
        **source,
        "model": str(model.config._name_or_path or "<in-memory model>"),
        "model_fingerprint": model_fingerprint(model),
        "rule": args.rule,
        "query_mode": args.query_mode,
        "templates": templates,
        "k_per_class": args.k_per_class,
        "budget": args.budget,
        "oversample": args.oversample,
        "k_search": found["k_search"],
        "dedup_threshold": args.dedup_threshold,
        "diversity": args.diversity,
        "leakage_sets": [s if isinstance(s, str) else dataset_fingerprint(s) for s in leakage],
        "leakage_threshold": args.leakage_threshold,
        **index_info,
        "index_recall": found["recall"],
        "recall_k": found["recall_k"] if found["recall"] is not None else None,
        "finetune": finetune if isinstance(finetune, str) else (None if finetune is None else "<dataset>"),
        "counts": counts,
        "per_class_counts": dict(zip(downstream.class_names, per_class.tolist())),
        "embedding_cache": {"image": getattr(image_store, "path", None), "text": getattr(caption_store, "path", None)},
        "seconds": round(time.perf_counter() - started, 2),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": _versions(),
    }


def write_outputs(args, anchors, record: dict, write_report, title: str) -> None:
    """`anchorclip_provenance.json` and `report.html` beside the anchors dataset."""
    with open(os.path.join(args.output_dir, PROVENANCE_FILE), "w") as file:
        json.dump(record, file, indent=2)
    report = os.path.join(args.output_dir, REPORT_FILE)
    class_names = list(record["per_class_counts"])
    write_report(anchors, class_names, report, per_class=args.report_per_class, title=title, provenance=record)
    logger.info("Wrote %d anchors to %s (report: %s).", len(anchors), args.output_dir, report)


def finish(accelerator, anchors, output_dir: str) -> datasets.Dataset:
    """Every process waits for the main one's outputs; the others then read the anchors it saved (from their
    machine's copy of `output_dir` where it is not shared: `sync_folder` copies them there)."""
    accelerator.wait_for_everyone()
    sync_folder(probe_folder(output_dir))
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
