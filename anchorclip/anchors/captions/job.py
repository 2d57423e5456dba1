"""Text-compensated anchors: caption every image of a dataset, resumably, on any number of processes.

ARF's L_caption (the paper's L_tc) pairs each finetune image with a rich caption from a captioner (BLIP-2 in the
paper). This job writes
those captions once, offline, as a *captions-only table* keyed by a stable row id (no image is copied):

    anchorclip caption --dataset_name path/or/hub-id --captioner Salesforce/blip2-opt-2.7b --output_dir out/
    accelerate launch -m anchorclip caption ...        # several GPUs, one share of the rows each

One settings object per job: `CaptionArguments` (what `anchorclip caption` parses) goes whole to
`run_captioning`, and is recorded whole in the provenance. `caption_dataset(dataset, captioner, output_dir,
**options)` is the keyword form of the same call.

How a run is organised (so that it can be interrupted and resumed, on any number of processes):

* The rows are cut into fixed *chunks* of `shard_size` rows (`anchorclip.anchors.shards`). Chunks do not depend on
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

import dataclasses
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import datasets

from anchorclip.anchors.captions.args import CaptionArguments
from anchorclip.anchors.captions.captioner import Captioner
from anchorclip.anchors.captions.chunks import caption_chunks
from anchorclip.anchors.pool.store import model_fingerprint
from anchorclip.anchors.shards import (
    chunks_for_process,
    open_shards_dir,
    pending_chunks,
    plan_chunks,
    read_chunk,
    write_json_atomic,
)
from anchorclip.data import IMAGE_COLUMNS, ROW_INDEX_COLUMN, find_column, load_dataset_any, with_raw_images
from anchorclip.distributed import process_state
from anchorclip.filesystems import probe_folder, sync_folder

logger = logging.getLogger(__name__)

SHARDS_DIR = "_shards"
SKIPPED_ROWS_FILE = "skipped_rows.json"
PROVENANCE_FILE = "anchorclip_provenance.json"


def caption_dataset(
    dataset: str | datasets.Dataset,
    model_name_or_path: str | Captioner,
    output_dir: str | os.PathLike,
    **options: Any,
) -> datasets.Dataset:
    """Caption every image of `dataset` and save the captions, keyed by row id, to `output_dir`.

    The keyword form of `run_captioning(CaptionArguments(...), dataset, captioner)`.

    Args:
        dataset: a `datasets.Dataset`, or a spec for `load_dataset_any` (Hub id, image folder, `save_to_disk`
            folder; `"spec:split"` or `dataset_split=` picks the split).
        model_name_or_path: a captioner checkpoint (Hub id or local folder), or a ready `Captioner` (whose own
            generation settings then win over `max_new_tokens`, `num_beams`, `prompt`, ...).
        output_dir: where the captions table, `_shards/`, `skipped_rows.json` and the provenance are written.
        options: any other `CaptionArguments` field (`batch_size`, `id_column`, `max_rows`, `resume`, ...);
            `split` is accepted for `dataset_split`.

    Returns:
        The captions table (see `run_captioning`).
    """
    if "split" in options:
        options["dataset_split"] = options.pop("split")
    captioner = model_name_or_path if isinstance(model_name_or_path, Captioner) else None
    args = CaptionArguments(
        captioner=model_name_or_path.name_or_path if isinstance(model_name_or_path, Captioner) else model_name_or_path,
        output_dir=os.fspath(output_dir),
        dataset_name=dataset if isinstance(dataset, str) else None,
        **options,
    )
    return run_captioning(args, None if isinstance(dataset, str) else dataset, captioner=captioner)


def run_captioning(
    args: CaptionArguments, dataset: datasets.Dataset | None = None, captioner: Captioner | None = None
) -> datasets.Dataset:
    """Run the captioning job `args` describes and return the captions table.

    Args:
        args: the job's settings (see `CaptionArguments`). `args.captioner` and `args.dataset_name` name what is
            loaded unless `captioner` / `dataset` are given.
        dataset: the images, already loaded (then `args.dataset_name` is only a label; leave it None for a set
            that was filtered or subsampled).
        captioner: a ready `Captioner`, whose own generation settings win over `args`.

    Returns:
        One row per input row, in input order, with columns `id_column` (or `row_index`) and `caption_column`; the
        caption is None where the image could not be decoded.
    """
    state = process_state()
    started = time.time()
    if args.output_dir is None:
        raise ValueError("CaptionArguments.output_dir is required.")
    output_dir = Path(args.output_dir)
    shards_dir = output_dir / SHARDS_DIR

    # -- inputs, checked before any model is loaded ------------------------------------------------------------
    dataset_spec = args.dataset_name if dataset is None else None
    if dataset is None:
        if args.dataset_name is None:
            raise ValueError("Nothing to caption: give a dataset or CaptionArguments.dataset_name.")
        dataset = load_dataset_any(args.dataset_name, split=args.dataset_split)
    dataset = _checked_rows(dataset, args.max_rows, dataset_spec)
    image_column = find_column(dataset, args.image_column, IMAGE_COLUMNS, "image")
    ids = _row_ids(dataset, args.id_column)
    key_column = args.id_column or ROW_INDEX_COLUMN
    if args.caption_column == key_column:
        raise ValueError(f"The caption column and the id column are both named {args.caption_column!r}.")
    cache_dirs = {Path(f["filename"]).resolve().parent for f in dataset.cache_files}
    if output_dir.resolve() in cache_dirs:
        raise ValueError(f"output_dir {output_dir} holds the input dataset itself; write the captions elsewhere.")
    raw = with_raw_images(dataset, image_column)

    # -- the captioner -------------------------------------------------------------------------------------------
    if captioner is None:
        if args.captioner is None:
            raise ValueError("No captioner: give a Captioner or CaptionArguments.captioner.")
        captioner = Captioner.from_pretrained(
            args.captioner,
            dtype=args.dtype,
            device=state.device,
            prompt=args.prompt,
            chat_template=args.chat_template,
            max_new_tokens=args.max_new_tokens,
            num_beams=args.num_beams,
            # a dict or None once CaptionArguments.__post_init__ has parsed a JSON string
            generation_kwargs=args.generation_kwargs if isinstance(args.generation_kwargs, dict) else None,
            trust_remote_code=args.trust_remote_code,
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
        "id_column": args.id_column,
        "shard_size": args.shard_size,
        "batch_size": args.batch_size,
    }
    # The output folder may be shared by the machines or be each machine's own (anchorclip.filesystems): each copy
    # gets the chunks every process finished, so all processes agree on what is pending and every copy can merge.
    layout = probe_folder(output_dir)
    open_shards_dir(shards_dir, manifest, state, resume=args.resume, is_writer=layout.is_writer)
    shards = probe_folder(shards_dir)
    sync_folder(shards)

    # -- this process's share ---------------------------------------------------------------------------------
    # The *pending* chunks are shared out, not all chunks, so that a resumed run keeps every process busy (a process
    # with nothing left would otherwise wait in the barrier below for hours). Every process lists the same files:
    # nobody writes a chunk before the second barrier.
    chunks = plan_chunks(len(raw), args.shard_size)
    pending = pending_chunks(shards_dir, chunks)
    state.wait_for_everyone()
    if len(pending) < len(chunks):
        logger.info("Resuming: %d of %d chunks are already captioned.", len(chunks) - len(pending), len(chunks))
    mine = chunks_for_process(pending, state.process_index, state.num_processes, args.sharding)
    caption_chunks(
        captioner,
        raw,
        image_column,
        mine,
        shards_dir,
        state,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        progress=args.progress,
    )

    # -- merge, in row order, by each copy's writer ----------------------------------------------------------------
    state.wait_for_everyone()
    sync_folder(shards)
    if layout.is_writer:
        captions = _merge(chunks, shards_dir)
        skipped = [row for row, caption in enumerate(captions) if caption is None]
        num_empty = sum(1 for caption in captions if caption == "")
        key_feature = dataset.features[args.id_column] if args.id_column else datasets.Value("int64")
        features = datasets.Features({key_column: key_feature, args.caption_column: datasets.Value("string")})
        output = datasets.Dataset.from_dict({key_column: ids, args.caption_column: captions}, features=features)
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
                "split": args.dataset_split if dataset_spec else None,
                "dataset_fingerprint": getattr(dataset, "_fingerprint", None),
                "image_column": image_column,
                "id_column": key_column,
                "caption_column": args.caption_column,
                "counts": {
                    "input_rows": len(dataset),
                    "captioned": len(dataset) - len(skipped),
                    "skipped": len(skipped),
                    "empty_captions": num_empty,
                },
                "batch_size": args.batch_size,
                "shard_size": args.shard_size,
                "sharding": args.sharding,
                "num_processes": state.num_processes,
                "max_rows": args.max_rows,
                "wall_seconds": round(time.time() - started, 2),
                "arguments": dataclasses.asdict(args),  # the job's settings, whole
            },
        )
        if args.push_to_hub and state.is_main_process:
            output.push_to_hub(args.push_to_hub)
        logger.info("Wrote %d captions to %s.", len(output) - len(skipped), output_dir)
    state.wait_for_everyone()
    return output if layout.is_writer else datasets.load_from_disk(str(output_dir))


def _checked_rows(dataset, max_rows: int | None, spec: str | None) -> datasets.Dataset:
    if isinstance(dataset, datasets.DatasetDict):
        raise TypeError(f"Got a DatasetDict with splits {list(dataset)}; pass one split, e.g. dataset['train'].")
    if not isinstance(dataset, datasets.Dataset):
        raise TypeError(
            f"Captioning needs a map-style datasets.Dataset (random access), not {type(dataset).__name__}."
        )
    if max_rows is not None:
        dataset = dataset.select(range(min(max_rows, len(dataset))))
    if len(dataset) == 0:
        raise ValueError(f"The dataset {spec or ''} has no rows: nothing to caption.".replace("  ", " "))
    return dataset


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


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None
