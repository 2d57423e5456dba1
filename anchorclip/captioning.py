"""Text-compensated anchors: caption every image of a dataset with a pretrained Hugging Face captioner.

ARF's L_tc pairs each finetune image with a rich caption from a captioner (BLIP-2 in the paper). This module
writes those captions once, offline, as a *captions-only table* keyed by a stable row id (no image is copied):

    anchorclip caption --dataset path/or/hub-id --model Salesforce/blip2-opt-2.7b --output-dir out/
    accelerate launch -m anchorclip caption ...        # several GPUs, one share of the rows each

How a run is organised (so that it can be interrupted and resumed, on any number of processes):

* The rows are cut into fixed *chunks* of `shard_size` rows (`[0, s)`, `[s, 2s)`, ...). Chunks do not depend on
  the number of processes, and batches never cross a chunk boundary, so every caption is computed from the same
  batch whatever the process count or the number of interruptions: the output is identical (greedy and beam
  search are deterministic).
* Each process takes its share of the chunks (strided or contiguous) and writes every finished chunk to
  `<output_dir>/_shards/rows-<start>-<stop>.json` (atomically), so an interrupted run loses at most one chunk per
  process and a rerun skips every chunk already on disk. `_shards/manifest.json` records what the chunks were
  computed with; resuming with different settings is an error rather than a silently mixed output.
* After a barrier the main process merges the chunks in row order into the table (`save_to_disk`): one row per
  input row, its id (`row_index`, or the values of a named `id_column`) and its caption, null where the image could
  not be decoded; then `skipped_rows.json` and `anchorclip_provenance.json`. The trainer joins the table to the
  finetune images by id (`anchorclip.data.join_captions`) and leaves the null-caption rows out.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import datasets
import torch
from tqdm.auto import tqdm

from anchorclip._embedding import model_fingerprint
from anchorclip.data import (
    IMAGE_COLUMNS,
    ROW_INDEX_COLUMN,
    decode_image,
    find_column,
    load_dataset_any,
    with_raw_images,
)

logger = logging.getLogger(__name__)

SHARDS_DIR = "_shards"
MANIFEST_FILE = "manifest.json"
SKIPPED_ROWS_FILE = "skipped_rows.json"
PROVENANCE_FILE = "anchorclip_provenance.json"
BARRIER_TIMEOUT_HOURS = 12
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ---------------------------------------------------------------------------------------------------------------
# The captioner: model + processor, with one code path for every supported model family
# ---------------------------------------------------------------------------------------------------------------


class CaptionPreprocessor:
    """Turns PIL images into model inputs. Holds no model, so DataLoader workers can run it in parallel."""

    def __init__(
        self,
        processor=None,
        image_processor=None,
        tokenizer=None,
        *,
        prompt: str | None = None,
        chat_template: bool = False,
        is_encoder_decoder: bool = False,
        decoder_start_token_id: int | None = None,
        strip_trailing_sep: bool = False,
    ):
        if processor is None and image_processor is None:
            raise ValueError("A captioner needs either a processor or an image processor.")
        self.processor = processor
        self.image_processor = image_processor
        self.tokenizer = tokenizer if tokenizer is not None else getattr(processor, "tokenizer", None)
        self.prompt = prompt or None
        self.is_encoder_decoder = is_encoder_decoder
        self.decoder_start_token_id = decoder_start_token_id
        self.strip_trailing_sep = strip_trailing_sep
        self.text = self._build_text(chat_template)

    def _build_text(self, chat_template: bool) -> str | None:
        if not chat_template:
            return self.prompt
        # Chat VLMs (Qwen2-VL, SmolVLM, LLaVA, ...) need the image placeholder and the role markup of their template.
        template_owner = self.processor if self.processor is not None else self.tokenizer
        content: list[dict[str, str]] = [{"type": "image"}]
        content.append({"type": "text", "text": self.prompt or "Describe this image in one sentence."})
        messages = [{"role": "user", "content": content}]
        return template_owner.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def __call__(self, images: list) -> dict[str, torch.Tensor]:
        if self.processor is not None:
            if self.text is None:
                return dict(self.processor(images=images, return_tensors="pt"))
            text = [self.text] * len(images)
            inputs = dict(self.processor(images=images, text=text, return_tensors="pt", padding=True))
            if self.strip_trailing_sep and "input_ids" in inputs:
                # GIT's BERT tokenizer ends the prompt with [SEP]; generation must continue the prompt instead.
                sep = getattr(self.tokenizer, "sep_token_id", None)
                if sep is not None and bool((inputs["input_ids"][:, -1] == sep).all()):
                    for key in ("input_ids", "attention_mask", "token_type_ids"):
                        if key in inputs:
                            inputs[key] = inputs[key][:, :-1]
            return inputs

        inputs = {"pixel_values": self.image_processor(images, return_tensors="pt")["pixel_values"]}
        if self.text is not None:
            if self.tokenizer is None:
                raise ValueError("A prompt needs a tokenizer, and none was found next to the image processor.")
            ids = self.tokenizer(self.text, add_special_tokens=False)["input_ids"]
            if self.is_encoder_decoder:  # e.g. VisionEncoderDecoderModel: the prompt starts the decoder
                ids = [self.decoder_start_token_id, *ids]
                inputs["decoder_input_ids"] = torch.tensor([ids] * len(images))
            else:
                inputs["input_ids"] = torch.tensor([ids] * len(images))
        return inputs


class Captioner:
    """A pretrained captioning model with its preprocessing, generation settings and caption clean-up.

    Works with `AutoModelForImageTextToText` models (BLIP, BLIP-2, GIT, Florence-2, chat VLMs, and
    `VisionEncoderDecoderModel`), and with remote-code `AutoModelForCausalLM` captioners.
    """

    def __init__(
        self,
        model,
        preprocessor: CaptionPreprocessor,
        *,
        max_new_tokens: int = 30,
        num_beams: int = 1,
        generation_kwargs: dict[str, Any] | None = None,
    ):
        self.model = model.eval()
        self.preprocessor = preprocessor
        self.max_new_tokens = max_new_tokens
        self.num_beams = num_beams
        self.generation_kwargs = dict(generation_kwargs or {})
        if self.generation_kwargs.get("do_sample"):
            logger.warning("do_sample=True: captions are random, and a resumed run will differ from a fresh one.")
        generation_config = getattr(model, "generation_config", None)
        tokenizer = preprocessor.tokenizer
        # Small checkpoints (and hand-assembled VisionEncoderDecoder models) often lack this; generate() needs it.
        if generation_config is not None and generation_config.pad_token_id is None:
            generation_config.pad_token_id = generation_config.eos_token_id or getattr(tokenizer, "pad_token_id", None)

    @classmethod
    def from_pretrained(
        cls,
        model_name_or_path: str,
        *,
        dtype: str | torch.dtype = "auto",
        device: str | torch.device | None = None,
        prompt: str | None = None,
        chat_template: bool = False,
        max_new_tokens: int = 30,
        num_beams: int = 1,
        generation_kwargs: dict[str, Any] | None = None,
        trust_remote_code: bool = False,
    ) -> Captioner:
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model = load_captioning_model(model_name_or_path, resolve_dtype(dtype, device), trust_remote_code)
        model.to(device)
        preprocessor = load_preprocessor(model, model_name_or_path, prompt, chat_template, trust_remote_code)
        return cls(
            model,
            preprocessor,
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            generation_kwargs=generation_kwargs,
        )

    @property
    def name_or_path(self) -> str:
        return str(getattr(self.model, "name_or_path", "") or type(self.model).__name__)

    @property
    def generation_settings(self) -> dict[str, Any]:
        """Everything that changes the captions; recorded in the provenance and checked when resuming."""
        return {
            "max_new_tokens": self.max_new_tokens,
            "num_beams": self.num_beams,
            "prompt": self.preprocessor.prompt,
            "model_input_text": self.preprocessor.text,
            "dtype": str(self.model.dtype).replace("torch.", ""),
            "generation_kwargs": self.generation_kwargs,
        }

    @torch.inference_mode()
    def generate(self, inputs: dict[str, torch.Tensor]) -> list[str]:
        """Captions for a batch of preprocessed inputs (see `CaptionPreprocessor`)."""
        device, dtype = self.model.device, self.model.dtype
        inputs = {
            key: value.to(device, dtype=dtype if value.is_floating_point() else None)
            if isinstance(value, torch.Tensor)
            else value
            for key, value in inputs.items()
        }
        if "token_type_ids" in inputs and "token_type_ids" not in inspect.signature(self.model.forward).parameters:
            inputs.pop("token_type_ids")  # BERT-style tokenizers (GIT, BLIP) add it; generate() rejects unused inputs
        # max_length=None: a checkpoint's saved max_length would otherwise trigger a warning on every batch.
        kwargs = {"max_new_tokens": self.max_new_tokens, "max_length": None, "num_beams": self.num_beams,
                  "do_sample": False}
        outputs = self.model.generate(**inputs, **{**kwargs, **self.generation_kwargs})
        outputs = outputs.sequences if hasattr(outputs, "sequences") else outputs
        # Decoder-only models (and prompted decoders) return prompt + continuation; keep the continuation.
        for key in ("decoder_input_ids", "input_ids"):
            prefix = inputs.get(key)
            length = prefix.shape[1] if prefix is not None else 0
            if length and outputs.shape[1] >= length and torch.equal(outputs[:, :length].to(prefix.device), prefix):
                outputs = outputs[:, length:]
                break
        decoder = self.preprocessor.tokenizer or self.preprocessor.processor
        texts = decoder.batch_decode(outputs, skip_special_tokens=True)
        return [self._clean(text) for text in texts]

    def _clean(self, text: str) -> str:
        text = " ".join(text.split())
        # Some models (BLIP with a text prompt, GIT) echo the prompt even when the ids were not a plain prefix.
        prompt = " ".join((self.preprocessor.prompt or "").split())
        if prompt and text.lower().startswith(prompt.lower()):
            text = text[len(prompt) :].strip()
        return text

    def __call__(self, images: list) -> list[str]:
        return self.generate(self.preprocessor(images))


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """`"auto"` is bf16 on GPUs that support it, else fp16 on GPU, and fp32 on CPU (CPU half precision is slow)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}; use one of {['auto', *DTYPES]}.")
    return DTYPES[dtype]


def load_captioning_model(model_name_or_path: str, dtype: torch.dtype, trust_remote_code: bool = False):
    """Load any HF captioner: `AutoModelForImageTextToText` first (it covers what the old "image-to-text" task
    and `AutoModelForVision2Seq` covered, including `VisionEncoderDecoderModel`), then remote-code causal LMs."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    errors = []
    for auto_class in (AutoModelForImageTextToText, AutoModelForCausalLM):
        try:
            return auto_class.from_pretrained(model_name_or_path, dtype=dtype, trust_remote_code=trust_remote_code)
        except ValueError as error:  # "Unrecognized configuration class ... for this kind of AutoModel"
            errors.append(f"{auto_class.__name__}: {str(error).splitlines()[0]}")
    raise ValueError(
        f"{model_name_or_path!r} is not a captioning model that anchorclip can load:\n" + "\n".join(errors)
    )


def load_preprocessor(
    model, model_name_or_path: str, prompt: str | None, chat_template: bool, trust_remote_code: bool = False
) -> CaptionPreprocessor:
    """`AutoProcessor` when the checkpoint has a multimodal processor, else image processor + tokenizer.

    `AutoProcessor` quietly returns a bare tokenizer or image processor when there is no processor class (as for
    `VisionEncoderDecoderModel` checkpoints), so the result is checked rather than trusted.
    """
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer, ProcessorMixin

    is_encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
    try:
        processor = AutoProcessor.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError, KeyError) as error:
        logger.debug("AutoProcessor failed for %s: %s", model_name_or_path, error)
        processor = None
    if isinstance(processor, ProcessorMixin) and getattr(processor, "image_processor", None) is not None:
        tokenizer = getattr(processor, "tokenizer", None)
        if tokenizer is not None and not is_encoder_decoder:
            tokenizer.padding_side = "left"  # decoder-only generation continues from the right edge
        return CaptionPreprocessor(
            processor,
            prompt=prompt,
            chat_template=chat_template,
            is_encoder_decoder=is_encoder_decoder,
            strip_trailing_sep=getattr(model.config, "model_type", None) == "git",
        )

    image_processor = AutoImageProcessor.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
    decoder_start = getattr(model.generation_config, "decoder_start_token_id", None)
    if decoder_start is None:
        decoder_start = getattr(model.config, "decoder_start_token_id", None)
    if is_encoder_decoder and decoder_start is None:
        decoder_start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
        model.generation_config.decoder_start_token_id = decoder_start
        logger.warning(
            "%s has no decoder_start_token_id; using %s from the tokenizer.", model_name_or_path, decoder_start
        )
    return CaptionPreprocessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        prompt=prompt,
        chat_template=chat_template,
        is_encoder_decoder=is_encoder_decoder,
        decoder_start_token_id=decoder_start,
    )


# ---------------------------------------------------------------------------------------------------------------
# Work plan: chunks of rows, each process's share, batches that never cross a chunk
# ---------------------------------------------------------------------------------------------------------------


def plan_chunks(num_rows: int, shard_size: int) -> list[range]:
    """Fixed chunks of row indices; independent of the process count so that resuming on other hardware works."""
    return [range(start, min(start + shard_size, num_rows)) for start in range(0, num_rows, shard_size)]


def chunks_for_process(chunks: list[range], process_index: int, num_processes: int, sharding: str) -> list[range]:
    """This process's chunks: every `num_processes`-th one ("strided", balances slow regions of a dataset across
    processes) or one contiguous block ("contiguous")."""
    if sharding == "strided":
        return chunks[process_index::num_processes]
    if sharding == "contiguous":
        per_process, extra = divmod(len(chunks), num_processes)
        start = process_index * per_process + min(process_index, extra)
        return chunks[start : start + per_process + (process_index < extra)]
    raise ValueError(f"sharding must be 'strided' or 'contiguous', not {sharding!r}.")


def chunk_path(shards_dir: Path, chunk: range) -> Path:
    return shards_dir / f"rows-{chunk.start:010d}-{chunk.stop:010d}.json"


def read_chunk(shards_dir: Path, chunk: range) -> dict[str, Any] | None:
    """A finished chunk, or None if it is missing or was cut short (a half-written file is never renamed in place,
    but be lenient with files copied around by hand)."""
    try:
        record = json.loads(chunk_path(shards_dir, chunk).read_text())
    except (OSError, ValueError):
        return None
    return record if len(record.get("captions", ())) == len(chunk) else None


def write_json_atomic(path: Path, payload: Any) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(payload, indent=1, ensure_ascii=False))
    os.replace(temporary, path)  # a reader sees the old file or the whole new one, never half of it


class _BatchLoader(torch.utils.data.Dataset):
    """Item `i` is batch `i` of the plan: decoded and preprocessed (in DataLoader workers when `num_workers > 0`)."""

    def __init__(self, dataset: datasets.Dataset, image_column: str, batches: list[list[int]], preprocessor):
        self.dataset = dataset.select_columns([image_column])
        self.image_column = image_column
        self.batches = batches
        self.preprocessor = preprocessor

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rows = self.batches[index]
        cells = self.dataset[rows][self.image_column]
        images, good, bad = [], [], []
        for row, cell in zip(rows, cells, strict=True):
            image = decode_image(cell)
            (bad if image is None else good).append(row)
            if image is not None:
                images.append(image)
        try:
            inputs = self.preprocessor(images) if images else None
        except Exception as error:  # noqa: BLE001 - one odd image must not cost the whole batch
            logger.debug("Batch preprocessing failed (%s); retrying image by image.", error)
            return self._one_by_one(rows, good, bad, images)
        return {"rows": rows, "good": good, "bad": bad, "inputs": inputs}

    def _one_by_one(self, rows, good, bad, images) -> dict[str, Any]:
        # The preprocessor was checked on a clean image before the run, so a failure here is the image's fault
        # (a 1x1 or 16-bit image, an odd mode the processor rejects): count it as undecodable.
        kept_rows, kept_images = [], []
        for row, image in zip(good, images, strict=True):
            try:
                self.preprocessor([image])
            except Exception:  # noqa: BLE001
                bad.append(row)
                continue
            kept_rows.append(row)
            kept_images.append(image)
        inputs = self.preprocessor(kept_images) if kept_images else None
        return {"rows": rows, "good": kept_rows, "bad": sorted(bad), "inputs": inputs}


def _first(batch):  # DataLoader(batch_size=None) collate: items are already batches
    return batch


# ---------------------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------------------


def caption_dataset(
    dataset: str | datasets.Dataset,
    model_name_or_path: str | Captioner,
    output_dir: str | os.PathLike,
    *,
    split: str = "train",
    image_column: str | None = None,
    id_column: str | None = None,
    caption_column: str = "caption",
    batch_size: int = 32,
    max_new_tokens: int = 30,
    num_beams: int = 1,
    prompt: str | None = None,
    chat_template: bool = False,
    generation_kwargs: dict[str, Any] | None = None,
    dtype: str = "auto",
    shard_size: int = 1024,
    sharding: str = "strided",
    num_workers: int = 4,
    resume: bool = True,
    max_rows: int | None = None,
    trust_remote_code: bool = False,
    push_to_hub: str | None = None,
    progress: bool = True,
) -> datasets.Dataset:
    """Caption every image of `dataset` and save the captions, keyed by row id, to `output_dir`.

    Args:
        dataset: a `datasets.Dataset`, or a spec for `load_dataset_any` (Hub id, image folder, `save_to_disk`
            folder; `"spec:split"` picks the split).
        model_name_or_path: a captioner checkpoint (Hub id or local folder), or a ready `Captioner` (whose own
            generation settings then win over `max_new_tokens`, `num_beams`, `prompt`, ...).
        output_dir: where the captions table, `_shards/`, `skipped_rows.json` and the provenance are written.
        id_column: a column of `dataset` with a unique, stable id per row (e.g. an image file name), the table's key;
            default: the row index (`row_index`), which holds as long as the finetune set keeps its row order.
        batch_size: images per `generate` call. Part of the resume check: batch composition can change
            low-precision numerics, so a resumed run must use the same value to reproduce a fresh run exactly.
        prompt: text prompt / prefix for models that take one (BLIP, BLIP-2, GIT, Florence-2 task tokens such as
            `"<MORE_DETAILED_CAPTION>"`); echoed prompts are stripped from the caption.
        chat_template: wrap `prompt` in the processor's chat template with an image placeholder (chat VLMs).
        generation_kwargs: any other `generate` argument (`repetition_penalty`, `min_new_tokens`, ...).
        dtype: `"auto"` (bf16/fp16 on GPU, fp32 on CPU), `"float32"`, `"bfloat16"` or `"float16"`.
        shard_size: rows per chunk file under `_shards/`; at most this much work is lost on interruption.
            Best a multiple of `batch_size`.
        sharding: how processes split the chunks: `"strided"` (default, balances load) or `"contiguous"`.
        num_workers: DataLoader workers that decode and preprocess images while the model generates.
        resume: reuse finished chunks from an earlier run into the same `output_dir`; False starts over.
        max_rows: caption only the first `max_rows` rows (a trial run before hours of compute).
        push_to_hub: also push the result to this Hub dataset repo id.

    Returns:
        The captions table: one row per input row, in input order, with columns `id_column` (or `row_index`) and
        `caption_column`; the caption is None where the image could not be decoded.
    """
    state = process_state()
    started = time.time()
    output_dir = Path(output_dir)
    shards_dir = output_dir / SHARDS_DIR

    # -- inputs, checked before any model is loaded ------------------------------------------------------------
    dataset_spec = dataset if isinstance(dataset, str) else None
    if isinstance(dataset, str):
        dataset = load_dataset_any(dataset, split=split)
    if isinstance(dataset, datasets.DatasetDict):
        raise TypeError(f"Got a DatasetDict with splits {list(dataset)}; pass one split, e.g. dataset['train'].")
    if not isinstance(dataset, datasets.Dataset):
        raise TypeError(
            f"Captioning needs a map-style datasets.Dataset (random access), not {type(dataset).__name__}."
        )
    if max_rows is not None:
        dataset = dataset.select(range(min(max_rows, len(dataset))))
    if len(dataset) == 0:
        raise ValueError(f"The dataset {dataset_spec or ''} has no rows: nothing to caption.".replace("  ", " "))
    image_column = find_column(dataset, image_column, IMAGE_COLUMNS, "image")
    ids = _row_ids(dataset, id_column)
    key_column = id_column or ROW_INDEX_COLUMN
    if caption_column == key_column:
        raise ValueError(f"The caption column and the id column are both named {caption_column!r}.")
    cache_dirs = {Path(f["filename"]).resolve().parent for f in dataset.cache_files}
    if output_dir.resolve() in cache_dirs:
        raise ValueError(f"output_dir {output_dir} holds the input dataset itself; write the captions elsewhere.")
    if batch_size < 1 or shard_size < 1:
        raise ValueError("batch_size and shard_size must be positive.")
    raw = with_raw_images(dataset, image_column)

    # -- the captioner -------------------------------------------------------------------------------------------
    if isinstance(model_name_or_path, Captioner):
        captioner = model_name_or_path
    else:
        captioner = Captioner.from_pretrained(
            model_name_or_path,
            dtype=dtype,
            device=state.device,
            prompt=prompt,
            chat_template=chat_template,
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            generation_kwargs=generation_kwargs,
            trust_remote_code=trust_remote_code,
        )

    # Fail here, with the real error, if the processor cannot handle a clean image at all (wrong prompt, missing
    # tokenizer, ...): during the run a preprocessing failure is blamed on the image and the row is skipped.
    from PIL import Image

    captioner.preprocessor([Image.new("RGB", (64, 64), (128, 128, 128))])

    # -- resume bookkeeping: what the chunks on disk were computed with -------------------------------------------
    manifest = {
        "captioner": captioner.name_or_path,
        "captioner_weights": model_fingerprint(captioner.model),  # new weights under the same name: no reuse
        "generation": captioner.generation_settings,
        "dataset": _dataset_signature(raw, image_column),
        "image_column": image_column,
        "id_column": id_column,
        "shard_size": shard_size,
        "batch_size": batch_size,
    }
    manifest = json.loads(json.dumps(manifest))  # normalise tuples etc. so the comparison below is exact
    if state.is_main_process:
        if not resume and shards_dir.exists():
            shutil.rmtree(shards_dir)
        shards_dir.mkdir(parents=True, exist_ok=True)
        if not (shards_dir / MANIFEST_FILE).exists():
            write_json_atomic(shards_dir / MANIFEST_FILE, manifest)
    state.wait_for_everyone()
    previous = json.loads((shards_dir / MANIFEST_FILE).read_text())
    if previous != manifest:
        changed = sorted(key for key in manifest.keys() | previous.keys() if manifest.get(key) != previous.get(key))
        raise ValueError(
            f"{shards_dir} holds chunks computed with other settings (differences in: {', '.join(changed)}). "
            f"Use the same settings to resume, another output_dir, or resume=False (--no-resume) to start over."
        )

    # -- this process's share ---------------------------------------------------------------------------------
    # The *pending* chunks are shared out, not all chunks, so that a resumed run keeps every process busy (a process
    # with nothing left would otherwise wait in the barrier below for hours). Every process lists the same files:
    # nobody writes a chunk before the second barrier.
    chunks = plan_chunks(len(raw), shard_size)
    pending = [chunk for chunk in chunks if read_chunk(shards_dir, chunk) is None]
    state.wait_for_everyone()
    if len(pending) < len(chunks):
        logger.info("Resuming: %d of %d chunks are already captioned.", len(chunks) - len(pending), len(chunks))
    mine = chunks_for_process(pending, state.process_index, state.num_processes, sharding)
    _caption_chunks(captioner, raw, image_column, mine, shards_dir, batch_size, num_workers, state, progress)

    # -- merge, in row order, on the main process -----------------------------------------------------------------
    state.wait_for_everyone()
    if state.is_main_process:
        captions = _merge(chunks, shards_dir)
        skipped = [row for row, caption in enumerate(captions) if caption is None]
        num_empty = sum(1 for caption in captions if caption == "")
        key_feature = dataset.features[id_column] if id_column else datasets.Value("int64")
        features = datasets.Features({key_column: key_feature, caption_column: datasets.Value("string")})
        output = datasets.Dataset.from_dict({key_column: ids, caption_column: captions}, features=features)
        output.save_to_disk(str(output_dir))
        write_json_atomic(
            output_dir / SKIPPED_ROWS_FILE,
            {"count": len(skipped), "rows": skipped, "ids": [ids[row] for row in skipped]},
        )
        if skipped:
            logger.warning(
                "Could not decode %d image(s): their caption is null, and training leaves them out (rows in %s).",
                len(skipped),
                output_dir / SKIPPED_ROWS_FILE,
            )
        if num_empty:
            logger.warning("%d image(s) got an empty caption; check max_new_tokens and the prompt.", num_empty)
        write_json_atomic(
            output_dir / PROVENANCE_FILE,
            {
                "anchorclip_version": _version("anchorclip"),
                "transformers_version": _version("transformers"),
                "captioner": captioner.name_or_path,
                "captioner_class": type(captioner.model).__name__,
                "captioner_commit": getattr(captioner.model.config, "_commit_hash", None),
                "generation": captioner.generation_settings,
                "dataset": dataset_spec,
                "split": split if dataset_spec else None,
                "dataset_fingerprint": getattr(dataset, "_fingerprint", None),
                "image_column": image_column,
                "id_column": key_column,
                "caption_column": caption_column,
                "counts": {
                    "input_rows": len(dataset),
                    "captioned": len(dataset) - len(skipped),
                    "skipped": len(skipped),
                    "empty_captions": num_empty,
                },
                "batch_size": batch_size,
                "shard_size": shard_size,
                "sharding": sharding,
                "num_processes": state.num_processes,
                "max_rows": max_rows,
                "wall_seconds": round(time.time() - started, 2),
            },
        )
        if push_to_hub:
            output.push_to_hub(push_to_hub)
        logger.info("Wrote %d captions to %s.", len(output) - len(skipped), output_dir)
    state.wait_for_everyone()
    return output if state.is_main_process else datasets.load_from_disk(str(output_dir))


def _caption_chunks(
    captioner: Captioner,
    raw: datasets.Dataset,
    image_column: str,
    chunks: list[range],
    shards_dir: Path,
    batch_size: int,
    num_workers: int,
    state,
    progress: bool,
) -> None:
    """Caption `chunks` batch by batch and write each chunk's file as soon as its last batch is done."""
    plan = [
        (chunk, list(range(start, min(start + batch_size, chunk.stop))))
        for chunk in chunks
        for start in range(chunk.start, chunk.stop, batch_size)
    ]
    loader = torch.utils.data.DataLoader(
        _BatchLoader(raw, image_column, [rows for _, rows in plan], captioner.preprocessor),
        batch_size=None,
        num_workers=num_workers,
        collate_fn=_first,
        prefetch_factor=4 if num_workers > 0 else None,
    )
    bar = tqdm(
        total=sum(len(chunk) for chunk in chunks),
        unit="img",
        desc=f"captioning (process {state.process_index + 1}/{state.num_processes})",
        disable=not progress or not state.is_local_main_process,
        dynamic_ncols=True,
    )
    captions: dict[int, str | None] = {}
    started, generated = time.time(), 0
    for (chunk, _), batch in zip(plan, loader, strict=True):
        texts = captioner.generate(batch["inputs"]) if batch["good"] else []
        captions.update(zip(batch["good"], texts, strict=True))
        captions.update((row, None) for row in batch["bad"])  # None marks an undecodable image
        generated += len(batch["good"])
        bar.update(len(batch["rows"]))
        if batch["rows"][-1] == chunk.stop - 1:  # the chunk's last batch: persist it
            texts = [captions.pop(row) for row in chunk]
            record = {
                "start": chunk.start,
                "stop": chunk.stop,
                "captions": texts,
                "skipped": [row for row, text in zip(chunk, texts, strict=True) if text is None],
            }
            write_json_atomic(chunk_path(shards_dir, chunk), record)
    bar.close()
    elapsed = time.time() - started
    if generated:
        logger.info(
            "Process %d captioned %d images in %.1fs (%.1f images/s).",
            state.process_index,
            generated,
            elapsed,
            generated / max(elapsed, 1e-9),
        )


def _merge(chunks: list[range], shards_dir: Path) -> list[str | None]:
    """Every row's caption in row order (None: undecodable image), from the chunk files of all processes."""
    captions: list[str | None] = []
    missing = []
    for chunk in chunks:
        record = read_chunk(shards_dir, chunk)
        if record is None:
            missing.append(f"{chunk.start}-{chunk.stop}")
            continue
        captions.extend(record["captions"])
    if missing:
        raise RuntimeError(f"Chunks missing after all processes finished: rows {missing[:10]} (of {len(missing)}).")
    return captions


def _row_ids(dataset: datasets.Dataset, id_column: str | None) -> list:
    """The table's key: the row index, or the values of `id_column`, which must be unique and non-null."""
    if id_column is None:
        return list(range(len(dataset)))
    find_column(dataset, id_column, (), "id")
    ids = dataset.select_columns([id_column])[id_column]
    if any(value is None for value in ids) or len(set(ids)) != len(ids):
        raise ValueError(f"The id column {id_column!r} must hold a unique, non-null value in every row.")
    return ids


def _dataset_signature(raw: datasets.Dataset, image_column: str) -> dict[str, Any]:
    """Identify the input cheaply (in-memory datasets get a random fingerprint, so that cannot be used): the
    length, the columns, and a hash of a few image cells."""
    digest = hashlib.sha256()
    for row in sorted({0, len(raw) // 2, len(raw) - 1}):
        cell = raw[row][image_column]
        if isinstance(cell, dict):
            digest.update(cell.get("bytes") or str(cell.get("path")).encode())
        else:
            digest.update(repr(cell).encode())
    return {"num_rows": len(raw), "columns": raw.column_names, "sample_sha256": digest.hexdigest()[:16]}


def process_state():
    """Accelerate's view of the launch (one process, or one of `accelerate launch`/`torchrun`'s processes).

    Without a GPU, Accelerate only joins a torchrun-style process group when asked for the CPU explicitly;
    otherwise every process would believe it is alone and caption everything. The long timeout is for the final
    barrier: processes can finish their shares minutes apart, and the default (10-30 minutes) would kill the run.
    """
    from accelerate import PartialState

    cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")
    return PartialState(cpu=cpu, timeout=timedelta(hours=BARRIER_TIMEOUT_HOURS))


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


# ---------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anchorclip caption",
        description="Caption an image dataset with any HF captioning model (text-compensated anchors for ARF).",
    )
    parser.add_argument("--dataset", required=True, help="Hub id, image folder, or save_to_disk folder (spec:split).")
    parser.add_argument("--model", required=True, help="Captioner: Hub id or local folder (BLIP, BLIP-2, GIT, ...).")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--image-column", default=None, help=f"Default: the first of {list(IMAGE_COLUMNS)}.")
    parser.add_argument(
        "--id-column", default=None, help="A column with a unique, stable id per row (default: the row index)."
    )
    parser.add_argument("--caption-column", default="caption")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=30)
    parser.add_argument("--num-beams", type=int, default=1)
    parser.add_argument("--prompt", default=None, help='Text prompt / prefix, e.g. "a photo of" or "<CAPTION>".')
    parser.add_argument("--chat-template", action="store_true", help="Wrap the prompt in the chat template.")
    parser.add_argument(
        "--generation-kwargs",
        type=json.loads,
        default=None,
        help="More generate() arguments as JSON: '{\"min_new_tokens\": 5}'",
    )
    parser.add_argument("--dtype", default="auto", choices=["auto", *DTYPES])
    parser.add_argument("--shard-size", type=int, default=1024, help="Rows per resumable chunk file.")
    parser.add_argument("--sharding", default="strided", choices=["strided", "contiguous"])
    parser.add_argument("--num-workers", type=int, default=4, help="DataLoader workers decoding images.")
    parser.add_argument("--no-resume", dest="resume", action="store_false", help="Ignore and delete old chunks.")
    parser.add_argument("--max-rows", type=int, default=None, help="Caption only the first N rows (a trial run).")
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--push-to-hub", default=None, metavar="REPO_ID")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    is_main = process_state().is_main_process
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO if is_main else logging.WARNING
    )
    caption_dataset(
        args.dataset,
        args.model,
        args.output_dir,
        **{key: value for key, value in vars(args).items() if key not in ("dataset", "model", "output_dir")},
    )
    return 0
