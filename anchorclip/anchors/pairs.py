"""Pair anchors (the set behind ARF's L_pairs): `retrieve_anchors`, the one entry to the two retrieval jobs, and
the reuse of anchors an earlier run built with the same settings.

It sits above both pipelines: `anchorclip.anchors.pool.job` retrieves from a pool it embeds,
`anchorclip.anchors.laion.job` from precomputed embeddings in LAION's layout; both share
`anchorclip.anchors.pool.steps`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import datasets

from anchorclip.anchors.laion.job import retrieve_from_precomputed
from anchorclip.anchors.pool.args import RetrievalArguments
from anchorclip.anchors.pool.job import retrieve_from_pool
from anchorclip.anchors.pool.steps import PROVENANCE_FILE
from anchorclip.anchors.pool.store import dataset_fingerprint, model_fingerprint
from anchorclip.distributed import launch_processes

if TYPE_CHECKING:
    from accelerate import Accelerator
    from transformers import CLIPModel, CLIPProcessor

__all__ = ["check_cached_anchors", "retrieve_anchors"]


def retrieve_anchors(
    args: RetrievalArguments,
    pool: datasets.Dataset | datasets.IterableDataset | None = None,
    class_names: Sequence[str] | None = None,
    *,
    finetune: str | datasets.Dataset | None = None,
    leakage_sets: Sequence | None = None,
    model: CLIPModel | None = None,
    processor: CLIPProcessor | None = None,
    accelerator: Accelerator | None = None,
    reuse: bool = False,
) -> datasets.Dataset:
    """Run the retrieval job `args` describes: anchors for the classes, saved as a dataset at `args.output_dir`.

    Args:
        args: the job's settings (`RetrievalArguments`): pool, model, rule, k, templates, thresholds, index, cache.
        pool: the candidate image-caption pairs already loaded (`Dataset`/`IterableDataset`); else `args.pool` (a
            spec: Hub id, local folder, `save_to_disk` folder, `"spec:split"`) or `args.pool_embeddings` (a folder
            of precomputed embeddings in LAION's layout, `anchorclip.anchors.laion`: nothing is embedded, the
            search uses an IVF fast-scan index built shard by shard, the anchors are URLs + captions).
        class_names: the downstream class names; else `args.class_names` / `args.class_names_file`, else the
            `ClassLabel` names of the finetune set.
        finetune: the finetune set already loaded (else `args.finetune_dataset`): its class names, and the
            queries of `image2image`.
        leakage_sets: evaluation sets already loaded, guarded like the specs in `args.leakage_sets`.
        model / processor: the pretrained `CLIPModel` already loaded (else `args.model_name_or_path`).
        accelerator: the processes that embed (default `LaunchProcesses`: full precision; `anchorclip retrieve`
            passes `launch_accelerator()`, which embeds in the launcher's mixed precision). An accelerator that counts
            fewer processes than the launch started is refused (each would do the whole job).
        reuse: if `args.output_dir` already holds anchors, load them instead of retrieving again, once
            `check_cached_anchors` has found them built with these settings (`anchorclip train` reuses its own).

    Returns the anchors dataset (also saved at `args.output_dir`, with `anchorclip_provenance.json` and
    `report.html`). Every process of a launch calls it: they share the embedding; the main process searches
    and writes.
    """
    accelerator = launch_processes(accelerator)
    if reuse:
        cached = os.path.isfile(os.path.join(args.output_dir, PROVENANCE_FILE))
        accelerator.wait_for_everyone()  # every process has looked before the job below can write that file
        if cached:
            check_cached_anchors(args)
            return datasets.load_from_disk(args.output_dir)  # built by an earlier (or interrupted) run
    if args.pool_embeddings is not None:
        if pool is not None:
            raise ValueError("Pass either a pool or pool_embeddings, not both.")
        return retrieve_from_precomputed(
            args,
            class_names,
            finetune=finetune,
            leakage_sets=leakage_sets,
            model=model,
            processor=processor,
            accelerator=accelerator,
        )
    return retrieve_from_pool(
        args,
        pool,
        class_names,
        finetune=finetune,
        leakage_sets=leakage_sets,
        model=model,
        processor=processor,
        accelerator=accelerator,
    )


def check_cached_anchors(args: RetrievalArguments) -> None:
    """Refuse anchors at `args.output_dir` that an earlier run built with another model, pool or retrieval setting."""
    from transformers import CLIPModel

    with open(os.path.join(args.output_dir, PROVENANCE_FILE)) as handle:
        stored = json.load(handle)
    requested = {
        # Loaded as the job loads it, so that the digests are comparable.
        "model_fingerprint": model_fingerprint(CLIPModel.from_pretrained(args.model_name_or_path)),
        "pool_id": args.pool_id or dataset_fingerprint(None, args.pool, args.pool_split),  # as the command keys it
        "rule": args.rule,
        "k_per_class": args.k_per_class,
        "oversample": args.oversample,
        "query_mode": args.query_mode,
        "templates": args.resolved_templates(),
        "dedup_threshold": args.dedup_threshold,  # None when off, however it was spelled
        "diversity": args.diversity,
        "leakage_sets": list(args.leakage_sets or []),
    }
    stored.setdefault("diversity", 0.0)  # anchors built before the setting existed were not diversified
    changed = [key for key, value in requested.items() if stored.get(key) != value]
    if changed:
        raise ValueError(
            f"{args.output_dir} holds pair anchors built with other settings (differences in: {', '.join(changed)}). "
            "Delete that folder to rebuild them, or pass another --output_dir."
        )
