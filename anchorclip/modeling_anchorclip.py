"""AnchorCLIPModel: `CLIPModel` plus prompt-ensembled zero-shot heads and classification.

The weights are exactly CLIP's, so checkpoints stay interchangeable with `transformers.CLIPModel`.
Two additions:

* `forward` also accepts only images or only text (the trainer encodes one tower at a time for some
  methods); with both it is `CLIPModel.forward` unchanged. With `finetune_head=True` and images only it
  also returns the FT / LP-FT head's logits, so that the head is used inside the (DDP-wrapped) forward
  and its gradients are synchronised like every other parameter's. With `text_groups` it encodes each
  group of text rows at its own width: an ARF batch's class prompts are a few tokens, its captions
  several times longer, and padding every prompt to the longest caption multiplied the text tower's work.
* `build_zero_shot_head` / `classify`: class names x templates -> text embeddings, L2-normalised per
  prompt, averaged over templates and renormalised (Radford et al., WiSE-FT, open_clip).

A linear head trained by the FT / LP-FT baselines is kept outside the CLIP state dict, in
`finetune_head.safetensors`, so that plain `CLIPModel` never sees an unexpected key.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import CLIPModel
from transformers.models.clip.modeling_clip import CLIPOutput

from .configuration_anchorclip import AnchorCLIPConfig
from .templates import resolve_templates

FINETUNE_HEAD_FILE = "finetune_head.safetensors"


class AnchorCLIPModel(CLIPModel):
    """A `CLIPModel` that builds prompt-ensembled zero-shot heads and classifies images.

    Load any CLIP checkpoint (Hub id or folder) with `AnchorCLIPModel.from_pretrained`; saved checkpoints
    are ordinary CLIP checkpoints. After finetuning with anchorclip the config remembers the finetune
    `class_names` and `templates`, so `model.classify(images)` needs no other argument.
    """

    config_class = AnchorCLIPConfig

    def __init__(self, config: AnchorCLIPConfig):
        super().__init__(config)
        # Set by the FT / LP-FT baselines: (num_classes, projection_dim) weights on normalised image features.
        self.finetune_head: nn.Parameter | None = None
        self._processor = None

    # ---------------------------------------------------------------- forward

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        return_loss: bool | None = None,
        finetune_head: bool = False,
        train_image_tower: bool = True,
        text_groups: Sequence[tuple[int, int]] | None = None,
        **kwargs,
    ) -> CLIPOutput:
        """`CLIPModel.forward` with both inputs; one tower's normalised embeddings with one input.

        `finetune_head=True` (images only) adds `logits_per_image`, the linear head's logits on the
        normalised image features; `train_image_tower=False` then computes the features without gradients
        (LP-FT's probing phase: only the head learns).

        `text_groups` (`(rows, tokens)` per group of consecutive right-padded text rows, as `AnchorCollator`
        builds them) encodes each group trimmed to its own `tokens`. Causal attention never lets a token see
        the padding after it, so the embeddings are those of the padded batch; only the work shrinks.
        """
        if finetune_head:
            if self.finetune_head is None or pixel_values is None or input_ids is not None:
                raise ValueError("finetune_head=True needs a head (set_finetune_head) and pixel_values alone.")
            with torch.set_grad_enabled(train_image_tower and torch.is_grad_enabled()):
                features = self.get_image_features(pixel_values=pixel_values).pooler_output
            image_embeds = F.normalize(features, dim=-1)
            logits = image_embeds.float() @ self.finetune_head.float().t()
            return CLIPOutput(logits_per_image=logits, image_embeds=image_embeds)
        if input_ids is not None and pixel_values is not None and text_groups is None:
            return super().forward(
                input_ids=input_ids,
                pixel_values=pixel_values,
                attention_mask=attention_mask,
                position_ids=position_ids,
                return_loss=return_loss,
                **kwargs,
            )
        if return_loss:
            raise ValueError("return_loss needs both input_ids and pixel_values, and no text_groups.")
        image_embeds = text_embeds = None
        if pixel_values is not None:
            image_embeds = F.normalize(self.get_image_features(pixel_values=pixel_values).pooler_output, dim=-1)
        if input_ids is not None:
            text = self._text_features(input_ids, attention_mask, position_ids, text_groups)
            text_embeds = F.normalize(text, dim=-1)
        if image_embeds is None and text_embeds is None:
            raise ValueError("Pass input_ids, pixel_values, or both.")
        if image_embeds is None or text_embeds is None:
            return CLIPOutput(image_embeds=image_embeds, text_embeds=text_embeds)
        # CLIPModel.forward's logits, as with one padded text batch. The trainer's loss uses the temperature
        # itself, outside the forward; DDP's search for unused parameters must still find it used inside.
        logits_per_text = text_embeds @ image_embeds.t() * self.logit_scale.exp()
        return CLIPOutput(
            logits_per_image=logits_per_text.t(),
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
        )

    def _text_features(self, input_ids, attention_mask, position_ids, text_groups) -> torch.Tensor:
        groups = text_groups or [tuple(input_ids.shape)]
        if sum(rows for rows, _ in groups) != input_ids.shape[0]:
            raise ValueError(f"text_groups {list(groups)} do not cover the text batch's {input_ids.shape[0]} rows.")
        start, features = 0, []
        for rows, tokens in groups:
            part = slice(start, start + rows)
            start += rows
            features.append(
                self.get_text_features(
                    input_ids=input_ids[part, :tokens],
                    attention_mask=attention_mask[part, :tokens] if attention_mask is not None else None,
                    position_ids=position_ids[part if len(position_ids) > 1 else slice(None), :tokens]
                    if position_ids is not None
                    else None,
                ).pooler_output
            )
        return torch.cat(features)

    # ------------------------------------------------------------ zero-shot

    @torch.no_grad()
    def build_zero_shot_head(
        self,
        class_names: Sequence[str],
        templates: str | Sequence[str] | None = None,
        tokenizer=None,
        batch_size: int = 256,
    ) -> torch.Tensor:
        """Return a `(num_classes, projection_dim)` matrix of L2-normalised prompt-ensemble embeddings.

        Prompts are encoded in batches of about `batch_size` prompts, whole classes at a time.
        """
        if not class_names:
            raise ValueError("class_names is empty.")
        templates = resolve_templates(templates if templates is not None else getattr(self.config, "templates", None))
        tokenizer = tokenizer or self.processor.tokenizer
        was_training = self.training
        self.eval()
        classes_per_batch = max(1, batch_size // len(templates))
        weights = []
        for start in range(0, len(class_names), classes_per_batch):
            chunk = class_names[start : start + classes_per_batch]
            prompts = [template.format(name) for name in chunk for template in templates]
            tokens = tokenizer(prompts, padding=True, truncation=True, return_tensors="pt").to(self.device)
            embeds = self.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens.get("attention_mask"))
            embeds = F.normalize(embeds.pooler_output.float(), dim=-1).view(len(chunk), len(templates), -1)
            weights.append(F.normalize(embeds.mean(dim=1), dim=-1))
        self.train(was_training)
        return torch.cat(weights)

    @torch.no_grad()
    def classify(
        self,
        images=None,
        pixel_values: torch.Tensor | None = None,
        class_names: Sequence[str] | None = None,
        templates: str | Sequence[str] | None = None,
        head: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits `(batch, num_classes)` for PIL `images` (or ready `pixel_values`).

        With no `class_names`/`head`, uses the trained FT head if there is one, else a zero-shot head for
        the class names and templates saved in the config.
        """
        if pixel_values is None:
            if images is None:
                raise ValueError("Pass images or pixel_values.")
            pixel_values = self.processor(images=images, return_tensors="pt")["pixel_values"]
        if head is None:
            if class_names is None and self.finetune_head is not None:
                head = self.finetune_head
            else:
                class_names = class_names or getattr(self.config, "class_names", None)
                if not class_names:
                    raise ValueError("No class_names given and none saved in the config.")
                head = self.build_zero_shot_head(class_names, templates)
        image_embeds = F.normalize(
            self.get_image_features(pixel_values=pixel_values.to(self.device, self.dtype)).pooler_output.float(),
            dim=-1,
        )
        if self.finetune_head is not None and head is self.finetune_head:
            return image_embeds @ head.float().t()
        return self.logit_scale.exp().float() * image_embeds @ head.t()

    @property
    def processor(self):
        """The `CLIPProcessor` saved beside the weights (loaded lazily from `config.name_or_path`)."""
        if self._processor is None:
            from transformers import CLIPProcessor

            try:
                self._processor = CLIPProcessor.from_pretrained(self.config.name_or_path)
            except Exception as error:  # noqa: BLE001 - any loading failure means "no processor there"
                raise ValueError(
                    f"No processor found at {self.config.name_or_path!r}; pass a tokenizer/pixel_values explicitly "
                    "or set `model.processor = CLIPProcessor(...)`."
                ) from error
        return self._processor

    @processor.setter
    def processor(self, value) -> None:
        self._processor = value

    # ------------------------------------------------------- FT head, save

    def set_finetune_head(self, weights: torch.Tensor | None) -> None:
        """Attach (or remove, with None) a trainable linear head used by the FT / LP-FT baselines."""
        self.finetune_head = None if weights is None else nn.Parameter(weights.detach().clone())

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        # Saved as a plain CLIP checkpoint: the head goes to its own file, the architecture reads "CLIPModel".
        head, self.finetune_head = self.finetune_head, None
        saved_head = head
        state_dict = kwargs.get("state_dict")
        if state_dict is not None and "finetune_head" in state_dict:  # gathered by Trainer (FSDP, DeepSpeed)
            kwargs["state_dict"] = {key: value for key, value in state_dict.items() if key != "finetune_head"}
            saved_head = state_dict["finetune_head"]
        try:
            super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            self.finetune_head = head
        if saved_head is not None and kwargs.get("is_main_process", True):
            save_file(
                {"weight": saved_head.detach().cpu().float().contiguous()},
                os.path.join(save_directory, FINETUNE_HEAD_FILE),
            )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs) -> AnchorCLIPModel:
        """Any CLIP checkpoint (Hub id or folder), as `CLIPModel.from_pretrained` takes it (same arguments), plus
        the FT / LP-FT linear head saved beside an anchorclip checkpoint, when there is one."""
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        head_file = _resolve_file(pretrained_model_name_or_path, FINETUNE_HEAD_FILE, kwargs)
        if head_file is not None:
            model.set_finetune_head(load_file(head_file)["weight"].to(model.device))
        return model


def _resolve_file(name_or_path, filename: str, kwargs: dict) -> str | None:
    """Path of an optional extra file in a local folder or Hub repo, or None when it does not exist."""
    path = os.path.join(str(name_or_path), filename)
    if os.path.isdir(str(name_or_path)):
        return path if os.path.isfile(path) else None
    from transformers.utils import cached_file

    return cached_file(
        name_or_path,
        filename,
        revision=kwargs.get("revision"),
        cache_dir=kwargs.get("cache_dir"),
        token=kwargs.get("token"),
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
    )
