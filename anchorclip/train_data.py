"""The training data of one run: the finetune set, its captions and the retrieved pairs, checked up front and
wrapped as `AnchoredDataset` + `AnchorCollator` (see batching.py, collate.py); the step-count check.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

from .batching import AnchoredDataset
from .collate import AnchorCollator, tokenize_prompts
from .data import (
    CAPTION_COLUMNS,
    IMAGE_COLUMNS,
    LABEL_COLUMNS,
    class_names_from_features,
    find_column,
    join_captions,
    with_raw_images,
)
from .filesystems import probe_folder, writer_first
from .templates import resolve_templates
from .training_args import AnchorTrainingArguments
from .transforms import ImageTransform

if TYPE_CHECKING:
    import datasets
    from transformers import CLIPProcessor, CLIPTextConfig

    from .anchors.pool.store import EmbeddingStore
    from .modeling_anchorclip import AnchorCLIPModel


def build_train_data(
    train_dataset: datasets.Dataset,
    pair_anchors: datasets.Dataset | None,
    args: AnchorTrainingArguments,
    processing_class: CLIPProcessor,
    model: AnchorCLIPModel,
    class_names: list[str] | None,
    caption_anchors: datasets.Dataset | None = None,
) -> tuple[AnchoredDataset, AnchorCollator, list[str]]:
    """Validate the finetune and anchor sets up front; wrap them in an `AnchoredDataset` and its collator.

    Returns the dataset, the collator and the class names (given, else the label column's `ClassLabel` names).
    """
    captions = train_dataset
    if args.uses_captions and caption_anchors is not None:
        # Joined by id: the finetune rows with a caption (an index mapping, images untouched), captions aligned.
        train_dataset, captions = join_captions(train_dataset, caption_anchors, args.caption_column)
    image_column = find_column(train_dataset, args.image_column, IMAGE_COLUMNS, "image")
    label_column = find_column(train_dataset, args.label_column, LABEL_COLUMNS, "label")
    class_names = class_names or class_names_from_features(train_dataset, label_column)
    if not class_names:
        raise ValueError(
            f"The label column {label_column!r} is not a ClassLabel; pass class_names=[...] in label-id order."
        )
    if len(train_dataset) == 0:
        raise ValueError("The finetune dataset is empty.")
    labels = np.asarray(train_dataset[label_column])
    bad = labels[(labels < 0) | (labels >= len(class_names))]
    if bad.size:
        raise ValueError(
            f"Label ids {sorted(set(bad.tolist()))[:10]} in column {label_column!r} are outside the "
            f"{len(class_names)} class names (valid ids: 0..{len(class_names) - 1})."
        )
    tokenizer = processing_class.tokenizer
    text_config = cast("CLIPTextConfig", model.config.text_config)  # CLIPConfig.__init__ builds it from a dict
    max_length = min(args.max_text_length, text_config.max_position_embeddings)
    caption_ids = pair_caption_ids = None
    if args.uses_captions:
        caption_column = find_column(captions, args.caption_column, CAPTION_COLUMNS, "caption")
        caption_ids = tokenize_column(captions, caption_column, tokenizer, max_length, "Tokenizing captions")
    pair_image_column = None
    if args.uses_pairs:
        if pair_anchors is None or len(pair_anchors) == 0:
            raise ValueError(
                f"The pair-anchor set is empty but lambda_pairs={args.lambda_pairs} > 0: pass pair_anchors "
                "(see `anchorclip retrieve`) or set lambda_pairs=0."
            )
        pair_image_column = find_column(pair_anchors, None, IMAGE_COLUMNS, "pair-anchor image")
        pair_caption_column = find_column(pair_anchors, None, CAPTION_COLUMNS, "pair-anchor caption")
        pair_caption_ids = tokenize_column(
            pair_anchors, pair_caption_column, tokenizer, max_length, "Tokenizing pair captions"
        )
        pair_anchors = with_raw_images(pair_anchors, pair_image_column)
    else:
        pair_anchors = None
    templates = resolve_templates(args.train_templates)
    image_processor = processing_class.image_processor
    dataset = AnchoredDataset(
        with_raw_images(train_dataset, image_column),
        transform=ImageTransform.from_image_processor(image_processor, train=True),
        image_column=image_column,
        label_column=label_column,
        caption_ids=caption_ids,
        pairs=pair_anchors,
        pair_image_column=pair_image_column,
        pair_caption_ids=pair_caption_ids,
        pairs_per_item=args.pair_anchors_per_image if args.uses_pairs else 0,
        num_templates=len(templates),
        seed=args.data_seed if args.data_seed is not None else args.seed,
        strict_images=args.strict_images,
        # Evaluation view: a pair image is then the same pixels every time it is drawn (see augment_pairs).
        pair_transform=None if args.augment_pairs else ImageTransform.from_image_processor(image_processor),
        augmix=args.augmix,
        corrupt_pairs=args.corrupt_pairs,
        consistency_views=args.consistency_views,
        # Per-step distillation embeds the pair images' clean view (un-augmented pairs bring precomputed targets).
        clean_pair_pixels=(args.augmix > 0 or args.corrupt_pairs > 0)
        and args.uses_distillation
        and args.augment_pairs,
    )
    if args.uses_distillation and not args.augment_pairs:
        assert pair_image_column is not None  # distillation implies uses_pairs: found above
        dataset.pair_targets = _pretrained_pair_features(dataset.pairs, pair_image_column, model, processing_class)
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    collator = AnchorCollator(
        prompt_ids=tokenize_prompts(tokenizer, class_names, templates, max_length),
        num_templates=len(templates),
        pad_token_id=pad_token_id,
        with_prompts=args.is_contrastive,
    )
    model.config.class_names = list(class_names)
    model.config.templates = resolve_templates(args.eval_templates)
    return dataset, collator, class_names


def tokenize_column(dataset: datasets.Dataset, column: str, tokenizer, max_length: int, desc: str) -> datasets.Dataset:
    """Token ids of one text column, computed once with `datasets.map` (and cached by its fingerprint).

    Only `column` is mapped (via `select_columns`), so the image bytes are never rewritten. The cache file goes
    beside the dataset's own files: one process per copy of that folder writes it while the others wait, then
    they read it (launched processes mapping at once would read a cache file another is still writing).
    """
    texts = dataset.select_columns([column])
    # Every process probes (a collective), also one whose copy is in memory (the main process's freshly built
    # anchors, say): it then probes the temporary folder, where nothing is written.
    folder = Path(dataset.cache_files[0]["filename"]).parent if dataset.cache_files else Path(tempfile.gettempdir())
    with writer_first(probe_folder(folder)):
        return texts.map(
            lambda batch: {"input_ids": tokenizer(batch[column], truncation=True, max_length=max_length)["input_ids"]},
            batched=True,
            remove_columns=[column],
            desc=desc,
        )


def _pretrained_pair_features(
    pairs: datasets.Dataset, image_column: str, model: AnchorCLIPModel, processing_class: CLIPProcessor
) -> EmbeddingStore:
    """Anchor distillation's targets for un-augmented pair images: f₀ of every pair image's evaluation view.

    The pair set and the starting weights f₀ never change during a run, so each target is computed once instead
    of by a frozen copy of the image tower every step. It is the pool-embedding job (`embed_pool`): cached under
    the model's and the pair set's fingerprints (a resumed or repeated run embeds nothing), resumable, and split
    over the launch's processes. Called before training, while `model` still holds the starting weights.
    """
    from .anchors.pool.embedding import embed_pool

    was_training = model.training
    store = embed_pool(
        pairs,
        model,
        processing_class,
        kind="image",
        column=image_column,
        split=None,
        description="Anchor distillation targets (pair images, starting weights)",
    )
    model.train(was_training)
    return store


def check_steps_will_train(args: AnchorTrainingArguments, num_examples: int | None) -> None:
    """Raise a `ValueError` if `args` would give zero optimizer steps on `num_examples` finetune examples.

    Called by `AnchorCLIPTrainer.train` and, before any anchor is built, by the example. A set smaller than one
    global batch never yields a batch under drop_last; we refuse rather than train partial batches: a
    contrastive step needs its full batch of negatives on every process, and such a set is a configuration
    mistake (a too-large batch or fraction).
    """
    if args.max_steps <= 0 and args.num_train_epochs <= 0:
        raise ValueError(
            f"max_steps={args.max_steps} and num_train_epochs={args.num_train_epochs} give zero optimizer steps: "
            "set one of them > 0."
        )
    global_batch = args.train_batch_size * args.world_size * args.gradient_accumulation_steps
    if num_examples is not None and args.dataloader_drop_last and num_examples < global_batch:
        raise ValueError(
            f"The finetune set has {num_examples} examples, fewer than one global batch of {global_batch} "
            f"(per-device batch {args.train_batch_size} x {args.world_size} processes x "
            f"{args.gradient_accumulation_steps} accumulation steps): no optimizer step would run. Lower "
            "per_device_train_batch_size or gradient_accumulation_steps, or use more data."
        )
