"""What one training step sees: finetune images with their labels (and captions), plus retrieved pairs.

`AnchoredDataset` item `i` is a pure function of `(seed, epoch, i)`: its augmentation, its prompt
template and the retrieved pairs that ride along with it. So `resume_from_checkpoint` continues with the
same anchor order, and the number of dataloader workers or processes never changes what is trained on.
Item `i` of epoch `e` takes pairs `perm_e[i*r : (i+1)*r]` (wrapping) of a per-epoch permutation of the
pair set, so each epoch walks through all pairs before repeating one.

`AnchorCollator` builds one image batch (finetune images, then pair images) and one text batch (class
prompts, captions, pair captions) so the model runs one image pass and one text pass per step. Texts
are tokenized ahead: prompts once per run, captions once per dataset with `datasets.map`.
"""

from __future__ import annotations

import logging
import multiprocessing
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from .data import decode_image
from .transforms import ImageTransform

logger = logging.getLogger(__name__)


class UndecodableImageError(ValueError):
    pass


def _generator(*keys: int) -> torch.Generator:
    seed = 0
    for key in keys:  # a simple deterministic mix of the keys (Python's hash() is salted per process)
        seed = (seed * 1_000_003 + int(key) + 1) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)


def tokenize_column(dataset, column: str, tokenizer, max_length: int, desc: str):
    """Token ids of one text column, computed once with `datasets.map` (and cached by its fingerprint).

    Only `column` is mapped (via `select_columns`), so the image bytes are never rewritten.
    """
    texts = dataset.select_columns([column])
    return texts.map(
        lambda batch: {"input_ids": tokenizer(batch[column], truncation=True, max_length=max_length)["input_ids"]},
        batched=True,
        remove_columns=[column],
        desc=desc,
    )


def tokenize_prompts(tokenizer, class_names: list[str], templates: list[str], max_length: int) -> list[list[int]]:
    """Token ids of every class prompt, indexed `label * len(templates) + template`: tokenized once."""
    prompts = [template.format(name) for name in class_names for template in templates]
    return tokenizer(prompts, truncation=True, max_length=max_length)["input_ids"]


class AnchoredDataset(Dataset):
    def __init__(
        self,
        finetune,
        transform: ImageTransform,
        image_column: str,
        label_column: str | None,
        caption_ids=None,
        pairs=None,
        pair_image_column: str | None = None,
        pair_caption_ids=None,
        pairs_per_item: int = 0,
        num_templates: int = 1,
        seed: int = 0,
        strict_images: bool = False,
    ):
        self.finetune, self.pairs = finetune, pairs
        self.transform = transform
        self.image_column, self.label_column, self.pair_image_column = image_column, label_column, pair_image_column
        self.caption_ids, self.pair_caption_ids = caption_ids, pair_caption_ids  # tokenized columns, row-aligned
        self.pairs_per_item = pairs_per_item if pairs is not None else 0
        self.num_templates = num_templates
        self.seed = seed
        self.strict_images = strict_images
        # Shared memory, so that persistent dataloader workers see `set_epoch` from the main process too.
        self._epoch = multiprocessing.Value("i", 0, lock=False)
        self._pair_order: tuple[int, torch.Tensor] | None = None  # (epoch, permutation of the pairs)

    def __len__(self) -> int:
        return len(self.finetune)

    @property
    def epoch(self) -> int:
        return self._epoch.value

    def set_epoch(self, epoch: int) -> None:
        self._epoch.value = int(epoch)

    def _pair_indices(self, index: int) -> list[int]:
        epoch = self.epoch
        if self._pair_order is None or self._pair_order[0] != epoch:
            self._pair_order = (epoch, torch.randperm(len(self.pairs), generator=_generator(self.seed, epoch, -1)))
        order, start = self._pair_order[1], index * self.pairs_per_item
        return [int(order[(start + j) % len(self.pairs)]) for j in range(self.pairs_per_item)]

    def _load(self, rows, index: int, column: str, generator: torch.Generator) -> tuple[int, torch.Tensor]:
        """The row index actually used and its transformed image: an undecodable image is replaced by the
        next decodable row (counted in the batch's `num_skipped_images`)."""
        for offset in range(len(rows)):
            row = (index + offset) % len(rows)
            image = decode_image(rows[row][column])
            if image is not None:
                return row, self.transform(image, generator)
            if self.strict_images:
                raise UndecodableImageError(f"Row {row} of the {column!r} column holds an undecodable image.")
            if offset == 0:
                logger.warning("Undecodable image in row %d; using the next decodable row instead.", row)
        raise UndecodableImageError(f"No image in column {column!r} could be decoded.")

    def __getitem__(self, index: int) -> dict:
        generator = _generator(self.seed, self.epoch, index)
        row, pixels = self._load(self.finetune, index, self.image_column, generator)
        item = {
            "pixel_values": pixels,
            "label": int(self.finetune[row][self.label_column]) if self.label_column else -1,
            "template": int(torch.randint(self.num_templates, (1,), generator=generator)),
            "skipped": int(row != index),
        }
        if self.caption_ids is not None:
            item["caption_ids"] = self.caption_ids[row]["input_ids"]
        if self.pairs_per_item:
            item["pair_pixel_values"], item["pair_caption_ids"] = [], []
            for pair_index in self._pair_indices(index):
                pair_row, pair_pixels = self._load(self.pairs, pair_index, self.pair_image_column, generator)
                item["pair_pixel_values"].append(pair_pixels)
                item["pair_caption_ids"].append(self.pair_caption_ids[pair_row]["input_ids"])
                item["skipped"] += int(pair_row != pair_index)
        return item


@dataclass
class AnchorCollator:
    """Stack items into one image batch and one padded text batch, with the segment sizes to split them.

    Texts arrive as token ids (prompts tokenized once, captions tokenized ahead), so collation only pads.
    """

    prompt_ids: list[list[int]]  # see `tokenize_prompts`
    num_templates: int
    pad_token_id: int
    with_prompts: bool = True

    def __call__(self, items: list[dict]) -> dict:
        images = [item["pixel_values"] for item in items]
        texts = []
        if self.with_prompts:
            texts += [self.prompt_ids[item["label"] * self.num_templates + item["template"]] for item in items]
        captions = [item["caption_ids"] for item in items if "caption_ids" in item]
        texts += captions
        num_pairs = 0
        for item in items:
            images += item.get("pair_pixel_values", [])
            texts += item.get("pair_caption_ids", [])
            num_pairs += len(item.get("pair_caption_ids", []))
        batch = {
            "pixel_values": torch.stack(images),
            "labels": torch.tensor([item["label"] for item in items]),
            "num_captions": len(captions),
            "num_pairs": num_pairs,
            "num_skipped_images": torch.tensor(sum(item["skipped"] for item in items)),
        }
        if texts:
            length = max(len(ids) for ids in texts)
            batch["input_ids"] = torch.full((len(texts), length), self.pad_token_id, dtype=torch.long)
            batch["attention_mask"] = torch.zeros((len(texts), length), dtype=torch.long)
            for row, ids in enumerate(texts):
                batch["input_ids"][row, : len(ids)] = torch.tensor(ids)
                batch["attention_mask"][row, : len(ids)] = 1
        return batch
