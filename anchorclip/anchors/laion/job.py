"""The retrieval job on a pool of precomputed CLIP embeddings in LAION's layout (`anchorclip retrieve
--pool_embeddings`): nothing of the pool is embedded, the search uses an IVF index of fast-scan codes re-ranked
with the pool's vectors (`index`), and the anchors are the pool's URLs and captions (`url_anchors`). The queries,
the selection and the provenance are the embedded-pool job's (`anchorclip.anchors.pool.steps`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import datasets

from anchorclip.anchors.laion.index import pool_index
from anchorclip.anchors.laion.precomputed import CAPTION_COLUMNS, URL_COLUMNS, PrecomputedPool, check_model
from anchorclip.anchors.laion.url_anchors import write_url_anchors, write_url_report
from anchorclip.anchors.pool import steps
from anchorclip.anchors.pool.args import RetrievalArguments
from anchorclip.anchors.pool.store import default_cache_dir
from anchorclip.distributed import launch_processes

if TYPE_CHECKING:
    from accelerate import Accelerator
    from transformers import CLIPModel, CLIPProcessor

__all__ = ["retrieve_from_precomputed"]

logger = logging.getLogger(__name__)


def retrieve_from_precomputed(
    args: RetrievalArguments,
    class_names: Sequence[str] | None = None,
    *,
    finetune: str | datasets.Dataset | None = None,
    leakage_sets: Sequence | None = None,
    model: CLIPModel | None = None,
    processor: CLIPProcessor | None = None,
    accelerator: Accelerator | None = None,
) -> datasets.Dataset:
    """Retrieve anchors from the precomputed pool at `args.pool_embeddings`; see `retrieve_anchors` for the
    arguments. The model must be the one the pool was embedded with (`check_model`)."""
    started = time.perf_counter()
    accelerator = launch_processes(accelerator)
    embed_kwargs = steps.embedding_settings(args, accelerator)
    downstream = steps.resolve_downstream(args, class_names, finetune, accelerator)
    templates = args.resolved_templates()
    leakage = [*(args.leakage_sets or []), *(leakage_sets or [])]

    if args.pool is not None:
        raise ValueError("Pass either a pool or pool_embeddings, not both.")
    if args.pool_embeddings is None:
        raise ValueError("No pool_embeddings: give the folder of the precomputed pool.")
    pool = PrecomputedPool.open(args.pool_embeddings)
    source = {
        "pool": pool.path,
        "pool_split": None,
        "pool_id": args.pool_id or pool.path,
        "image_column": pool.column(URL_COLUMNS),
        "caption_column": pool.column(CAPTION_COLUMNS),
    }
    model, processor, text_encoder = steps.load_model(args, model, processor, accelerator)
    check_model(
        pool,
        str(model.config._name_or_path or "<in-memory model>"),
        model.visual_projection.out_features,  # the embedding dimension (config.projection_dim)
        text_encoder.encode,
    )

    # 1. Embeddings: the pool's own; image embeddings are also what de-duplication and the leakage guard compare.
    kind = "text" if args.rule == "text2text" else "image"
    image_store = pool.store("image") if steps.needs_image_embeddings(args, leakage) else None
    caption_store = pool.store("text") if args.rule == "text2text" else None
    search_store = caption_store if args.rule == "text2text" else image_store
    assert search_store is not None  # every rule but text2text reads the images' (needs_image_embeddings)
    counts = {"pool_rows": search_store.num_rows, "pool_unembeddable": int((~search_store.valid).sum())}
    if image_store is not None:
        counts["pool_undecodable_images"] = int((~image_store.valid).sum())
    finetune_store, evaluation = steps.query_embeddings(args, downstream, leakage, model, processor, embed_kwargs)

    anchors = None
    if accelerator.is_main_process:
        queries, query_class = steps.make_queries(args, downstream, text_encoder, templates, finetune_store)
        counts["queries"] = len(queries)
        cache_dir = args.cache_dir or default_cache_dir()
        index = pool_index(pool, kind, cache_dir, args.index_factory, args.index_params, args.seed)
        _report_other_indexes(index.path)
        found = steps.search_pool(args, index, search_store, queries, str(index.factory), approximate=True)
        selected, per_class = steps.select(
            args, found, query_class, search_store, image_store, evaluation, downstream.class_names, counts
        )
        anchors = write_url_anchors(pool, selected, downstream.class_names, args.output_dir)
        record = steps.provenance(
            args,
            source,
            model,
            templates,
            found,
            {"index_factory": index.factory, "index_params": index.params},
            downstream=downstream,
            leakage=leakage,
            counts=counts,
            per_class=per_class,
            stores=(image_store, caption_store),
            started=started,
        )
        steps.write_outputs(args, anchors, record, write_url_report, f"{args.rule} anchors from {pool.path}")
    return steps.finish(accelerator, anchors, args.output_dir)


def _report_other_indexes(directory: str | None) -> None:
    """Say what the other indexes beside `directory` hold: each stays in the cache, reused only while its pool,
    kind, factory and seed are unchanged, and one index of a LAION-size pool is tens of GB."""
    if directory is None:  # an index not from the cache
        return
    parent = os.path.dirname(directory)
    others = sorted(name for name in os.listdir(parent) if os.path.join(parent, name) != directory)
    if not others:
        return
    size = sum(
        os.path.getsize(os.path.join(root, file))
        for name in others
        for root, _, files in os.walk(os.path.join(parent, name))
        for file in files
    )
    amount = f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"
    logger.info(
        "%s also holds %d other pool index(es), %s in all (%s): each is reused only while its pool, kind, factory "
        "and seed are unchanged; delete those you no longer use.",
        parent, len(others), amount, ", ".join(others),
    )  # fmt: skip
