"""One training batch from `AnchoredDataset` items: one image batch, one text batch, and the sizes that name rows.

`AnchorCollator` builds one image batch (finetune images, then pair images, then the finetune images' consistency
views) and one text batch (class prompts, captions, pair captions) so the model runs one image pass per step, and
one text pass for the short prompts and one for the long captions: the text batch names the two groups with their
widths (`text_groups`), so that no prompt is padded to the longest caption. Texts arrive tokenized (prompts once
per run with `tokenize_prompts`, captions once per dataset with `datasets.map`), so collation only pads.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from typing_extensions import Required, TypedDict  # typing has Required from Python 3.11 only


class ARFBatch(TypedDict, total=False):
    """The batch `AnchorCollator` builds: one image batch, one text batch, and the sizes that name their rows.

    A plain dict (so Trainer moves its tensors to the device); `ARFFeatures.from_outputs` splits the model's
    outputs by these sizes.
    """

    # [finetune images; pair images; consistency views], (batch + num_pairs + num_views, 3, H, W)
    pixel_values: Required[torch.Tensor]
    labels: Required[torch.Tensor]  # (batch,) class ids of the finetune images
    num_captions: Required[int]  # captions in the text batch, after the class prompts (0 or batch)
    num_pairs: Required[int]  # retrieved pairs: pair images after the finetune images, pair captions last
    num_views: Required[int]  # AugMix views of the finetune images, last: `views_per_image` a row, row-major (JSD)
    num_skipped_images: Required[torch.Tensor]  # undecodable images replaced by the next row (a count)
    input_ids: torch.Tensor  # [class prompts; captions; pair captions], right-padded (absent for FT / LP-FT)
    attention_mask: torch.Tensor  # 1 on the tokens of `input_ids`, 0 on the padding
    text_groups: list[tuple[int, int]]  # (rows, tokens) of the prompts, then of captions + pair captions
    caption_keys: torch.Tensor  # (num_captions,) `text_key` of each caption
    pair_keys: torch.Tensor  # (num_pairs,) `text_key` of each pair caption
    pair_targets: torch.Tensor  # (num_pairs, dim) f₀ of each un-augmented pair image (anchor distillation)
    # (num_pairs, 3, H, W) the pair images before AugMix / training corruptions: per-step distillation's inputs
    # (augmix > 0 or corrupt_pairs > 0 only)
    pair_clean_pixel_values: torch.Tensor


def text_key(ids: list[int]) -> int:
    """A 63-bit key of a text's token ids, equal on every process and run for equal texts.

    `ContrastiveLoss(duplicates="mask")` compares these keys (gathered across processes) to keep identical
    captions from being each other's negatives. Python's `hash()` is salted per process, so not it.
    """
    digest = hashlib.blake2b(np.asarray(ids, dtype="<i8").tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def tokenize_prompts(tokenizer, class_names: list[str], templates: list[str], max_length: int) -> list[list[int]]:
    """Token ids of every class prompt, indexed `label * len(templates) + template`: tokenized once."""
    prompts = [template.format(name) for name in class_names for template in templates]
    return tokenizer(prompts, truncation=True, max_length=max_length)["input_ids"]


@dataclass
class AnchorCollator:
    """Stack items into one image batch and one padded text batch, with the segment sizes to split them.

    Texts arrive as token ids (prompts tokenized once, captions tokenized ahead), so collation only pads.
    `caption_keys` / `pair_keys` hold each caption's `text_key`: the loss masks equal texts as duplicates.
    `pair_targets` (with un-augmented pair images and anchor distillation) holds each pair image's target;
    `pair_clean_pixel_values` (with AugMix or training corruptions, and per-step distillation) each pair image's
    view before them.
    `text_groups` lists `(rows, tokens)` for the prompts, then for the captions and pair captions together:
    `AnchorCLIPModel.forward` encodes each group at its own width (it is computed here, on the CPU, so
    that trimming the padding never waits for the device).
    """

    prompt_ids: list[list[int]]  # see `tokenize_prompts`
    num_templates: int
    pad_token_id: int
    with_prompts: bool = True

    def __call__(self, items: list[dict]) -> ARFBatch:
        images = [item["pixel_values"] for item in items]
        texts = []
        if self.with_prompts:
            texts += [self.prompt_ids[item["label"] * self.num_templates + item["template"]] for item in items]
        num_prompts = len(texts)
        captions = [item["caption_ids"] for item in items if "caption_ids" in item]
        texts += captions
        num_pairs = 0
        for item in items:
            images += item.get("pair_pixel_values", [])
            texts += item.get("pair_caption_ids", [])
            num_pairs += len(item.get("pair_caption_ids", []))
        views = [pixels for item in items for pixels in item.get("view_pixel_values", [])]
        images += views
        batch: ARFBatch = {
            "pixel_values": torch.stack(images),
            "labels": torch.tensor([item["label"] for item in items]),
            "num_captions": len(captions),
            "num_pairs": num_pairs,
            "num_views": len(views),
            "num_skipped_images": torch.tensor(sum(item["skipped"] for item in items)),
        }
        pair_captions = [ids for item in items for ids in item.get("pair_caption_ids", [])]
        if captions:
            batch["caption_keys"] = torch.tensor([text_key(ids) for ids in captions])
        if pair_captions:
            batch["pair_keys"] = torch.tensor([text_key(ids) for ids in pair_captions])
        pair_targets = [target for item in items for target in item.get("pair_targets", [])]
        if pair_targets:
            batch["pair_targets"] = torch.from_numpy(np.stack(pair_targets))
        clean_pairs = [pixels for item in items for pixels in item.get("pair_clean_pixel_values", [])]
        if clean_pairs:
            batch["pair_clean_pixel_values"] = torch.stack(clean_pairs)
        if texts:
            groups = (texts[:num_prompts], texts[num_prompts:])
            batch["text_groups"] = [(len(group), max(map(len, group))) for group in groups if group]
            length = max(tokens for _, tokens in batch["text_groups"])
            batch["input_ids"] = torch.full((len(texts), length), self.pad_token_id, dtype=torch.long)
            batch["attention_mask"] = torch.zeros((len(texts), length), dtype=torch.long)
            for row, ids in enumerate(texts):
                batch["input_ids"][row, : len(ids)] = torch.tensor(ids)
                batch["attention_mask"][row, : len(ids)] = 1
        return batch
