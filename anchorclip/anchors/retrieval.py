"""The retrieval job: image-text-pair anchors (ARF's L_itp set) from a pool of image-caption pairs.

The pipeline, top to bottom:

1. **Embed** the pool once with the *pretrained* CLIP (`embed_pool`): batched, split over Accelerate
   processes, cached as resumable `.npy` shards keyed by model + pool + column (see `embed_column`).
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

The steps live in `pool_embedding` (1), `selection` (2, 4), `pool_index` (3) and `report` (5), the job's settings
in `retrieval_args` (`RetrievalArguments`); this module runs the job: `retrieve_anchors`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict

import datasets
import numpy as np
import torch

from anchorclip.anchors.embedding_store import dataset_fingerprint, default_cache_dir, model_fingerprint
from anchorclip.anchors.encoders import TextEncoder
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
from anchorclip.anchors.retrieval_args import QUERY_MODES, RULES, RetrievalArguments
from anchorclip.anchors.selection import (
    best_class_only,
    collect_candidates,
    deduplicate,
    image_queries,
    leaked_rows,
    select_anchors,
    text_queries,
)
from anchorclip.anchors.shards import check_processes_joined
from anchorclip.data import CAPTION_COLUMNS, IMAGE_COLUMNS, LABEL_COLUMNS, class_names_from_features, find_column

__all__ = ["PROVENANCE_FILE", "QUERY_MODES", "REPORT_FILE", "RULES", "RetrievalArguments", "retrieve_anchors"]

logger = logging.getLogger(__name__)


PROVENANCE_FILE = "anchorclip_provenance.json"
REPORT_FILE = "report.html"


def retrieve_anchors(
    args: RetrievalArguments,
    pool=None,
    class_names: Sequence[str] | None = None,
    *,
    finetune=None,
    leakage_sets: Sequence | None = None,
    model=None,
    processor=None,
    accelerator=None,
) -> datasets.Dataset:
    """Run the retrieval job `args` describes: anchors for the classes, saved as a dataset at `args.output_dir`.

    Args:
        args: the job's settings (`RetrievalArguments`): pool, model, rule, k, templates, thresholds, index, cache.
        pool: the candidate image-caption pairs already loaded (`Dataset`/`IterableDataset`); else `args.pool` (a
            spec: Hub id, local folder, `save_to_disk` folder, `"spec:split"`) or `args.pool_embeddings` (a folder
            of precomputed embeddings in LAION's layout, `anchorclip.anchors.precomputed`: nothing is embedded, the
            search uses an on-disk IVF-PQ index, the anchors are URLs + captions).
        class_names: the downstream class names; else `args.class_names` / `args.class_names_file`, else the
            `ClassLabel` names of the finetune set.
        finetune: the finetune set already loaded (else `args.finetune_dataset`): its class names, and the
            queries of `image2image`.
        leakage_sets: evaluation sets already loaded, guarded like the specs in `args.leakage_sets`.
        model / processor: the pretrained `CLIPModel` already loaded (else `args.model_name_or_path`).
        accelerator: the processes that embed (default `LaunchProcesses`: full precision; `anchorclip retrieve`
            passes `launch_accelerator()`, which embeds in the launcher's mixed precision). An accelerator that counts
            fewer processes than the launch started is refused (each would do the whole job).

    Returns the anchors dataset (also saved at `args.output_dir`, with `anchorclip_provenance.json` and
    `report.html`). Every process of a launch calls it: they share the embedding; the main process searches
    and writes.
    """
    started = time.perf_counter()
    output_dir, rule, k_per_class, budget = args.output_dir, args.rule, args.k_per_class, args.budget
    accelerator = check_processes_joined(accelerator or LaunchProcesses())
    embed_kwargs = {
        "cache_dir": args.cache_dir,
        "shard_size": args.shard_size,
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "accelerator": accelerator,
    }

    # Inputs first, so that a typo fails in a second rather than after an hour of embedding.
    finetune = args.finetune_dataset if finetune is None else finetune
    finetune_data = finetune_label_column = None
    class_names = _given_class_names(args, class_names)
    if finetune is not None:
        with accelerator.main_process_first():  # one process builds the datasets cache; the others then read it
            finetune_data, _ = resolve_dataset(finetune, args.finetune_split, False)
        finetune_label_column = find_column(finetune_data, args.finetune_label_column, LABEL_COLUMNS, "label")
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
    templates = args.resolved_templates()
    leakage = [*(args.leakage_sets or []), *(leakage_sets or [])]

    pool_split, pool_id = args.pool_split, args.pool_id
    precomputed = None
    if args.pool_embeddings is not None:  # a folder of LAION-layout embeddings: see anchorclip/anchors/
        from anchorclip.anchors import precomputed as pre

        if pool is not None or args.pool is not None:
            raise ValueError("Pass either a pool or pool_embeddings, not both.")
        precomputed = pre.PrecomputedPool.open(args.pool_embeddings)
        pool_data, pool_spec, pool_split = None, precomputed.path, None
        image_column, caption_column = precomputed.column(pre.URL_COLUMNS), precomputed.column(pre.CAPTION_COLUMNS)
        pool_id = pool_id or precomputed.path
    else:
        if pool is None and args.pool is None:
            raise ValueError("No pool: pass one (or set RetrievalArguments.pool or pool_embeddings).")
        with accelerator.main_process_first():
            pool_data, pool_spec = resolve_dataset(args.pool if pool is None else pool, pool_split, args.streaming)
        if isinstance(pool_data, datasets.Dataset) and len(pool_data) == 0:
            raise ValueError(
                f"The pool {pool_spec or ''} is empty: there is nothing to retrieve from.".replace("  ", " ")
            )
        image_column = find_column(pool_data, args.image_column, IMAGE_COLUMNS, "image")
        caption_column = find_column(pool_data, args.caption_column, CAPTION_COLUMNS, "caption")
        pool_id = pool_id or dataset_fingerprint(pool_data, pool_spec, pool_split if pool_spec else None)
    model, processor = load_clip(args.model_name_or_path if model is None else model, processor)
    model.to(accelerator.device)
    model_name = str(model.config._name_or_path or "<in-memory model>")
    text_encoder = TextEncoder(
        model, getattr(processor, "tokenizer", processor), accelerator.device, autocast=accelerator.autocast
    )
    if precomputed is not None:
        pre.check_model(precomputed, model_name, model.config.projection_dim, text_encoder.encode)

    # 1. Embeddings (cached). Image embeddings are also what de-duplication and the leakage guard compare.
    counts: dict = {}
    needs_images = rule != "text2text" or args.dedup_threshold is not None or bool(leakage) or args.diversity > 0
    if precomputed is not None:
        image_store = precomputed.store("image") if needs_images else None
        caption_store = precomputed.store("text") if rule == "text2text" else None
    else:
        embed = dict(pool_id=pool_id, **embed_kwargs)
        image_store = (
            embed_pool(pool_data, model, processor, kind="image", column=image_column, **embed)
            if needs_images
            else None
        )
        caption_store = (
            embed_pool(pool_data, model, processor, kind="text", column=caption_column, **embed)
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
            finetune_data, model, processor, kind="image", column=args.finetune_image_column, **embed_kwargs
        )
    evaluation = evaluation_embeddings(leakage, model, processor, embed_kwargs) if leakage else None

    anchors = None
    if accelerator.is_main_process:
        # 2. Queries.
        if rule == "image2image":
            finetune_labels = np.asarray(finetune_data[finetune_label_column])
            queries, query_class = image_queries(
                finetune_store,
                finetune_labels,
                len(class_names),
                args.query_mode,
                args.max_image_queries_per_class,
                args.seed,
            )
        else:
            queries, query_class = text_queries(class_names, text_encoder, templates, args.query_mode)
        counts["queries"] = len(queries)

        # 3. Search.
        if precomputed is not None:
            from anchorclip.anchors.index import pool_index

            kind = "text" if rule == "text2text" else "image"
            cache_dir = args.cache_dir or default_cache_dir()
            index = pool_index(precomputed, kind, cache_dir, args.index_factory, args.index_params, args.seed)
        else:
            index = build_index(search_store, args.index_factory, index_params=args.index_params, seed=args.seed)
        k_search = min(math.ceil(k_per_class * args.oversample), search_store.num_rows)
        search_started = time.perf_counter()
        scores, ids = search(index, queries, k_search)
        search_seconds = time.perf_counter() - search_started
        factory = (
            getattr(index, "factory", None)
            or args.index_factory
            or default_index_factory(search_store.num_rows, search_store.dim)
        )
        recall, recall_k = None, min(k_search, 100)
        if precomputed is not None or not is_exact(index):
            rng = np.random.default_rng(args.seed)
            sample = rng.choice(len(queries), min(args.recall_queries, len(queries)), replace=False)
            recall = measure_recall(index, search_store, queries[sample], recall_k)
            logger.info(
                "Index %s: recall@%d = %.4f against exact search on %d queries.",
                factory,
                recall_k,
                recall,
                len(sample),
            )
        logger.info("Searched %d queries (k=%d) in %.2fs.", len(queries), k_search, search_seconds)

        # 4. Selection.
        candidates = collect_candidates(scores, ids, query_class, search_store.valid)
        counts["candidates"] = len(candidates)
        counts["candidate_pool_items"] = len(np.unique(candidates.row))
        leaked = np.zeros(0, dtype=np.int64)
        if leakage:
            leaked = leaked_rows(candidates, image_store, evaluation, args.leakage_threshold)
            candidates = candidates.take(~np.isin(candidates.row, leaked))
        counts["leakage_removed_pool_items"] = len(leaked)
        assigned = best_class_only(candidates)
        counts["other_class_duplicates_removed"] = len(candidates) - len(assigned)
        deduplicated = assigned
        if args.dedup_threshold is not None:
            deduplicated = deduplicate(assigned, image_store.gather(assigned.row), args.dedup_threshold)
        counts["near_duplicates_removed"] = len(assigned) - len(deduplicated)
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
            "settings": asdict(args),  # the job's settings, whole; the keys below are what it resolved them to
            "pool": pool_spec or pool_id,
            "pool_split": pool_split if pool_spec else None,
            "pool_id": pool_id,
            "image_column": image_column,
            "caption_column": caption_column,
            "model": model_name,
            "model_fingerprint": model_fingerprint(model),
            "rule": rule,
            "query_mode": args.query_mode,
            "templates": templates,
            "k_per_class": k_per_class,
            "budget": budget,
            "oversample": args.oversample,
            "k_search": k_search,
            "dedup_threshold": args.dedup_threshold,
            "diversity": args.diversity,
            "leakage_sets": [s if isinstance(s, str) else dataset_fingerprint(s) for s in leakage],
            "leakage_threshold": args.leakage_threshold,
            "index_factory": factory,
            "index_params": index.params if precomputed is not None else search_params(factory, args.index_params),
            "index_recall": recall,
            "recall_k": recall_k if recall is not None else None,
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
        report = os.path.join(output_dir, REPORT_FILE)
        (write_url_report if precomputed is not None else write_report)(
            anchors,
            class_names,
            report,
            per_class=args.report_per_class,
            title=f"{rule} anchors from {pool_spec or pool_id}",
            provenance=provenance,
        )
        logger.info("Wrote %d anchors to %s (report: %s).", len(anchors), output_dir, report)
    accelerator.wait_for_everyone()
    return anchors if anchors is not None else datasets.load_from_disk(output_dir)


def _given_class_names(args: RetrievalArguments, class_names: Sequence[str] | None) -> list[str] | None:
    """`class_names`, else `args.class_names` followed by the lines of `args.class_names_file`; None if neither."""
    if class_names is not None:
        return list(class_names)
    names = list(args.class_names or [])
    if args.class_names_file:
        with open(args.class_names_file, encoding="utf-8") as file:
            names += [line.strip() for line in file if line.strip()]
    return names or None


def _versions() -> dict:
    import transformers

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
        "faiss": getattr(faiss_module(), "__version__", None),
    }
