"""CLIP's symmetric contrastive loss, gathered across processes with gradients (open_clip's local-loss form).

Each process scores its local rows against the features of *all* processes, so the global batch size
sets the number of negatives however small the per-GPU batch is. The gather is torch's functional
collective `all_gather_single`, whose backward sums each feature's gradient from every process and
hands it to the process that produced the feature; with DDP averaging gradients, the update equals that
of one process holding the concatenated batch. (`torch.distributed.nn.functional.all_gather`, open_clip's
choice, computes the same but is deprecated since torch 2.13: a FutureWarning every step.)

Duplicates. Rows may carry integer ids (`labels`): class ids for class prompts, a hash of the token ids
for captions (`batching.text_key`). With `duplicates="mask"`, another row with the same id is removed
from both softmaxes: it is not a negative, since its text is the same. Without duplicates the loss is
bit-identical to the plain CLIP loss.

Logits are computed in fp32 whatever the autocast dtype: the softmax over thousands of negatives with
a scale of 100 is where fp16/bf16 rounding hurts.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

LOGIT_SCALE_MAX = math.log(100.0)
DUPLICATE_MODES = ("negatives", "mask")


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def gather_features(features: torch.Tensor) -> torch.Tensor:
    """Concatenate `features` from all processes in rank order; gradients flow back to their owners."""
    world_size, _ = _world()
    if world_size == 1:
        return features
    try:
        from torch.distributed._functional_collectives import all_gather_single
    except ImportError:  # torch < 2.13 names the same autograd-aware gather differently
        from torch.distributed._functional_collectives import all_gather_tensor_autograd as all_gather_single

    return all_gather_single(features.contiguous(), 0, dist.group.WORLD)


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
        all_images = gather_features(image_features)
        all_texts = gather_features(text_features)
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
