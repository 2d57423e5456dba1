"""The FT / LP-FT baselines' linear head: `LinearHeadCLIP` wraps a CLIP model and a `(classes, dim)` head.

The head is not part of the CLIP model: the baselines train it, ARF never sees it. It is saved beside the CLIP
weights as `finetune_head.safetensors`, so a checkpoint stays a plain CLIP checkpoint (`CLIPModel`,
`pipeline("zero-shot-image-classification")`) and `LinearHeadCLIP.from_pretrained` gets the head back.

`LinearHeadCLIP.forward` is what the trainer (and DDP) wraps: the head is used inside the wrapped forward,
so its gradients are averaged across processes like every other parameter's (a head used outside the DDP
forward raised "mark a variable ready only once", and LP-FT's probing trained one head per process).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import Trainer
from transformers.models.clip.modeling_clip import CLIPOutput

from .configuration_anchorclip import AnchorCLIPConfig
from .modeling_anchorclip import AnchorCLIPModel

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase
    from transformers.image_utils import ImageInput

FINETUNE_HEAD_FILE = "finetune_head.safetensors"


class LinearHeadCLIP(nn.Module):
    """A CLIP model plus a linear head on its normalised image features (the FT / LP-FT baselines).

    Args:
        clip: the CLIP model whose image tower feeds the head.
        head: `(num_classes, projection_dim)` weights; the logits are `normalize(f(x)) @ head.T` (no temperature:
            the FT head starts as the zero-shot head times `logit_scale.exp()`, see `init_from_zero_shot`).
    """

    def __init__(self, clip: AnchorCLIPModel, head: torch.Tensor):
        super().__init__()
        self.clip = clip
        self.head = nn.Parameter(head.detach().clone().to(clip.device))

    @torch.no_grad()
    def init_from_zero_shot(
        self, class_names: Sequence[str], templates: str | Sequence[str] | None, tokenizer: PreTrainedTokenizerBase
    ) -> None:
        """Set the head to where the baselines start: the prompt-ensembled zero-shot head times the temperature,
        so the untrained head scores exactly as zero-shot CLIP does (WiSE-FT's initialisation)."""
        head = self.clip.build_zero_shot_head(class_names, templates, tokenizer)
        self.head.copy_(head * self.clip.logit_scale.exp())

    def freeze_text_tower(self) -> None:
        """FT / LP-FT train the image tower and the head only: the text tower and the temperature stay put."""
        self.clip.text_model.requires_grad_(False)
        self.clip.text_projection.requires_grad_(False)
        self.clip.logit_scale.requires_grad_(False)

    # The names that read the CLIP model through the wrapper (Trainer, callbacks, logs, evaluation).
    @property
    def finetune_head(self) -> nn.Parameter:
        """The head's weights (the name its file and `wise_ft` use)."""
        return self.head

    @property
    def config(self) -> AnchorCLIPConfig:
        return self.clip.config

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.clip.logit_scale

    @property
    def device(self) -> torch.device:
        return self.clip.device

    @property
    def dtype(self) -> torch.dtype:
        return self.clip.dtype

    @property
    def name_or_path(self) -> str | None:
        return self.clip.name_or_path

    def forward(self, pixel_values: torch.Tensor, train_image_tower: bool = True) -> CLIPOutput:
        """`logits_per_image` `(batch, num_classes)` of the head on the normalised image features.

        `train_image_tower=False` computes the features without gradients (LP-FT's probing: only the head learns).
        """
        with torch.set_grad_enabled(train_image_tower and torch.is_grad_enabled()):
            features = self.clip.get_image_features(pixel_values=pixel_values).pooler_output
        image_embeds = F.normalize(features, dim=-1)
        logits = image_embeds.float() @ self.head.float().t()
        return CLIPOutput(logits_per_image=logits, image_embeds=image_embeds)

    @torch.no_grad()
    def classify(self, images: ImageInput | None = None, pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        """The head's logits `(batch, num_classes)` for PIL `images` (or ready `pixel_values`)."""
        if pixel_values is None:
            if images is None:
                raise ValueError("Pass images or pixel_values.")
            pixel_values = self.clip.processor(images=images, return_tensors="pt")["pixel_values"]
        return self(pixel_values.to(self.device, self.dtype)).logits_per_image

    def save_pretrained(
        self, save_directory: str | os.PathLike, state_dict: dict | None = None, is_main_process: bool = True, **kwargs
    ) -> None:
        """A plain CLIP checkpoint plus `finetune_head.safetensors` beside it.

        `state_dict` (this module's keys, as Trainer gathers them under FSDP / DeepSpeed) is split between the two.
        """
        head = self.head
        if state_dict is not None:
            head = state_dict["head"]
            state_dict = {key.removeprefix("clip."): value for key, value in state_dict.items() if key != "head"}
        self.clip.save_pretrained(save_directory, state_dict=state_dict, is_main_process=is_main_process, **kwargs)
        if is_main_process:
            _save_linear_head(head, save_directory)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> LinearHeadCLIP:
        """A checkpoint written by an FT / LP-FT run (folder or Hub id): its CLIP weights and its head.

        `kwargs` go to `AnchorCLIPModel.from_pretrained`. Raises `FileNotFoundError` without a head file.
        """
        clip = AnchorCLIPModel.from_pretrained(pretrained_model_name_or_path, **kwargs)
        head = load_linear_head(pretrained_model_name_or_path, **kwargs)
        if head is None:
            raise FileNotFoundError(f"{pretrained_model_name_or_path} has no {FINETUNE_HEAD_FILE}.")
        return cls(clip, head)


def with_saved_head(model: AnchorCLIPModel) -> AnchorCLIPModel | LinearHeadCLIP:
    """`model` with the head saved beside the checkpoint it was loaded from, or `model` itself if none."""
    head = load_linear_head(model.name_or_path) if model.name_or_path else None
    return LinearHeadCLIP(model, head) if head is not None else model


def _save_linear_head(head: torch.Tensor, save_directory: str | os.PathLike) -> None:
    """Write `finetune_head.safetensors` (key `weight`, fp32) into `save_directory`."""
    save_file({"weight": head.detach().cpu().float().contiguous()}, os.path.join(save_directory, FINETUNE_HEAD_FILE))


def load_linear_head(name_or_path: str | os.PathLike, **kwargs) -> torch.Tensor | None:
    """The head saved beside a checkpoint (local folder or Hub repo), or None when it has none.

    `kwargs` may carry `revision`, `cache_dir` and `token`, as `from_pretrained` takes them.
    """
    path = os.path.join(str(name_or_path), FINETUNE_HEAD_FILE)
    if os.path.isdir(str(name_or_path)):
        return load_file(path)["weight"] if os.path.isfile(path) else None
    from transformers.utils import cached_file

    cached = cached_file(
        str(name_or_path),
        FINETUNE_HEAD_FILE,
        revision=kwargs.get("revision"),
        cache_dir=kwargs.get("cache_dir"),
        token=kwargs.get("token"),
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
    )
    return load_file(cached)["weight"] if cached is not None else None


class LinearHeadCheckpoints(Trainer):
    """Resuming a `Trainer` of a `LinearHeadCLIP` from its checkpoints (CLIP weights plus the head file).

    Trainer's own loaders would resume with the zero-shot head under the trained head's optimizer state.
    """

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        model = model if model is not None else self.model
        if not isinstance(model, LinearHeadCLIP):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        super()._load_from_checkpoint(resume_from_checkpoint, model.clip)
        head = load_linear_head(resume_from_checkpoint)
        if head is None:
            raise FileNotFoundError(f"{resume_from_checkpoint} has no {FINETUNE_HEAD_FILE}: not an FT / LP-FT run.")
        with torch.no_grad():  # in place: the optimizer holds this very parameter
            model.head.copy_(head)

    def _load_best_model(self) -> None:
        checkpoint = self.state.best_model_checkpoint  # Trainer calls this only once it has one
        if isinstance(self.model, LinearHeadCLIP) and checkpoint is not None:
            return self._load_from_checkpoint(checkpoint)
        return super()._load_best_model()
