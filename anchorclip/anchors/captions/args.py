"""`CaptionArguments`: the settings of one captioning job (`anchorclip.anchors.captions.job.run_captioning`), which
are the options of `anchorclip caption`; recorded whole in the job's provenance."""

from __future__ import annotations

import ast
import json
import os
from dataclasses import dataclass, field
from typing import Literal

from anchorclip.data import IMAGE_COLUMNS


@dataclass
class CaptionArguments:
    """Everything one captioning job needs, as `anchorclip caption` parses it (snake_case flags; the kebab-case
    spellings `--output-dir`, `--batch-size`, ... are accepted too). Recorded whole in the provenance.

    Attributes:
        dataset_name / dataset_split: a Hub id, image folder or `save_to_disk` folder (`"spec:split"` works too).
        captioner: the checkpoint (Hub id or folder): anything `AutoModelForImageTextToText` loads, or a
            remote-code causal LM with `trust_remote_code`.
        output_dir: where the captions table, `_shards/`, `skipped_rows.json` and the provenance are written.
        id_column: a column with a unique, stable id per row (e.g. a file name), the table's key; default: the row
            index (`row_index`), which holds as long as the finetune set keeps its row order.
        batch_size: images per `generate` call. Part of the resume check: batch composition can change
            low-precision numerics, so a resumed run must use the same value to reproduce a fresh run exactly.
        prompt / chat_template: a text prompt or prefix (BLIP, BLIP-2, GIT, Florence-2 task tokens such as
            `"<MORE_DETAILED_CAPTION>"`; echoed prompts are stripped), wrapped in the chat template for chat VLMs.
        generation_kwargs: any other `generate` argument (`repetition_penalty`, `min_new_tokens`, ...).
        dtype: `"auto"` (bf16/fp16 on GPU, fp32 on CPU), `"float32"`, `"bfloat16"` or `"float16"`.
        shard_size / sharding: rows per chunk file (at most this much work is lost on interruption; best a multiple
            of `batch_size`), and how processes split the chunks (`"strided"` balances load, or `"contiguous"`).
        num_workers: DataLoader workers that decode and preprocess images while the model generates.
        resume: reuse finished chunks of an earlier run into the same `output_dir`; False starts over.
        max_rows: caption only the first `max_rows` rows (a trial run before hours of compute).
        push_to_hub: also push the table to this Hub dataset repo id.
    """

    dataset_name: str | None = field(
        default=None,
        metadata={
            "required": True,
            "help": "Images to caption: Hub id, image folder or save_to_disk folder ('spec:split' picks the split).",
        },
    )
    dataset_split: str = field(default="train")
    captioner: str | None = field(
        default=None,
        metadata={
            "required": True,
            "help": "The HF captioning model: Hub id or local folder (BLIP, BLIP-2, GIT, Florence-2, chat VLMs, ...).",
        },
    )
    output_dir: str | None = field(
        default=None,
        metadata={"required": True, "help": "Where the captions table, _shards/ and the provenance are written."},
    )
    image_column: str | None = field(default=None, metadata={"help": f"Default: the first of {list(IMAGE_COLUMNS)}."})
    id_column: str | None = field(
        default=None,
        metadata={"help": "A column with a unique, stable id per row, the table's key (default: the row index)."},
    )
    caption_column: str = field(default="caption")
    batch_size: int = field(
        default=32, metadata={"help": "Images per generate() call (part of the resume check: keep it to resume)."}
    )
    max_new_tokens: int = field(default=30)
    num_beams: int = field(default=1)
    prompt: str | None = field(
        default=None, metadata={"help": 'Text prompt / prefix, e.g. "a photo of" or "<MORE_DETAILED_CAPTION>".'}
    )
    chat_template: bool = field(default=False, metadata={"help": "Wrap the prompt in the chat template."})
    generation_kwargs: dict | str | None = field(
        default=None, metadata={"help": "More generate() arguments as JSON: '{\"min_new_tokens\": 5}'."}
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(
        default="auto", metadata={"help": "auto: bf16 (or fp16) on GPU, fp32 on CPU."}
    )
    shard_size: int = field(default=1024, metadata={"help": "Rows per resumable chunk file."})
    sharding: Literal["strided", "contiguous"] = field(
        default="strided", metadata={"help": "How processes share the chunks."}
    )
    num_workers: int = field(default=4, metadata={"help": "DataLoader workers decoding images."})
    resume: bool = field(
        default=True, metadata={"help": "Reuse finished chunks in output_dir (--no_resume deletes them)."}
    )
    max_rows: int | None = field(default=None, metadata={"help": "Caption only the first N rows (a trial run)."})
    trust_remote_code: bool = field(default=False)
    push_to_hub: str | None = field(
        default=None, metadata={"metavar": "REPO_ID", "help": "Also push the table to this Hub dataset repo."}
    )
    progress: bool = field(default=True, metadata={"help": "Show a progress bar (--no_progress hides it)."})

    def __post_init__(self):
        if isinstance(self.generation_kwargs, str):  # JSON from the command line, or a dict's repr from a config
            try:
                self.generation_kwargs = json.loads(self.generation_kwargs)
            except ValueError:
                self.generation_kwargs = ast.literal_eval(self.generation_kwargs)
        if self.generation_kwargs is not None and not isinstance(self.generation_kwargs, dict):
            raise ValueError(f"generation_kwargs must be a mapping, not {self.generation_kwargs!r}.")
        if self.output_dir is not None:
            self.output_dir = os.fspath(self.output_dir)
        if self.batch_size < 1 or self.shard_size < 1:
            raise ValueError("batch_size and shard_size must be positive.")
