"""AnchorCLIP configuration: a `CLIPConfig` that also remembers the finetune classes and templates.

`model_type` stays `"clip"`, so a saved checkpoint is an ordinary CLIP checkpoint: plain
`transformers.CLIPModel`/`CLIPConfig` load it (the extra fields ride along as attributes) and
`pipeline("zero-shot-image-classification")` uses it without anchorclip installed.
"""

from __future__ import annotations

from transformers import CLIPConfig


class AnchorCLIPConfig(CLIPConfig):
    r"""
    class_names (`list[str]`, *optional*):
        Class names of the finetune task, in label-id order. `AnchorCLIPModel.classify` uses them by default.
    templates (`list[str]`, *optional*):
        Prompt templates (each with one `{}`) used to build the default zero-shot head.
    """

    class_names: list[str] | None = None
    templates: list[str] | None = None
