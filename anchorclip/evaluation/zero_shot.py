"""Zero-shot scoring of one evaluation set: classification (prompt-ensemble head) or image-text retrieval.

Both run on every process of a launch: images are dealt across processes by the accelerator and gathered for
the metrics (`gather_for_metrics` drops the padding of the last batch), so N processes score exactly the rows
one process would. An undecodable image is scored as a miss, never dropped: a set never silently shrinks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..data import (
    CAPTION_COLUMNS,
    IMAGE_COLUMNS,
    LABEL_COLUMNS,
    class_names_from_features,
    decode_image,
    find_column,
    with_raw_images,
)
from .metrics import classification_metrics, retrieval_metrics
from .sets import EvalSet

if TYPE_CHECKING:
    from accelerate import Accelerator
    from transformers import PreTrainedTokenizerBase

    from ..modeling_anchorclip import AnchorCLIPModel
    from ..transforms import ImageTransform

logger = logging.getLogger(__name__)

RETRIEVAL_KS = (1, 5, 10)


class ZeroShotScorer:
    """What scoring a set needs besides the set: the model, its tokenizer and image transform, the launch.

    `autocast` is a context-manager factory (the Trainer's `autocast_smart_context_manager`), `finetune_head`
    an optional `(class_names, weights)`: sets over exactly these class names are scored with that linear
    head (FT / LP-FT) instead of a zero-shot head.
    """

    def __init__(
        self,
        model: AnchorCLIPModel,
        tokenizer: PreTrainedTokenizerBase,
        transform: ImageTransform,
        accelerator: Accelerator,
        *,
        batch_size: int,
        num_workers: int = 0,
        templates: Sequence[str] | str | None = None,
        autocast: Callable | None = None,
        finetune_head: tuple[list[str], torch.Tensor] | None = None,
        progress: bool = True,
    ):
        self.model, self.tokenizer, self.transform, self.accelerator = model, tokenizer, transform, accelerator
        self.batch_size, self.num_workers, self.templates = batch_size, num_workers, templates
        self.autocast = autocast or nullcontext
        self.finetune_head, self.progress = finetune_head, progress
        self._heads: dict[tuple, torch.Tensor] = {}  # sets sharing names and templates share one head

    def score(self, eval_set: EvalSet) -> dict[str, float]:
        """The set's metrics: `top1`, `top5`, `mean_per_class_recall` or `{image2text,text2image}_recall@k`."""
        self.model.eval()
        with torch.no_grad():
            return self._retrieval(eval_set) if eval_set.is_retrieval else self._classification(eval_set)

    # ------------------------------------------------------------ classification

    def _classification(self, eval_set: EvalSet) -> dict[str, float]:
        dataset = eval_set.dataset
        image_column = find_column(dataset, eval_set.image_column, IMAGE_COLUMNS, "image")
        label_column = find_column(dataset, eval_set.label_column, LABEL_COLUMNS, "label")
        class_names = eval_set.class_names or class_names_from_features(dataset, label_column)
        if not class_names:
            raise ValueError("An evaluation set needs class names: a ClassLabel column or EvalSet(class_names=...).")
        scale: torch.Tensor | float  # the logits' temperature: the model's, or 1 for the trained head
        if self.finetune_head is not None and list(class_names) == list(self.finetune_head[0]):
            head, scale = self.finetune_head[1].float(), 1.0
        else:
            if self.finetune_head is not None and len(class_names) == len(self.finetune_head[0]):
                logger.warning(
                    "A set with as many classes as the finetune head (%d) but other names is scored with a zero-shot "
                    "head, not the trained head: train with the set's class names (--class_names_file) to use it.",
                    len(class_names),
                )
            head = self._zero_shot_head(class_names, eval_set.templates or self.templates)
            scale = self.model.logit_scale.exp().float()
        class_subset = cast("list[list[int]] | None", eval_set.class_subset)  # lists, after EvalSet.__post_init__
        subset = _subset_index(class_subset, head.device) if class_subset else None
        num_classes = len(class_subset) if class_subset else len(class_names)
        metrics = classification_metrics(num_classes)
        k = min(5, num_classes)
        images = self._images(dataset, image_column, label_column, "zero-shot eval", eval_set.image_transform)
        for pixel_values, labels in images:
            logits = scale * self._embed_images(pixel_values) @ head.t()
            if subset is not None:  # the set's class i scores max over its parent classes; others are left out
                logits = logits[:, subset.clamp(min=0)].masked_fill(subset < 0, -torch.inf).amax(dim=-1)
            ranked = logits.topk(k, dim=-1).indices
            ranked[labels < 0] = -1  # an undecodable image: a miss
            ranked, labels = self.accelerator.gather_for_metrics((ranked, labels.to(ranked.device)))
            metrics.add_batch(predictions=ranked.cpu().tolist(), references=labels.cpu().view(-1, 1).tolist())
        return metrics.compute()

    def _zero_shot_head(self, class_names, templates) -> torch.Tensor:
        key = (tuple(class_names), templates if isinstance(templates, str) else tuple(templates or ()))
        if key not in self._heads:
            self._heads[key] = self.model.build_zero_shot_head(class_names, templates, self.tokenizer)
        return self._heads[key]

    # ------------------------------------------------------------ retrieval

    def _retrieval(self, eval_set: EvalSet) -> dict[str, float]:
        dataset = eval_set.dataset
        image_column = find_column(dataset, eval_set.image_column, IMAGE_COLUMNS, "image")
        caption_column = find_column(dataset, eval_set.caption_column, CAPTION_COLUMNS, "caption")
        captions = dataset.select_columns([caption_column])[caption_column]
        texts: list[str] = []  # every caption
        text_rows: list[int] = []  # the image row each caption belongs to
        for row, value in enumerate(captions):
            for caption in [value] if isinstance(value, str) else list(value or []):
                texts.append(caption)
                text_rows.append(row)
        if not texts:
            raise ValueError(f"The retrieval set has no captions in its {caption_column!r} column.")
        image_embeds: list[torch.Tensor] = []
        decoded: list[torch.Tensor] = []
        for pixel_values, labels in self._images(dataset, image_column, None, "zero-shot retrieval"):
            embeds = self._embed_images(pixel_values)
            embeds, labels = self.accelerator.gather_for_metrics((embeds, labels.to(embeds.device)))
            image_embeds.append(embeds.cpu())
            decoded.append(labels.cpu() >= 0)
        images, valid = torch.cat(image_embeds), torch.cat(decoded)
        text_embeds = self._embed_texts(texts).cpu()
        text_image = torch.tensor(text_rows)
        similarity = images @ text_embeds.t()
        similarity[~valid] = -torch.inf  # undecodable images are never retrieved and retrieve nothing
        kmax = max(RETRIEVAL_KS)
        image2text = retrieval_metrics("image2text", RETRIEVAL_KS)
        ranked = similarity.topk(min(kmax, len(texts)), dim=1).indices
        ranked[~valid] = -1
        positives: list[list[int]] = [[] for _ in range(len(images))]
        for text, row in enumerate(text_image.tolist()):
            positives[row].append(text)
        image2text.add_batch(predictions=ranked.tolist(), references=positives)
        text2image = retrieval_metrics("text2image", RETRIEVAL_KS)
        ranked = similarity.t().topk(min(kmax, len(images)), dim=1).indices
        text2image.add_batch(predictions=ranked.tolist(), references=text_image.view(-1, 1).tolist())
        return {**image2text.compute(), **text2image.compute()}

    # ------------------------------------------------------------ towers

    def _images(self, dataset, image_column: str, label_column: str | None, description: str, image_transform=None):
        loader = DataLoader(
            _EvalImages(
                with_raw_images(dataset, image_column), image_column, label_column, self.transform, image_transform
            ),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=_collate,
        )
        loader = self.accelerator.prepare_data_loader(loader)
        return tqdm(loader, desc=description, leave=False, disable=not self.progress)

    def _embed_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        dtype = next(self.model.vision_model.parameters()).dtype
        with self.autocast():
            return self.model(pixel_values=pixel_values.to(dtype)).image_embeds.float()

    def _embed_texts(self, texts: list[str]) -> torch.Tensor:
        embeds = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(
                texts[start : start + self.batch_size], padding=True, truncation=True, return_tensors="pt"
            ).to(self.model.device)
            with self.autocast():
                output = self.model(input_ids=tokens["input_ids"], attention_mask=tokens.get("attention_mask"))
            embeds.append(output.text_embeds.float())
        return F.normalize(torch.cat(embeds), dim=-1)


def _subset_index(class_subset: list[list[int]], device) -> torch.Tensor:
    """`(num_set_classes, widest group)` parent ids, padded with -1."""
    width = max(len(group) for group in class_subset)
    rows = [group + [-1] * (width - len(group)) for group in class_subset]
    return torch.tensor(rows, device=device)


class _EvalImages(Dataset):
    def __init__(self, dataset, image_column: str, label_column: str | None, transform, image_transform=None):
        self.dataset, self.image_column, self.label_column, self.transform = (
            dataset,
            image_column,
            label_column,
            transform,
        )
        self.image_transform = image_transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        row = self.dataset[index]
        image = decode_image(row[self.image_column])
        if image is None:  # scored as a miss rather than silently shrinking the set
            logger.warning("Undecodable evaluation image in row %d: scored as a miss.", index)
            return torch.zeros(3, self.transform.size, self.transform.size), -1
        if self.image_transform is not None:
            image = self.image_transform(image, index, self.transform.size)
        return self.transform(image), int(row[self.label_column]) if self.label_column else 0


def _collate(items):
    return torch.stack([pixels for pixels, _ in items]), torch.tensor([label for _, label in items])
