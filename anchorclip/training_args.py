"""`AnchorTrainingArguments`: `TrainingArguments` plus what ARF and its baselines need."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments
from transformers.training_args import ParallelMode

from .loss import DUPLICATE_MODES

logger = logging.getLogger(__name__)

METHODS = ("arf", "flyp", "ft", "lp_ft", "zeroshot")
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")  # attention projections, both towers


@dataclass
class AnchorTrainingArguments(TrainingArguments):
    """Arguments of `AnchorCLIPTrainer`.

    The total loss of `method="arf"` is L_cls + lambda_caption * L_caption + lambda_pairs * L_pairs
    (+ lambda_distill * L_distill, an option beyond the paper); `"flyp"`
    is L_cls alone; `"ft"` and `"lp_ft"` train the image tower and a linear head (initialised from the
    zero-shot head) with cross-entropy; `"zeroshot"` trains nothing. Setting a lambda to 0 drops that anchor
    set (the ARF ablations).
    """

    method: str = field(default="arf", metadata={"help": f"One of {METHODS}."})
    lambda_caption: float = field(default=1.0, metadata={"help": "λ1: weight of the caption-anchor loss."})
    lambda_pairs: float = field(default=1.0, metadata={"help": "λ2: weight of the retrieved-pair anchor loss."})
    lambda_distill: float = field(
        default=0.0,
        metadata={
            "help": "λ3 (beyond the paper; 0 = off): weight of anchor-feature distillation, the squared distance "
            "between the pair-anchor images' embeddings and those of the frozen pretrained image tower."
        },
    )
    pair_anchors_per_image: float = field(
        default=1,
        metadata={
            "help": "Retrieved image-caption pairs per finetune image in each batch: a whole number, or a fraction "
            "1/m (0.5, 0.25: one pair for every m finetune images, a cheaper step; m must divide the "
            "per-device batch)."
        },
    )
    augment_pairs: bool = field(
        default=True,
        metadata={
            "help": "Augment the pair-anchor images like the finetune images (random resized crop). With "
            "--augment_pairs false each pair image is its evaluation view, always the same pixels: anchor "
            "distillation's targets are then computed once for the pair set instead of by a frozen tower every step."
        },
    )
    augmix: float = field(
        default=0.0,
        metadata={
            "help": "Probability that a training image (finetune images, and pair-anchor images) is replaced by its "
            "AugMix view (Hendrycks et al., 2020; operations disjoint from ImageNet-C's corruptions), trained against "
            "the clean view's targets: the class prompt and caption, and for anchor distillation the pretrained "
            "model's features of the clean view. Pair images get it whatever --augment_pairs says (that flag only "
            "chooses their crop). 0 = off."
        },
    )
    corrupt_pairs: float = field(
        default=0.0,
        metadata={
            "help": "Probability that a pair-anchor image (not a finetune image) is replaced by a corrupted view from "
            "a training family disjoint from ImageNet-C's test and validation corruptions (brownish noise, plasma "
            "lighting, sinusoid grating, checkerboard cutout; after AugMix when both are on), trained against the "
            "clean targets: the pair's caption, and for anchor distillation the pretrained model's features of the "
            "clean view. 0 = off."
        },
    )
    lambda_jsd: float = field(
        default=0.0,
        metadata={
            "help": "Weight of AugMix's Jensen-Shannon consistency term (Hendrycks et al., 2020; the reference uses "
            "12), for FLYP and ARF alike: each finetune image's class distribution over the batch's class prompts "
            "is held equal across its training view and two AugMix views of the same crop (operations disjoint "
            "from ImageNet-C's corruptions); the views add two finetune images' worth to each image pass. 0 = off."
        },
    )
    train_templates: str = field(
        default="photo",
        metadata={
            "help": "Templates for class prompts in L_cls: a set name (photo, simple, openai_imagenet); "
            "one is drawn per image."
        },
    )
    eval_templates: str = field(
        default="openai_imagenet", metadata={"help": "Template set of the zero-shot heads used in evaluation."}
    )
    duplicate_classes: str = field(
        default="negatives",
        metadata={"help": f"Same-class pairs in L_cls: {DUPLICATE_MODES}. 'negatives' is FLYP's behaviour."},
    )
    lp_fraction: float = field(default=0.5, metadata={"help": "LP-FT: fraction of steps spent linear probing."})
    image_column: str | None = field(default=None, metadata={"help": "Image column (default: detected)."})
    label_column: str | None = field(default=None, metadata={"help": "Label column (default: detected)."})
    caption_column: str | None = field(default=None, metadata={"help": "Caption column (default: detected)."})
    strict_images: bool = field(
        default=False, metadata={"help": "Raise on an undecodable image instead of skipping it (with a count)."}
    )
    max_text_length: int = field(default=77, metadata={"help": "Token budget of prompts and captions."})
    # LoRA (peft) on both towers; see anchorclip/lora.py. 0 = full finetune.
    lora_r: int = field(default=0, metadata={"help": "LoRA rank; > 0 trains LoRA adapters instead of all weights."})
    lora_alpha: float | None = field(default=None, metadata={"help": "LoRA scaling alpha (default: 2 * lora_r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: list(DEFAULT_LORA_TARGETS),
        metadata={"help": "Module names given LoRA adapters (default: attention projections of both towers)."},
    )
    # Contrastive batches must be full on every process for the gathered loss; images columns are not
    # model-forward arguments, so Trainer must not drop them.
    dataloader_drop_last: bool = field(default=True, metadata={"help": "Drop the last incomplete batch."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Kept False: anchorclip builds batches."})

    def __post_init__(self):
        super().__post_init__()
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}.")
        if self.duplicate_classes not in DUPLICATE_MODES:
            raise ValueError(f"duplicate_classes must be one of {DUPLICATE_MODES}, got {self.duplicate_classes!r}.")
        if self.lambda_caption < 0 or self.lambda_pairs < 0 or self.lambda_distill < 0:
            raise ValueError("lambda_caption, lambda_pairs and lambda_distill must be >= 0.")
        self.pair_anchors_per_image = _pairs_per_image(self.pair_anchors_per_image, self.per_device_train_batch_size)
        if self.lambda_distill > 0 and not self.uses_pairs:
            raise ValueError(
                "lambda_distill > 0 distills the pair anchors' image features: it needs method='arf' with pair "
                "anchors (lambda_pairs > 0 and pair_anchors_per_image > 0)."
            )
        if not 0.0 <= self.augmix <= 1.0:
            raise ValueError(
                f"augmix is the probability of an image's AugMix view: it must be in [0, 1], got {self.augmix}."
            )
        if not 0.0 <= self.corrupt_pairs <= 1.0:
            raise ValueError(
                "corrupt_pairs is the probability of a pair image's corrupted view: it must be in [0, 1], "
                f"got {self.corrupt_pairs}."
            )
        if self.lambda_jsd < 0:
            raise ValueError(f"lambda_jsd must be >= 0, got {self.lambda_jsd}.")
        if self.lambda_jsd > 0 and not self.is_contrastive:
            raise ValueError(
                f"lambda_jsd compares class-prompt distributions: it applies to method='flyp' or 'arf', not "
                f"{self.method!r}."
            )
        if not 0.0 <= self.lp_fraction <= 1.0:
            raise ValueError("lp_fraction must be in [0, 1].")
        if self.remove_unused_columns:
            # Trainer would strip every item key that CLIPModel.forward does not take (labels, templates,
            # anchors) before our collator sees it: the classic "dropped image column" failure.
            logger.warning("remove_unused_columns=True is ignored: anchorclip builds its batches itself.")
            self.remove_unused_columns = False
        if self.dataloader_pin_memory and (self.use_cpu or not torch.accelerator.is_available()):
            # Pinned memory only speeds up copies to an accelerator; without one torch warns on every loader.
            self.dataloader_pin_memory = False
        # HfArgumentParser passes None for a list field without default_factory: fall back to the default.
        self.lora_target_modules = list(self.lora_target_modules or DEFAULT_LORA_TARGETS)
        if self.lora_r < 0:
            raise ValueError("lora_r must be >= 0 (0 = full finetune).")
        if self.lora_r > 0 and self.method not in ("arf", "flyp"):
            raise ValueError(f"LoRA (lora_r > 0) supports the contrastive methods arf and flyp, not {self.method!r}.")
        self._check_processes_synchronise()

    def _check_processes_synchronise(self) -> None:
        """Refuse a multi-process launch that transformers would not wrap in DDP.

        `accelerate launch --multi_gpu --num_processes N` on a machine without GPUs and without `--use_cpu`
        starts N processes that each see a plain CPU device: every one would train its own model on its
        shard of the data and the run would still exit 0.
        """
        from .distributed import check_launch_joined

        if self.parallel_mode in (ParallelMode.NOT_PARALLEL, ParallelMode.NOT_DISTRIBUTED):
            check_launch_joined(
                1,
                f"transformers' parallel_mode is {self.parallel_mode.value}, not distributed, so each process "
                "would train its own model",
                "Without GPUs add --use_cpu (`accelerate launch --multi_gpu --num_processes N ... --use_cpu` runs "
                "gloo processes).",
            )

    @property
    def uses_captions(self) -> bool:
        return self.method == "arf" and self.lambda_caption > 0

    @property
    def uses_pairs(self) -> bool:
        return self.method == "arf" and self.lambda_pairs > 0 and self.pair_anchors_per_image > 0

    @property
    def uses_distillation(self) -> bool:
        return self.uses_pairs and self.lambda_distill > 0

    @property
    def consistency_views(self) -> int:
        """AugMix views per finetune image for the consistency term (two, as in AugMix; none when it is off)."""
        return 2 if self.lambda_jsd > 0 else 0

    @property
    def is_contrastive(self) -> bool:
        return self.method in ("arf", "flyp")


def _pairs_per_image(value: float, per_device_batch: int) -> int | float:
    """A whole number of pairs per image (as an int), or a fraction 1/m with m dividing the per-device batch,
    so that every micro-batch on every process holds the same number of pairs (their features are gathered)."""
    if value < 0:
        raise ValueError(f"pair_anchors_per_image must be >= 0, got {value}.")
    if value >= 1 or value == 0:
        if value != int(value):
            raise ValueError(f"pair_anchors_per_image above 1 must be a whole number, got {value}.")
        return int(value)
    stride = round(1 / value)
    if abs(1 / stride - value) > 1e-9:
        raise ValueError(f"A fractional pair_anchors_per_image must be 1/m (0.5, 0.25, ...), got {value}.")
    if per_device_batch % stride:
        raise ValueError(
            f"pair_anchors_per_image={value} gives one pair every {stride} images, which must divide the "
            f"per-device batch ({per_device_batch}) so that every micro-batch holds the same number of pairs."
        )
    return 1 / stride
