"""The anchors ARF finetunes against, built by two pipelines, one folder each.

* `captions/` (`anchorclip caption`, ARF's text-compensated anchors): `captioner` (the captioning model: loading,
  preprocessing, generation), `chunks` (the generation loop over a process's chunks), `args` (`CaptionArguments`),
  `job` (the resumable job: chunks per process, merge, provenance).
* `pool/` (`anchorclip retrieve --pool`, ARF's image-text-pair anchors from a pool we embed): `args`
  (`RetrievalArguments`), `job` (the job), `embedding` (the model and the pool's embeddings), `store`, `encoders`,
  `embed_column` (the resumable, sharded embedding cache), `faiss_index` (the in-memory faiss index over an
  embedded pool), `selection` (queries, candidates, leakage guard, de-duplication, quotas), `anchor_report` (the
  anchors dataset and report.html), `steps` (what the LAION-layout job shares).
* `laion/` (`anchorclip retrieve --pool_embeddings`, pools of precomputed CLIP embeddings in LAION's layout):
  `precomputed` (the pool folder), `index` (the IVF fast-scan index, built shard by shard), `url_anchors`
  (URL + caption anchors and their report), `job` (the job).
* `pairs`: `retrieve_anchors`, the one entry to both retrieval jobs (and the reuse of anchors already built).
* `shards`: the atomic chunk files both the caption job and the embedding cache write.

The processes a job runs on (`process_state`, `launch_accelerator`, ...) are `anchorclip.distributed`'s.
The public entry points are importable from here; each is loaded on first use, so `import anchorclip.anchors`
stays light.
"""

from __future__ import annotations

from typing import Any

from anchorclip._lazy import load_public, public_dir

from . import captions, laion, pool  # light: each loads its names on first use

# The pipelines' own public names (each subpackage declares its), plus the one entry to both retrieval jobs.
_PUBLIC = {
    **captions._PUBLIC,
    **pool._PUBLIC,
    **laion._PUBLIC,
    "retrieve_anchors": "anchorclip.anchors.pairs",
    "check_cached_anchors": "anchorclip.anchors.pairs",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    return load_public(__name__, _PUBLIC, name)


def __dir__() -> list[str]:
    return public_dir(__name__, _PUBLIC)
