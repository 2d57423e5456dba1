"""AnchorCLIPModel: `CLIPModel` plus prompt-ensembled zero-shot heads and classification.

The weights are exactly CLIP's, so checkpoints stay interchangeable with `transformers.CLIPModel`.
Two additions:

* `forward` also accepts only images or only text; with both it is `CLIPModel.forward` unchanged. With
  `text_groups` it encodes each group of text rows at its own width: an ARF batch's class prompts are a few
  tokens, its captions several times longer, and padding every prompt to the longest caption multiplied the
  text tower's work.
* `build_zero_shot_head` / `classify`: class names x templates -> text embeddings, L2-normalised per
  prompt, averaged over templates and renormalised (Radford et al., WiSE-FT, open_clip).

The FT / LP-FT baselines' linear head is not part of this model: see `heads.LinearHeadCLIP`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from transformers import CLIPModel
from transformers.models.clip.modeling_clip import CLIPOutput

from .configuration_anchorclip import AnchorCLIPConfig
from .templates import resolve_templates

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase
    from transformers.image_utils import ImageInput


class AnchorCLIPModel(CLIPModel):
    """A `CLIPModel` that builds prompt-ensembled zero-shot heads and classifies images.

    Load any CLIP checkpoint (Hub id or folder) with `AnchorCLIPModel.from_pretrained`; saved checkpoints
    are ordinary CLIP checkpoints. After finetuning with anchorclip the config remembers the finetune
    `class_names` and `templates`, so `model.classify(images)` needs no other argument.
    """

    config_class = AnchorCLIPConfig
    config: AnchorCLIPConfig

    def __init__(self, config: AnchorCLIPConfig):
        super().__init__(config)
        self._processor = None

    # ---------------------------------------------------------------- forward

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        return_loss: bool | None = None,
        text_groups: Sequence[tuple[int, int]] | None = None,
        **kwargs,
    ) -> CLIPOutput:
        """`CLIPModel.forward` with both inputs; one tower's normalised embeddings with one input.

        `text_groups` (`(rows, tokens)` per group of consecutive right-padded text rows, as `AnchorCollator`
        builds them) encodes each group trimmed to its own `tokens`. Causal attention never lets a token see
        the padding after it, so the embeddings are those of the padded batch; only the work shrinks.
        """
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
        tokenizer: PreTrainedTokenizerBase | None = None,
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
        images: ImageInput | None = None,
        pixel_values: torch.Tensor | None = None,
        class_names: Sequence[str] | None = None,
        templates: str | Sequence[str] | None = None,
        head: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits `(batch, num_classes)` for PIL `images` (or ready `pixel_values`).

        With no `class_names`/`head`, a zero-shot head for the class names and templates saved in the config
        (an FT / LP-FT checkpoint's trained head: `heads.LinearHeadCLIP.classify`).
        """
        if pixel_values is None:
            if images is None:
                raise ValueError("Pass images or pixel_values.")
            pixel_values = self.processor(images=images, return_tensors="pt")["pixel_values"]
        if head is None:
            class_names = class_names or getattr(self.config, "class_names", None)
            if not class_names:
                raise ValueError("No class_names given and none saved in the config.")
            head = self.build_zero_shot_head(class_names, templates)
        image_embeds = F.normalize(
            self.get_image_features(pixel_values=pixel_values.to(self.device, self.dtype)).pooler_output.float(),
            dim=-1,
        )
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
