"""The callbacks every `AnchorCLIPTrainer` runs: the temperature clamp and the dataset's epoch."""

from __future__ import annotations

import math

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from .loss import LOGIT_SCALE_MAX


class ClampLogitScale(TrainerCallback):
    """Keep the temperature parameter at or below ln(100) after every update, as CLIP does."""

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model=None, **kwargs
    ) -> None:
        if model is not None and hasattr(model, "logit_scale"):
            with torch.no_grad():
                model.logit_scale.clamp_(max=LOGIT_SCALE_MAX)


class SetEpoch(TrainerCallback):
    """Tell the `AnchoredDataset` the epoch (its augmentation and pair order depend on it)."""

    def on_epoch_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, train_dataloader=None, **kwargs
    ) -> None:
        dataset = getattr(train_dataloader, "dataset", None)
        if dataset is not None and hasattr(dataset, "set_epoch"):
            dataset.set_epoch(math.floor((state.epoch or 0.0) + 1e-6))
