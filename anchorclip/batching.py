"""What one training step sees: finetune images with their labels (and captions), plus retrieved pairs.

`AnchoredDataset` item `i` is a pure function of `(seed, epoch, i)`: its augmentation, its prompt
template and the retrieved pairs that ride along with it. So `resume_from_checkpoint` continues with the
same anchor order, and the number of dataloader workers or processes never changes what is trained on.

Pairs are dealt by *position*, not by index. The dataset fixes each epoch's finetune order (`sampler()`
yields it; the trainer uses that sampler), so it knows where item `i` sits and which global batch it
lands in: accelerate hands process `p` the per-process batches `p, p + P, ...` of that order, so a global
batch (every process's micro-batches of one optimizer step) is a run of consecutive positions, the same
positions on one process with batch 8 as on two with batch 4. `pair_schedule` deals the pairs to the
positions from shuffled decks of the whole pair set: one deck per epoch when there are enough pairs (each
pair at most once per epoch), a fresh deck when one runs out, and never the same pair twice in a global
batch, where it would be its own negative.

Items are stacked into a batch by `collate.AnchorCollator`.
"""

from __future__ import annotations

import logging
import multiprocessing
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from .augmix import augment_and_mix
from .data import decode_image
from .train_corruptions import corrupt_view
from .transforms import ImageTransform

if TYPE_CHECKING:
    from .anchors.pool.store import EmbeddingStore

logger = logging.getLogger(__name__)


class UndecodableImageError(ValueError):
    """An image that cannot be decoded, with `strict_images=True` (or no decodable image at all)."""


def _generator(*keys: int) -> torch.Generator:
    seed = 0
    for key in keys:  # a simple deterministic mix of the keys (Python's hash() is salted per process)
        seed = (seed * 1_000_003 + int(key) + 1) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)


def pair_schedule(
    seed: int, epoch: int, num_items: int, num_pairs: int, per_item: int, batch_items: int
) -> np.ndarray:
    """The pair index of every slot of an epoch: slot `position * per_item + j` is the `j`-th pair of the
    item at `position` of the epoch's order; positions `[b * batch_items, (b + 1) * batch_items)` form
    global batch `b`.

    Slots are filled from decks, each a permutation of all pairs seeded by `(seed, epoch, deck)`, so every
    pair is used once before any is used again. Where a global batch spans two decks, the pairs it already
    holds from the old deck are moved behind the batch in the new one: no pair twice in a global batch.
    """
    per_batch = batch_items * per_item
    if per_batch > num_pairs:
        raise ValueError(
            f"A global batch of {batch_items} finetune images x {per_item} pair anchors each needs {per_batch} "
            f"distinct pairs, but the pair set has {num_pairs}: retrieve more pairs, or lower "
            "pair_anchors_per_image or the global batch size."
        )
    total = num_items * per_item
    slots = np.empty(total, dtype=np.int64)
    filled, deck_index = 0, 0
    while filled < total:
        deck = torch.randperm(num_pairs, generator=_generator(seed, epoch, -1, deck_index)).numpy()
        held = slots[filled - filled % per_batch : filled]  # this batch's pairs from the previous deck
        if held.size:
            fits = np.flatnonzero(~np.isin(deck, held))[: per_batch - held.size]
            rest = np.ones(num_pairs, dtype=bool)
            rest[fits] = False
            deck = np.concatenate([deck[fits], deck[rest]])
        count = min(num_pairs, total - filled)
        slots[filled : filled + count] = deck[:count]
        filled, deck_index = filled + count, deck_index + 1
    return slots


class AnchoredDataset(Dataset):
    """The finetune set with its augmentation, prompt template, caption and the pairs dealt to each item.

    `finetune` / `pairs` hold raw image bytes (`with_raw_images`); `caption_ids` / `pair_caption_ids` are their
    tokenized caption columns, row-aligned; `pairs_per_item` is a whole number or a fraction 1/m.
    """

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
        pairs_per_item: float = 0,
        num_templates: int = 1,
        seed: int = 0,
        strict_images: bool = False,
        pair_transform: ImageTransform | None = None,
        augmix: float = 0.0,
        clean_pair_pixels: bool = False,
        corrupt_pairs: float = 0.0,
        consistency_views: int = 0,
    ):
        self.finetune, self.pairs = finetune, pairs
        self.transform = transform
        self.pair_transform = pair_transform or transform
        # Probability that an image (finetune or pair) is replaced by its AugMix view (see augmix.py), drawn from
        # a generator of its own so that crops and templates are those of augmix=0. `clean_pair_pixels`: items
        # also carry each pair image's view before AugMix (the frozen tower's input for per-step distillation).
        self.augmix, self.clean_pair_pixels = augmix, clean_pair_pixels
        # Probability that a pair image is replaced by a view under a training corruption (train_corruptions.py),
        # applied after AugMix when both are on, from a generator of its own (finetune images never get one).
        self.corrupt_pairs = corrupt_pairs
        # AugMix views of each finetune image's crop for the Jensen-Shannon consistency term (loss.py), drawn from a
        # generator of their own; the finetune image itself stays the training view.
        self.consistency_views = consistency_views
        # Anchor distillation's targets when the pair images are not augmented: row i = f₀ of pair image i as
        # the model sees it (an `EmbeddingStore`, memory-mapped; set by `build_train_data`).
        self.pair_targets: EmbeddingStore | None = None
        self.image_column, self.label_column, self.pair_image_column = image_column, label_column, pair_image_column
        self.caption_ids, self.pair_caption_ids = caption_ids, pair_caption_ids  # tokenized columns, row-aligned
        pairs_per_item = pairs_per_item if pairs is not None else 0
        # Fractional `pairs_per_item` (1/m): the item at every m-th position of the epoch order carries one pair.
        self.pair_stride = round(1 / pairs_per_item) if 0 < pairs_per_item < 1 else 1
        self.pairs_per_item = 1 if self.pair_stride > 1 else int(pairs_per_item)
        self.num_templates = num_templates
        self.seed = seed
        self.strict_images = strict_images
        # Shared memory, so that persistent dataloader workers see `set_epoch` from the main process too.
        self._epoch = multiprocessing.Value("i", 0, lock=False)
        self.shuffle = True
        self.batch_items = 1  # finetune images per global batch; set by `sampler()`
        self._schedule: tuple[int, np.ndarray, np.ndarray] | None = None  # (epoch, positions, pair slots)

    def __len__(self) -> int:
        return len(self.finetune)

    @property
    def epoch(self) -> int:
        return self._epoch.value

    def set_epoch(self, epoch: int) -> None:
        self._epoch.value = int(epoch)

    def order(self, epoch: int) -> np.ndarray:
        """The finetune indices in the order epoch `epoch` visits them (what `sampler()` yields)."""
        if not self.shuffle:
            return np.arange(len(self))
        return torch.randperm(len(self), generator=_generator(self.seed, epoch, -2)).numpy()

    def sampler(self, batch_items: int, shuffle: bool = True) -> EpochSampler:
        """The sampler to train with: it yields `order(epoch)`, the order in which pairs were dealt.

        `batch_items`: finetune images per global batch (per-process batch x processes x accumulation
        steps), the span within which no pair may repeat. Raises `ValueError` if the pair set is too small
        for that.
        """
        if batch_items < 1:
            raise ValueError(f"batch_items must be >= 1, got {batch_items}.")
        if batch_items % self.pair_stride:
            raise ValueError(f"One pair every {self.pair_stride} images needs a global batch divisible by it.")
        if self.pairs_per_item:  # validates only
            pair_schedule(self.seed, 0, 0, len(self.pairs), self.pairs_per_item, batch_items // self.pair_stride)
        self.batch_items, self.shuffle, self._schedule = batch_items, shuffle, None
        return EpochSampler(self)

    def _pair_indices(self, index: int) -> list[int]:
        epoch = self.epoch
        if self._schedule is None or self._schedule[0] != epoch:
            positions = np.empty(len(self), dtype=np.int64)
            positions[self.order(epoch)] = np.arange(len(self))
            stride = self.pair_stride
            slots = pair_schedule(
                self.seed,
                epoch,
                -(-len(self) // stride),
                len(self.pairs),
                self.pairs_per_item,
                self.batch_items // stride,
            )
            self._schedule = (epoch, positions, slots)
        position = int(self._schedule[1][index])
        if position % self.pair_stride:
            return []
        start = position // self.pair_stride * self.pairs_per_item
        return self._schedule[2][start : start + self.pairs_per_item].tolist()

    def _load(
        self,
        rows,
        index: int,
        column: str,
        generator: torch.Generator,
        transform: ImageTransform,
        augmix_generator: torch.Generator | None = None,
        corrupt_generator: torch.Generator | None = None,
    ) -> tuple[int, torch.Tensor, torch.Tensor, Image.Image]:
        """The row index actually used, its training view, its clean view (the same tensor unless AugMix or
        a training corruption replaced the training view; with both, the corruption applies to the AugMix
        view) and the clean view as an image: an undecodable image is replaced by the next decodable row
        (counted in the batch's `num_skipped_images`)."""
        for offset in range(len(rows)):
            row = (index + offset) % len(rows)
            image = decode_image(rows[row][column])
            if image is not None:
                view = transform.view(image, generator)
                clean = transform.to_tensor(view)
                array = None
                if augmix_generator is not None and torch.rand(1, generator=augmix_generator).item() < self.augmix:
                    array = augment_and_mix(view, augmix_generator)
                if (
                    corrupt_generator is not None
                    and torch.rand(1, generator=corrupt_generator).item() < self.corrupt_pairs
                ):
                    if array is None:
                        array = np.asarray(view, dtype=np.float32) / 255.0
                    array = corrupt_view(array, corrupt_generator)
                if array is None:
                    return row, clean, clean, view
                return row, transform.to_tensor(array), clean, view
            if self.strict_images:
                raise UndecodableImageError(f"Row {row} of the {column!r} column holds an undecodable image.")
            if offset == 0:
                logger.warning("Undecodable image in row %d; using the next decodable row instead.", row)
        raise UndecodableImageError(f"No image in column {column!r} could be decoded.")

    def __getitem__(self, index: int) -> dict:
        generator = _generator(self.seed, self.epoch, index)
        # Only drawn from when augmix > 0: with augmix=0 every random draw is what it always was.
        augmix_generator = _generator(self.seed, self.epoch, index, -3) if self.augmix > 0 else None
        # Likewise for the pair images' training corruptions (corrupt_pairs > 0 only).
        corrupt_generator = _generator(self.seed, self.epoch, index, -4) if self.corrupt_pairs > 0 else None
        row, pixels, _, view = self._load(
            self.finetune, index, self.image_column, generator, self.transform, augmix_generator
        )
        item: dict[str, Any] = {
            "pixel_values": pixels,
            "label": int(self.finetune[row][self.label_column]) if self.label_column else -1,
            "template": int(torch.randint(self.num_templates, (1,), generator=generator)),
            "skipped": int(row != index),
        }
        if self.consistency_views:
            view_generator = _generator(self.seed, self.epoch, index, -5)
            views = [augment_and_mix(view, view_generator) for _ in range(self.consistency_views)]
            item["view_pixel_values"] = [self.transform.to_tensor(array) for array in views]
        if self.caption_ids is not None:
            item["caption_ids"] = self.caption_ids[row]["input_ids"]
        if self.pairs_per_item:
            item["pair_pixel_values"], item["pair_caption_ids"] = [], []
            if self.pair_targets is not None:
                item["pair_targets"] = []
            if self.clean_pair_pixels:
                item["pair_clean_pixel_values"] = []
            assert self.pair_image_column is not None  # set whenever there are pairs
            for pair_index in self._pair_indices(index):
                pair_row, pair_pixels, pair_clean, _ = self._load(
                    self.pairs,
                    pair_index,
                    self.pair_image_column,
                    generator,
                    self.pair_transform,
                    augmix_generator,
                    corrupt_generator,
                )
                item["pair_pixel_values"].append(pair_pixels)
                if self.clean_pair_pixels:
                    item["pair_clean_pixel_values"].append(pair_clean)
                item["pair_caption_ids"].append(self.pair_caption_ids[pair_row]["input_ids"])
                if self.pair_targets is not None:  # the row actually used, also when an undecodable one was skipped
                    item["pair_targets"].append(self.pair_targets.gather([pair_row])[0])
                item["skipped"] += int(pair_row != pair_index)
        return item


class EpochSampler(Sampler[int]):
    """Yields `AnchoredDataset.order(epoch)` for the dataset's current epoch (shared with it, so both agree
    whichever of them accelerate or the trainer's callback tells the epoch)."""

    def __init__(self, dataset: AnchoredDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __iter__(self):
        return iter(self.dataset.order(self.dataset.epoch).tolist())
