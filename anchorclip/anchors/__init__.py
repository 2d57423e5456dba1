"""The anchors ARF finetunes against, built by two pipelines, one folder each.

* `captions/` (`anchorclip caption`, ARF's text-compensated anchors): `captioner` (the captioning model: loading,
  preprocessing, generation), `chunks` (the generation loop over a process's chunks), `args` (`CaptionArguments`),
  `job` (the resumable job: chunks per process, merge, provenance).
* `pool/` (`anchorclip retrieve --pool`, ARF's image-text-pair anchors from a pool we embed): `args`
  (`RetrievalArguments`), `job` (the job), `embedding` (the model and the pool's embeddings), `store`, `encoders`,
  `embed_column` (the resumable, sharded embedding cache), `faiss_index` (the in-memory faiss index over an
  embedded pool), `selection` (queries, candidates, leakage guard, de-duplication, quotas), `report` (the anchors
  dataset and report.html), `steps` (what the LAION-layout job shares).
* `laion/` (`anchorclip retrieve --pool_embeddings`, pools of precomputed CLIP embeddings in LAION's layout):
  `precomputed` (the pool folder), `ondisk_index` (the IVF-PQ index with on-disk inverted lists), `url_anchors`
  (URL + caption anchors and their report), `job` (the job).
* `pairs`: `retrieve_anchors`, the one entry to both retrieval jobs (and the reuse of anchors already built).
* `shards`: the atomic chunk files both the caption job and the embedding cache write.

The processes a job runs on (`process_state`, `launch_accelerator`, ...) are `anchorclip.distributed`'s.
The public entry points are importable from here; each is loaded on first use, so `import anchorclip.anchors`
stays light.
"""

from __future__ import annotations

import importlib

_PUBLIC = {
    "CaptionArguments": "anchorclip.anchors.captions.args",
    "Captioner": "anchorclip.anchors.captions.captioner",
    "caption_dataset": "anchorclip.anchors.captions.job",
    "run_captioning": "anchorclip.anchors.captions.job",
    "RetrievalArguments": "anchorclip.anchors.pool.args",
    "retrieve_anchors": "anchorclip.anchors.pairs",
    "retrieve_from_pool": "anchorclip.anchors.pool.job",
    "retrieve_from_precomputed": "anchorclip.anchors.laion.job",
    "embed_pool": "anchorclip.anchors.pool.embedding",
    "EmbeddingStore": "anchorclip.anchors.pool.store",
    "PrecomputedPool": "anchorclip.anchors.laion.precomputed",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
