"""The generation loop over a process's chunks: `_CaptionBatches` decodes and preprocesses a dataset's images batch
by batch (in DataLoader workers), counting undecodable images instead of failing; `caption_chunks` captions each
chunk with a `Captioner` and writes it as one chunk file (`anchorclip.anchors.shards`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import datasets
import torch
from tqdm.auto import tqdm

from anchorclip.anchors.captions.captioner import Captioner
from anchorclip.anchors.shards import chunk_path, write_json_atomic
from anchorclip.data import decode_image

logger = logging.getLogger(__name__)


class _CaptionBatches(torch.utils.data.Dataset):
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
        images = []
        good: list[int] = []  # rows with a decodable image
        bad: list[int] = []  # rows without
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


def _keep_batch(batch):  # DataLoader(batch_size=None) collate: items are already batches
    return batch


def caption_chunks(
    captioner: Captioner,
    raw: datasets.Dataset,
    image_column: str,
    chunks: list[range],
    shards_dir: Path,
    state,
    *,
    batch_size: int,
    num_workers: int = 0,
    progress: bool = True,
) -> None:
    """Caption `chunks` of `raw` (images as stored, see `with_raw_images`) batch by batch on this process, and write
    each chunk's file to `shards_dir` (`rows-<start>-<stop>.json`) as soon as its last batch is done."""
    plan = [
        (chunk, list(range(start, min(start + batch_size, chunk.stop))))
        for chunk in chunks
        for start in range(chunk.start, chunk.stop, batch_size)
    ]
    loader = torch.utils.data.DataLoader(
        _CaptionBatches(raw, image_column, [rows for _, rows in plan], captioner.preprocessor),
        batch_size=None,
        num_workers=num_workers,
        collate_fn=_keep_batch,
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
            chunk_captions = [captions.pop(row) for row in chunk]
            record = {
                "start": chunk.start,
                "stop": chunk.stop,
                "captions": chunk_captions,
                "skipped": [row for row, text in zip(chunk, chunk_captions, strict=True) if text is None],
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
