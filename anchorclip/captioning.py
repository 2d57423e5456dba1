"""Deprecated: the captioning pipeline moved to `anchorclip.anchors` (one job per module).

* `anchorclip.anchors.captioning`: `Captioner`, `CaptionPreprocessor`, model loading, the generation loop;
* `anchorclip.anchors.caption_job`: `CaptionArguments`, `run_captioning`, `caption_dataset` (plan, merge, provenance);
* `anchorclip.anchors.shards`: resumable chunk files, `plan_chunks`, `chunks_for_process`, `process_state`;
* `anchorclip.cli.caption`: the `anchorclip caption` command.

This module re-exports the old names for one release and will then be removed.
"""

from __future__ import annotations

import warnings

from anchorclip.anchors.caption_job import (
    PROVENANCE_FILE,
    SHARDS_DIR,
    SKIPPED_ROWS_FILE,
    CaptionArguments,
    caption_dataset,
    run_captioning,
)
from anchorclip.anchors.captioning import (
    DTYPES,
    Captioner,
    CaptionPreprocessor,
    load_captioning_model,
    load_preprocessor,
    resolve_dtype,
)
from anchorclip.anchors.shards import (
    BARRIER_TIMEOUT_HOURS,
    MANIFEST_FILE,
    chunk_path,
    chunks_for_process,
    plan_chunks,
    process_state,
    read_chunk,
    write_json_atomic,
)
from anchorclip.cli.caption import main

__all__ = [
    "BARRIER_TIMEOUT_HOURS",
    "DTYPES",
    "MANIFEST_FILE",
    "PROVENANCE_FILE",
    "SHARDS_DIR",
    "SKIPPED_ROWS_FILE",
    "CaptionArguments",
    "CaptionPreprocessor",
    "Captioner",
    "caption_dataset",
    "chunk_path",
    "chunks_for_process",
    "load_captioning_model",
    "load_preprocessor",
    "main",
    "plan_chunks",
    "process_state",
    "read_chunk",
    "resolve_dtype",
    "run_captioning",
    "write_json_atomic",
]

warnings.warn(
    "anchorclip.captioning is deprecated and will be removed in the next release: import from "
    "anchorclip.anchors.caption_job (caption_dataset, CaptionArguments) and anchorclip.anchors.captioning "
    "(Captioner).",
    FutureWarning,
    stacklevel=2,
)
