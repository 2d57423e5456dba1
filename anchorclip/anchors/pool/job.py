"""The retrieval job: image-text-pair anchors (the set behind ARF's L_pairs) from a pool of image-caption pairs.

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

The steps live in `embedding` (1), `selection` (2, 4), `faiss_index` (3) and `anchor_report` (5), the steps the
LAION-layout job shares in `steps`, the job's settings in `args` (`RetrievalArguments`); this module runs the job on
a pool that we embed: `retrieve_from_pool`. `anchorclip.anchors.retrieve_anchors` picks it or the LAION-layout job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import datasets

from anchorclip.anchors.pool import steps
from anchorclip.anchors.pool.anchor_report import write_anchors, write_report
from anchorclip.anchors.pool.args import RetrievalArguments
from anchorclip.anchors.pool.embedding import embed_pool, resolve_dataset
from anchorclip.anchors.pool.faiss_index import build_index, default_index_factory, is_exact, search_params
from anchorclip.anchors.pool.store import dataset_fingerprint
from anchorclip.data import CAPTION_COLUMNS, IMAGE_COLUMNS, find_column
from anchorclip.distributed import launch_processes
from anchorclip.filesystems import datasets_cache_first

if TYPE_CHECKING:
    from accelerate import Accelerator
    from transformers import CLIPModel, CLIPProcessor

__all__ = ["retrieve_from_pool"]

logger = logging.getLogger(__name__)


def retrieve_from_pool(
    args: RetrievalArguments,
    pool: datasets.Dataset | datasets.IterableDataset | None = None,
    class_names: Sequence[str] | None = None,
    *,
    finetune: str | datasets.Dataset | None = None,
    leakage_sets: Sequence | None = None,
    model: CLIPModel | None = None,
    processor: CLIPProcessor | None = None,
    accelerator: Accelerator | None = None,
) -> datasets.Dataset:
    """Retrieve anchors from a pool of image-caption pairs that this job embeds; see `retrieve_anchors` for the
    arguments. `pool` is the pool already loaded, else `args.pool` (a spec) is loaded."""
    started = time.perf_counter()
    accelerator = launch_processes(accelerator)
    embed_kwargs = steps.embedding_settings(args, accelerator)
    downstream = steps.resolve_downstream(args, class_names, finetune, accelerator)
    templates = args.resolved_templates()
    leakage = [*(args.leakage_sets or []), *(leakage_sets or [])]

    if args.pool_embeddings is not None:
        raise ValueError("pool_embeddings is a precomputed pool: retrieve_anchors (or retrieve_from_precomputed).")
    if pool is None and args.pool is None:
        raise ValueError("No pool: pass one (or set RetrievalArguments.pool or pool_embeddings).")
    with datasets_cache_first():
        pool_data, pool_spec = resolve_dataset(args.pool if pool is None else pool, args.pool_split, args.streaming)
    if isinstance(pool_data, datasets.Dataset) and len(pool_data) == 0:
        raise ValueError(f"The pool {pool_spec or ''} is empty: there is nothing to retrieve from.".replace("  ", " "))
    image_column = find_column(pool_data, args.image_column, IMAGE_COLUMNS, "image")
    caption_column = find_column(pool_data, args.caption_column, CAPTION_COLUMNS, "caption")
    pool_split = args.pool_split if pool_spec else None
    pool_id = args.pool_id or dataset_fingerprint(pool_data, pool_spec, pool_split)
    model, processor, text_encoder = steps.load_model(args, model, processor, accelerator)

    # 1. Embeddings (cached). Image embeddings are also what de-duplication and the leakage guard compare.
    embed = dict(pool_id=pool_id, **embed_kwargs)
    image_store = caption_store = None
    if steps.needs_image_embeddings(args, leakage):
        image_store = embed_pool(pool_data, model, processor, kind="image", column=image_column, **embed)
    if args.rule == "text2text":
        caption_store = embed_pool(pool_data, model, processor, kind="text", column=caption_column, **embed)
    search_store = caption_store if args.rule == "text2text" else image_store
    assert search_store is not None  # every rule but text2text embeds the images (needs_image_embeddings)
    counts = {"pool_rows": search_store.num_rows, "pool_unembeddable": int((~search_store.valid).sum())}
    if image_store is not None:
        counts["pool_undecodable_images"] = int((~image_store.valid).sum())
    # Every process takes part in each embedding (they synchronise); only the main process searches and writes.
    finetune_store, evaluation = steps.query_embeddings(args, downstream, leakage, model, processor, embed_kwargs)

    anchors = None
    if accelerator.is_main_process:
        queries, query_class = steps.make_queries(args, downstream, text_encoder, templates, finetune_store)
        counts["queries"] = len(queries)
        index = build_index(search_store, args.index_factory, index_params=args.index_params, seed=args.seed)
        factory = args.index_factory or default_index_factory(search_store.num_rows, search_store.dim)
        found = steps.search_pool(args, index, search_store, queries, factory, approximate=not is_exact(index))
        selected, per_class = steps.select(
            args, found, query_class, search_store, image_store, evaluation, downstream.class_names, counts
        )
        anchors = write_anchors(
            pool_data, image_column, caption_column, selected, downstream.class_names, args.output_dir
        )
        source = {
            "pool": pool_spec or pool_id,
            "pool_split": pool_split,
            "pool_id": pool_id,
            "image_column": image_column,
            "caption_column": caption_column,
        }
        index_info = {"index_factory": factory, "index_params": search_params(factory, args.index_params)}
        record = steps.provenance(
            args,
            source,
            model,
            templates,
            found,
            index_info,
            downstream=downstream,
            leakage=leakage,
            counts=counts,
            per_class=per_class,
            stores=(image_store, caption_store),
            started=started,
        )
        title = f"{args.rule} anchors from {pool_spec or pool_id}"
        steps.write_outputs(args, anchors, record, write_report, title)
    return steps.finish(accelerator, anchors, args.output_dir)
