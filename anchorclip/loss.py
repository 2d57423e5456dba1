"""The training objectives: CLIP's contrastive loss (`ContrastiveLoss`) and ARF's (`ARFLoss`) built on it.

ARF's objective, on the named features of one contrastive batch (`ARFFeatures`):

    L = L_cls(finetune images, class prompts)
      + λ1 L_caption(finetune images, captions)
      + λ2 L_pairs(pair images, pair captions)
      [+ λ3 L_distill(pair images): ‖f(x) − f₀(x)‖² against the frozen pretrained image tower f₀; off by default]
      [+ λ_jsd L_jsd(finetune images, their AugMix views): AugMix's Jensen-Shannon consistency; off by default]

FLYP is `ARFLoss` with λ1 = λ2 = 0. The contrastive loss is gathered across processes with gradients
(open_clip's local-loss form).

Each process scores its local rows against the features of *all* processes, so the global batch size
sets the number of negatives however small the per-GPU batch is. The gather is torch's functional
collective `all_gather_single`, whose backward sums each feature's gradient from every process and
hands it to the process that produced the feature; with DDP averaging gradients, the update equals that
of one process holding the concatenated batch. (`torch.distributed.nn.functional.all_gather`, open_clip's
choice, computes the same but is deprecated since torch 2.13: a FutureWarning every step.)

Duplicates. Rows may carry integer ids (`labels`): class ids for class prompts, a hash of the token ids
for captions (`collate.text_key`). With `duplicates="mask"`, another row with the same id is removed
from both softmaxes: it is not a negative, since its text is the same. Without duplicates the loss is
bit-identical to the plain CLIP loss.

Logits are computed in fp32 whatever the autocast dtype: the softmax over thousands of negatives with
a scale of 100 is where fp16/bf16 rounding hurts.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from .collate import ARFBatch
    from .modeling_anchorclip import AnchorCLIPModel
    from .training_args import AnchorTrainingArguments

LOGIT_SCALE_MAX = math.log(100.0)
DUPLICATE_MODES = ("negatives", "mask")


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward returns this process's slice of the gradient summed over processes (each
    process's loss depends on every slice). Synchronous `dist.all_gather` / `dist.all_reduce`: the autograd-aware
    functional collective crashed gloo processes now and then (an un-waited async work aborted the process, about
    once in a few thousand steps), and `torch.distributed.nn.functional.all_gather` is deprecated."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad.chunk(dist.get_world_size(), dim=0)[dist.get_rank()]


def _gather_features(features: torch.Tensor) -> torch.Tensor:
    """Concatenate `features` from all processes in rank order; gradients flow back to their owners."""
    world_size, _ = _world()
    if world_size == 1:
        return features
    return _GatherWithGrad.apply(features.contiguous())


def _gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    world_size, _ = _world()
    if world_size == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


class ContrastiveLoss(nn.Module):
    """Symmetric image<->text cross-entropy over the (gathered) batch.

    Args:
        duplicates: how rows that share an id (`labels`: a class id, or a caption's `text_key`) are treated.
            `"negatives"` (default): as in FLYP and CLIP, another image of the same class is a negative.
            `"mask"`: off-diagonal pairs with equal ids are removed from the softmax, so the model is not
            pushed to separate an image from a text equal to its own.
            Without `labels` every pair is distinct and both modes agree.
        logit_scale_max: clamp of the log temperature (CLIP: ln 100).
    """

    def __init__(self, duplicates: str = "negatives", logit_scale_max: float = LOGIT_SCALE_MAX):
        super().__init__()
        if duplicates not in DUPLICATE_MODES:
            raise ValueError(f"duplicates must be one of {DUPLICATE_MODES}, got {duplicates!r}.")
        self.duplicates = duplicates
        self.logit_scale_max = logit_scale_max

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`image_features`, `text_features`: this process's L2-normalised `(batch, dim)` rows, paired by index.

        `logit_scale` is the log temperature (CLIP's parameter before `exp`). Returns this process's mean
        loss; the mean over processes is the loss of the whole gathered batch.
        """
        if image_features.shape != text_features.shape:
            raise ValueError(f"Paired features differ in shape: {image_features.shape} vs {text_features.shape}.")
        image_features, text_features = image_features.float(), text_features.float()
        scale = logit_scale.float().clamp(max=self.logit_scale_max).exp()
        all_images = _gather_features(image_features)
        all_texts = _gather_features(text_features)
        logits_per_image = scale * image_features @ all_texts.t()
        logits_per_text = scale * text_features @ all_images.t()

        _, rank = _world()
        batch = image_features.shape[0]
        targets = torch.arange(batch, device=image_features.device) + rank * batch
        if self.duplicates == "mask" and labels is not None:
            all_labels = _gather_no_grad(labels)
            same_class = labels[:, None] == all_labels[None, :]
            same_class[torch.arange(batch), targets] = False
            logits_per_image = logits_per_image.masked_fill(same_class, float("-inf"))
            logits_per_text = logits_per_text.masked_fill(same_class, float("-inf"))
        return (F.cross_entropy(logits_per_image, targets) + F.cross_entropy(logits_per_text, targets)) / 2


@dataclass
class ARFFeatures:
    """The L2-normalised features of one ARF batch, by role; rows of a pair are at the same index.

    `images` and `prompts` (`(batch, dim)`) are the finetune images and their class prompts, `labels` their class
    ids; `captions` pair with `images` (when λ1 > 0), `pair_images` with `pair_captions` (when λ2 > 0).
    `caption_keys` / `pair_keys` are the captions' `text_key`s: equal captions are masked, not negatives.
    `distill_targets` are f₀ of `pair_images` (anchor distillation, λ3 > 0); `views` are AugMix views of `images`,
    `(batch * views per image, dim)` row-major (the consistency term, λ_jsd > 0).
    """

    images: torch.Tensor
    prompts: torch.Tensor
    labels: torch.Tensor
    captions: torch.Tensor | None = None
    caption_keys: torch.Tensor | None = None
    pair_images: torch.Tensor | None = None
    pair_captions: torch.Tensor | None = None
    pair_keys: torch.Tensor | None = None
    distill_targets: torch.Tensor | None = None
    views: torch.Tensor | None = None

    @classmethod
    def from_outputs(cls, batch: ARFBatch, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> ARFFeatures:
        """Name the rows of one image pass and one text pass over an `AnchorCollator` batch.

        The collator lays the image batch out as [finetune images; pair images; views] and the text batch as
        [class prompts; captions; pair captions], with the segment sizes in the batch (see `ARFBatch`).
        """
        size, num_captions, num_pairs = batch["labels"].shape[0], batch["num_captions"], batch["num_pairs"]
        num_views = batch.get("num_views", 0)
        return cls(
            images=image_embeds[:size],
            prompts=text_embeds[:size],
            labels=batch["labels"],
            captions=text_embeds[size : size + num_captions],
            caption_keys=batch.get("caption_keys"),
            pair_images=image_embeds[size : size + num_pairs],
            pair_captions=text_embeds[size + num_captions : size + num_captions + num_pairs],
            pair_keys=batch.get("pair_keys"),
            distill_targets=batch.get("pair_targets"),
            views=image_embeds[size + num_pairs : size + num_pairs + num_views] if num_views else None,
        )

    @classmethod
    def cat(cls, parts: list[ARFFeatures]) -> ARFFeatures:
        """Rows of several micro-batches as one batch (a field missing from any part is left out)."""
        if len(parts) == 1:
            return parts[0]
        joined: dict[str, Any] = {}
        for field in fields(cls):
            values = [getattr(part, field.name) for part in parts]
            joined[field.name] = None if any(value is None for value in values) else torch.cat(values)
        return cls(**joined)


@dataclass
class ARFLossOutput:
    """`window_loss`: the terms of the whole contrastive batch; `local_loss`: the per-image terms (distillation)
    of the micro-batch passed as `local`; `terms`: each unweighted term by name (`loss_cls`, `loss_caption`,
    `loss_pairs`, `loss_distill`), for logging."""

    window_loss: torch.Tensor
    local_loss: torch.Tensor | None
    terms: dict[str, torch.Tensor]

    @property
    def loss(self) -> torch.Tensor:
        """The total loss (when the batch is one micro-batch)."""
        return self.window_loss if self.local_loss is None else self.window_loss + self.local_loss


class ARFLoss(nn.Module):
    """ARF's objective (see the module docstring); a term whose λ is 0 is not computed.

    Args:
        lambda_caption: λ1, weight of the caption-anchor term.
        lambda_pairs: λ2, weight of the retrieved-pair term.
        lambda_distill: λ3, weight of anchor-feature distillation (beyond the paper; 0 = off).
        lambda_jsd: weight of AugMix's Jensen-Shannon consistency (`consistency_loss`; 0 = off).
        duplicates: same-class images in L_cls (`ContrastiveLoss`'s modes); equal captions are always masked.
    """

    def __init__(
        self,
        lambda_caption: float = 1.0,
        lambda_pairs: float = 1.0,
        lambda_distill: float = 0.0,
        duplicates: str = "negatives",
        lambda_jsd: float = 0.0,
    ):
        super().__init__()
        self.lambda_caption, self.lambda_pairs, self.lambda_distill = lambda_caption, lambda_pairs, lambda_distill
        self.lambda_jsd = lambda_jsd
        self.class_loss = ContrastiveLoss(duplicates=duplicates)
        self.caption_loss = ContrastiveLoss(duplicates="mask")  # equal captions (equal text keys) are no negatives

    @classmethod
    def from_args(cls, args: AnchorTrainingArguments) -> ARFLoss:
        """The objective of `args.method`: a term the method or its anchors leave out gets λ = 0."""
        return cls(
            lambda_caption=args.lambda_caption if args.uses_captions else 0.0,
            lambda_pairs=args.lambda_pairs if args.uses_pairs else 0.0,
            lambda_distill=args.lambda_distill if args.uses_distillation else 0.0,
            duplicates=args.duplicate_classes,
            lambda_jsd=args.lambda_jsd,
        )

    def forward(
        self, features: ARFFeatures, logit_scale: torch.Tensor, local: ARFFeatures | None = None
    ) -> ARFLossOutput:
        """The loss of `features` (every micro-batch of a contrastive batch), plus the per-image terms of `local`
        (the micro-batch being differentiated; default: `features`). `logit_scale`: the log temperature."""
        local = local if local is not None else features
        terms = {"loss_cls": self.class_loss(features.images, features.prompts, logit_scale, features.labels)}
        loss = terms["loss_cls"]
        if self.lambda_caption > 0:
            keys = _required(features.caption_keys, "caption_keys")
            terms["loss_caption"] = self.caption_loss(features.images, features.captions, logit_scale, keys)
            loss = loss + self.lambda_caption * terms["loss_caption"]
        if self.lambda_pairs > 0:
            keys = _required(features.pair_keys, "pair_keys")
            terms["loss_pairs"] = self.caption_loss(features.pair_images, features.pair_captions, logit_scale, keys)
            loss = loss + self.lambda_pairs * terms["loss_pairs"]
        local_loss = None
        if self.lambda_distill > 0:
            if local.distill_targets is None:
                raise KeyError("Anchor distillation: the batch has no `pair_targets` (AnchorCollator adds them).")
            if local.pair_images is None:
                raise KeyError("Anchor distillation: the batch has no pair images (retrieved pairs, λ2 > 0).")
            distances = (local.pair_images.float() - local.distill_targets.float()).pow(2).sum(dim=-1)
            terms["loss_distill"] = distances.mean()
            local_loss = self.lambda_distill * terms["loss_distill"]
        if self.lambda_jsd > 0:
            if local.views is None:
                raise KeyError("Consistency: the batch has no AugMix views (AnchorCollator adds them).")
            terms["loss_jsd"] = consistency_loss(
                local.images, local.views, features.prompts, features.labels, logit_scale
            )
            local_loss = self.lambda_jsd * terms["loss_jsd"] + (local_loss if local_loss is not None else 0.0)
        return ARFLossOutput(window_loss=loss, local_loss=local_loss, terms=terms)


def consistency_loss(
    images: torch.Tensor,
    views: torch.Tensor,
    prompts: torch.Tensor,
    labels: torch.Tensor,
    logit_scale: torch.Tensor,
) -> torch.Tensor:
    """AugMix's Jensen-Shannon consistency (Hendrycks et al., 2020, eq. 1) for a contrastive model.

    Each image's class distribution is the softmax over the classes of the contrastive batch: one weight per
    class, the normalised mean of its prompt rows in `prompts` / `labels` (gathered from every process, so the
    classes are those of the global batch), taken as constants. Returns the mean over `images` of the
    Jensen-Shannon divergence among the distributions of an image and of its views (`views`:
    `(len(images) * v, dim)`, row-major), i.e. the mean KL divergence of each from their mixture, as the
    reference computes it. `logit_scale`: the log temperature of the contrastive loss.
    """
    all_prompts, all_labels = _gather_no_grad(prompts.detach().float()), _gather_no_grad(labels)
    classes, inverse = torch.unique(all_labels, return_inverse=True)
    sums = all_prompts.new_zeros(len(classes), all_prompts.shape[1]).index_add(0, inverse, all_prompts)
    # Only the image tower learns from this term (it is what carries robustness to corruptions): the class weights
    # and the temperature are held by L_cls. A trained temperature could also flatten every distribution to lower
    # the divergence, and class weights from other micro-batches have no gradient in an accumulation window.
    scale = logit_scale.detach().float().clamp(max=LOGIT_SCALE_MAX).exp()
    rows = torch.cat([images.float()[:, None], views.float().view(images.shape[0], -1, images.shape[1])], dim=1)
    log_p = torch.log_softmax(scale * rows @ F.normalize(sums, dim=-1).t(), dim=-1)  # (images, 1 + v, classes)
    p = log_p.exp()
    log_mixture = p.mean(dim=1, keepdim=True).clamp(1e-7, 1).log()
    return (p * (log_p - log_mixture)).sum(dim=-1).mean()


def _required(keys: torch.Tensor | None, name: str) -> torch.Tensor:
    if keys is None:
        raise KeyError(f"The batch has no {name!r} (its texts' `text_key`s): use AnchorCollator.")
    return keys


class FrozenImageTower(nn.Module):
    """A frozen copy of a CLIP model's image tower (encoder + projection): the targets of `L_distill`.

    Copied when the trainer is built, i.e. from the weights the finetune starts from (a resumed run is
    built from the same pretrained model, so its targets are the same)."""

    def __init__(self, model: AnchorCLIPModel):
        super().__init__()
        self.vision_model = copy.deepcopy(model.vision_model)
        self.visual_projection = copy.deepcopy(model.visual_projection)
        self.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """f₀(x): the L2-normalised pretrained image features."""
        pooled = self.vision_model(pixel_values=pixel_values).pooler_output
        return F.normalize(self.visual_projection(pooled), dim=-1)

    def train(self, mode: bool = True) -> FrozenImageTower:
        return super().train(False)  # dropout and the like stay off: the targets are the pretrained features
