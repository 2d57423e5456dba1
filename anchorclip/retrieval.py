"""Deprecated: retrieval moved to `anchorclip.anchors` (one job per module).

* `anchorclip.anchors.retrieval`: `RetrievalArguments`, `retrieve_anchors` (the job, its provenance);
* `anchorclip.anchors.pool_embedding`: `load_clip`, `embed_pool`, `LaunchProcesses`;
* `anchorclip.anchors.pool_index`: the FAISS factory defaults, `build_index`, `search`, `exact_topk`, `measure_recall`;
* `anchorclip.anchors.selection`: queries, `Candidates`, the leakage guard, one class per item, `deduplicate`,
  `select_anchors`;
* `anchorclip.anchors.report`: the anchors dataset and `report.html`;
* `anchorclip.cli.retrieve`: the `anchorclip retrieve` command.

This module re-exports the old names for one release and will then be removed. Its `retrieve_anchors` keeps the
old keyword signature; the new one takes the settings whole: `retrieve_anchors(RetrievalArguments(...), pool)`.
"""

from __future__ import annotations

import os
import warnings

from anchorclip.anchors.pool_embedding import LaunchProcesses, embed_pool, load_clip
from anchorclip.anchors.pool_index import (
    EXACT_SEARCH_MAX_ROWS,
    build_index,
    default_index_factory,
    default_index_params,
    exact_topk,
    measure_recall,
    search,
    search_params,
)
from anchorclip.anchors.report import write_report
from anchorclip.anchors.retrieval import (
    PROVENANCE_FILE,
    QUERY_MODES,
    REPORT_FILE,
    RULES,
    RetrievalArguments,
)
from anchorclip.anchors.retrieval import retrieve_anchors as _retrieve_anchors
from anchorclip.anchors.selection import (
    Candidates,
    best_class_only,
    collect_candidates,
    deduplicate,
    image_queries,
    near_duplicate_groups,
    select_anchors,
    text_queries,
)
from anchorclip.cli.retrieve import main

__all__ = [
    "EXACT_SEARCH_MAX_ROWS",
    "PROVENANCE_FILE",
    "QUERY_MODES",
    "REPORT_FILE",
    "RULES",
    "Candidates",
    "LaunchProcesses",
    "RetrievalArguments",
    "best_class_only",
    "build_index",
    "collect_candidates",
    "deduplicate",
    "default_index_factory",
    "default_index_params",
    "embed_pool",
    "exact_topk",
    "image_queries",
    "load_clip",
    "main",
    "measure_recall",
    "near_duplicate_groups",
    "retrieve_anchors",
    "search",
    "search_params",
    "select_anchors",
    "text_queries",
    "write_report",
]


def retrieve_anchors(
    pool,
    class_names,
    model_name_or_path,
    output_dir,
    *,
    finetune=None,
    leakage_sets=None,
    processor=None,
    accelerator=None,
    templates="simple",
    **options,
):
    """Deprecated signature of `anchorclip.anchors.retrieval.retrieve_anchors`: the keywords are the fields of
    `RetrievalArguments`; loaded pools, finetune and leakage sets and models are passed through as they are."""
    warnings.warn(
        "retrieve_anchors(pool, class_names, model, output_dir, **options) is deprecated: call "
        "anchorclip.anchors.retrieval.retrieve_anchors(RetrievalArguments(model_name_or_path=..., output_dir=..., "
        "**options), pool, class_names).",
        FutureWarning,
        stacklevel=2,
    )
    model = None
    if not isinstance(model_name_or_path, (str, os.PathLike)):
        model, model_name_or_path = model_name_or_path, model_name_or_path.config._name_or_path
    named = {}
    if isinstance(pool, (str, os.PathLike)):
        named["pool"], pool = str(pool), None
    if isinstance(finetune, (str, os.PathLike)):
        named["finetune_dataset"], finetune = str(finetune), None
    specs = [s for s in leakage_sets or [] if isinstance(s, (str, os.PathLike))]
    loaded = [s for s in leakage_sets or [] if not isinstance(s, (str, os.PathLike))]
    args = RetrievalArguments(
        model_name_or_path=str(model_name_or_path),
        output_dir=output_dir,
        templates=templates,
        leakage_sets=[str(s) for s in specs] or None,
        **named,
        **options,
    )
    return _retrieve_anchors(
        args,
        pool,
        class_names,
        finetune=finetune,
        leakage_sets=loaded,
        model=model,
        processor=processor,
        accelerator=accelerator,
    )


warnings.warn(
    "anchorclip.retrieval is deprecated and will be removed in the next release: import from "
    "anchorclip.anchors.retrieval (retrieve_anchors, RetrievalArguments), anchorclip.anchors.pool_embedding "
    "(embed_pool), anchorclip.anchors.pool_index (build_index, search) and anchorclip.anchors.selection.",
    FutureWarning,
    stacklevel=2,
)
