"""WiSE-FT (Wortsman et al., CVPR 2022): θ(α) = (1 - α)·θ_zero-shot + α·θ_finetuned, weight by weight."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator

import torch

from .heads import LinearHeadCLIP
from .modeling_anchorclip import AnchorCLIPModel

Model = AnchorCLIPModel | LinearHeadCLIP


def wise_ft(zero_shot: Model, finetuned: Model, alpha: float, zero_shot_head: torch.Tensor | None = None) -> Model:
    """Return a new model whose weights interpolate the two; α=0 is `zero_shot`, α=1 is `finetuned`.

    A finetuned FT / LP-FT model (`LinearHeadCLIP`) has its head interpolated with `zero_shot_head` (default: the
    zero-shot model's own head, when it is a `LinearHeadCLIP` too); ARF and FLYP models have no head and need none.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
    from .lora import merge_lora  # a LoRA finetune (PeftModel) is interpolated through its merged weights

    finetuned = merge_lora(finetuned)
    fine_head = finetuned.head if isinstance(finetuned, LinearHeadCLIP) else None
    if fine_head is not None:
        base_head = zero_shot_head
        if base_head is None and isinstance(zero_shot, LinearHeadCLIP):
            base_head = zero_shot.head
        if base_head is None:
            raise ValueError("The finetuned model has a linear head: pass zero_shot_head to interpolate it with.")
    zero_state, fine_state = _clip_state(zero_shot), _clip_state(finetuned)
    if zero_state.keys() != fine_state.keys():
        missing = sorted(set(zero_state) ^ set(fine_state))[:5]
        raise ValueError(f"The two models have different parameters (e.g. {missing}); WiSE-FT needs one architecture.")
    merged = copy.deepcopy(finetuned.clip if fine_head is not None else finetuned)
    merged.load_state_dict({key: _lerp(zero_state[key], fine_state[key], alpha) for key in fine_state}, strict=False)
    if fine_head is not None:
        return LinearHeadCLIP(merged, _lerp(base_head.to(fine_head), fine_head.data, alpha))
    return merged


def wise_ft_sweep(
    zero_shot: Model, finetuned: Model, alphas: Iterable[float], **kwargs
) -> Iterator[tuple[float, Model]]:
    """Yield `(alpha, model)` for each α, one interpolated model at a time (memory stays at three models)."""
    for alpha in alphas:
        yield alpha, wise_ft(zero_shot, finetuned, alpha, **kwargs)


def _clip_state(model: Model) -> dict[str, torch.Tensor]:
    """The CLIP weights alone: the optional linear head is handled separately."""
    return (model.clip if isinstance(model, LinearHeadCLIP) else model).state_dict()


def _lerp(start: torch.Tensor, end: torch.Tensor, alpha: float) -> torch.Tensor:
    if not torch.is_floating_point(end):  # integer buffers (e.g. position ids) are not interpolated
        return end.clone()
    if alpha == 0.0:
        return start.clone().to(end.dtype)
    if alpha == 1.0:
        return end.clone()
    return torch.lerp(start.to(torch.float32), end.to(torch.float32), alpha).to(end.dtype)
