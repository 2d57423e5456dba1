"""LoRA finetuning of both CLIP towers through `peft`, with the same ARF / FLYP losses.

    model = apply_lora(AnchorCLIPModel.from_pretrained("openai/clip-vit-base-patch16"), r=16)
    ...  # AnchorCLIPTrainer(model, args) (or just `AnchorTrainingArguments(lora_r=16)` with a plain model)
    merged = merge_lora("out/")          # adapter folder (or a PeftModel) -> plain AnchorCLIPModel
    merged.save_pretrained("out/merged")  # an ordinary CLIP checkpoint

What trains. Only the LoRA matrices: by default on the attention projections `q_proj`, `k_proj`, `v_proj`
and `out_proj` of *both* towers (every `CLIPAttention`). The temperature `logit_scale` and the two
projection heads (`visual_projection`, `text_projection`) stay frozen at their pretrained values: the
temperature of a pretrained CLIP already sits at (or near) its clamp of 100, and a frozen base keeps an
adapter folder self-contained (adapter weights only). Add `visual_projection` / `text_projection` to
`target_modules` to adapt the projections too (they are `nn.Linear`, so LoRA applies).

Saved adapters. `AnchorCLIPTrainer` saves a `PeftModel` as `adapter_config.json` + `adapter_model.safetensors`,
the processor, and `anchorclip_lora.json` (class names and templates of the finetune task, the base model),
so that `merge_lora(folder)` gives back a model whose `classify(images)` works with no further arguments.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import nn

from .heads import LinearHeadCLIP
from .modeling_anchorclip import AnchorCLIPModel

DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj")
EXTRAS_FILE = "anchorclip_lora.json"
ADAPTER_CONFIG_FILE = "adapter_config.json"


def _lora_config(
    r: int,
    alpha: float | None = None,
    dropout: float = 0.0,
    target_modules: Sequence[str] | None = None,
):
    """A `peft.LoraConfig` for CLIP: rank `r`, scaling `alpha` (default `2 * r`), both towers' attention."""
    from peft import LoraConfig

    if r <= 0:
        raise ValueError(f"LoRA rank must be > 0, got {r}.")
    return LoraConfig(
        r=r,
        # peft types lora_alpha as int; a float scales the update just as well (scaling = alpha / r)
        lora_alpha=alpha if alpha is not None else 2 * r,  # type: ignore[arg-type]
        lora_dropout=dropout,
        target_modules=list(target_modules or DEFAULT_TARGET_MODULES),
        bias="none",
    )


def apply_lora(
    model: AnchorCLIPModel,
    r: int = 8,
    alpha: float | None = None,
    dropout: float = 0.0,
    target_modules: Sequence[str] | None = None,
):
    """Wrap `model` in a `peft.PeftModel` with LoRA adapters; everything else is frozen (see module docstring)."""
    from peft import get_peft_model

    if is_lora_model(model):
        raise ValueError("The model already has LoRA adapters.")
    if isinstance(model, LinearHeadCLIP):
        raise ValueError("LoRA is for the contrastive methods (arf, flyp); this model has an FT linear head.")
    peft_model = get_peft_model(model, _lora_config(r, alpha, dropout, target_modules))
    peft_model.base_model.model.logit_scale.requires_grad_(False)
    return peft_model


def apply_lora_from_args(model, args):
    """`apply_lora` with the `lora_*` fields of `AnchorTrainingArguments` (used by `AnchorCLIPTrainer`)."""
    return apply_lora(
        model, r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout, target_modules=args.lora_target_modules
    )


def is_lora_model(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def unwrap_base_model(model) -> AnchorCLIPModel:
    """The `AnchorCLIPModel` inside a `PeftModel` (adapter layers still in place), or `model` itself."""
    return model.get_base_model() if is_lora_model(model) else model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """`(trainable, total)` parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------ save / load


def save_lora_extras(model, output_dir: str | os.PathLike) -> None:
    """Write `anchorclip_lora.json` (class names, templates, base model) beside saved adapters."""
    base = unwrap_base_model(model)
    extras = {
        "class_names": getattr(base.config, "class_names", None),
        "templates": getattr(base.config, "templates", None),
        "base_model": getattr(base, "name_or_path", None) or None,
    }
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, EXTRAS_FILE), "w") as handle:
        json.dump(extras, handle, indent=2)


def save_lora(model, output_dir: str | os.PathLike, processor=None) -> None:
    """Save adapters (`PeftModel.save_pretrained`), `anchorclip_lora.json` and the processor, like the trainer."""
    if not is_lora_model(model):
        raise ValueError("save_lora needs a PeftModel (see apply_lora).")
    model.save_pretrained(output_dir)
    save_lora_extras(model, output_dir)
    if processor is not None:
        processor.save_pretrained(output_dir)


def _is_adapter_folder(path) -> bool:
    return isinstance(path, (str, os.PathLike)) and os.path.isfile(os.path.join(path, ADAPTER_CONFIG_FILE))


def load_lora(path: str | os.PathLike, base_model: str | AnchorCLIPModel | None = None, is_trainable: bool = False):
    """A `PeftModel` from an adapter folder; the base model defaults to the one the adapters were trained on."""
    from peft import PeftConfig, PeftModel

    extras = _read_extras(path)
    if base_model is None:
        base_model = extras.get("base_model") or PeftConfig.from_pretrained(str(path)).base_model_name_or_path
        if not base_model:
            raise ValueError(f"{path} does not name its base model: pass base_model=<CLIP id, folder or model>.")
    if isinstance(base_model, (str, os.PathLike)):
        base_model = AnchorCLIPModel.from_pretrained(str(base_model))
    for key in ("class_names", "templates"):
        if extras.get(key):
            setattr(base_model.config, key, extras[key])
    if _has_processor(path):
        from transformers import CLIPProcessor

        base_model.processor = CLIPProcessor.from_pretrained(str(path))
    return PeftModel.from_pretrained(base_model, str(path), is_trainable=is_trainable)


def merge_lora(model_or_path, base_model: str | AnchorCLIPModel | None = None) -> AnchorCLIPModel:
    """Fold LoRA adapters into the weights: a plain `AnchorCLIPModel` (and so a plain CLIP checkpoint).

    Accepts a `PeftModel` (left untouched: a copy is merged), an adapter folder (see `load_lora`), or a model
    without adapters (returned as is).
    """
    if isinstance(model_or_path, (str, os.PathLike)):
        if not _is_adapter_folder(model_or_path):
            return AnchorCLIPModel.from_pretrained(str(model_or_path))
        model = load_lora(model_or_path, base_model)
    elif is_lora_model(model_or_path):
        model = copy.deepcopy(model_or_path)
    else:
        return model_or_path
    merged = model.merge_and_unload()
    merged.requires_grad_(True)
    return merged


def save_merged(model_or_path, output_dir: str | os.PathLike, processor=None) -> AnchorCLIPModel:
    """`merge_lora` then save the merged model (and processor) as an ordinary CLIP checkpoint."""
    merged = merge_lora(model_or_path)
    merged.save_pretrained(output_dir)
    processor = processor if processor is not None else getattr(merged, "_processor", None)
    if processor is not None:
        processor.save_pretrained(output_dir)
    return merged


def _read_extras(path) -> dict:
    file = os.path.join(str(path), EXTRAS_FILE)
    if not os.path.isfile(file):
        return {}
    with open(file) as handle:
        return json.load(handle)


def _has_processor(path) -> bool:
    return os.path.isfile(os.path.join(str(path), "preprocessor_config.json")) or os.path.isfile(
        os.path.join(str(path), "processor_config.json")
    )


@torch.no_grad()
def lora_delta_norm(model) -> float:
    """Sum of the Frobenius norms of the LoRA updates B·A (0 right after `apply_lora`): a trained-or-not check."""
    total = 0.0
    for module in unwrap_base_model(model).modules():
        if hasattr(module, "lora_A") and hasattr(module, "get_delta_weight"):
            layer = cast(Any, module)  # a peft LoRA layer, found by what it has
            for name in layer.lora_A:
                total += float(layer.get_delta_weight(name).norm())
    return total
