"""The model card of a trainer's run: results from the argument, results.json or the logs; `write_model_card`
is `Trainer.create_model_card` for anchorclip (LoRA runs: a card describing the adapters, in place of peft's
template)."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import torch
from huggingface_hub import ModelCard

from ..results import summarize
from .card import build_model_card

if TYPE_CHECKING:
    from .trainer_hooks import HubTrainerMixin

CARD_KWARGS = ("license", "tags", "finetune_dataset")  # what callers may pass on to `build_model_card`


def run_output_dir(trainer: HubTrainerMixin) -> str:
    """The run's `output_dir` (TrainingArguments fills in a default where none is given)."""
    assert trainer.args.output_dir is not None
    return trainer.args.output_dir


def trainer_results(trainer: HubTrainerMixin, results: dict | None) -> dict:
    """The run's results: given, else `<output_dir>/results.json`, else the last `evaluate()` in the logs."""
    if results is not None:
        return results
    path = os.path.join(run_output_dir(trainer), "results.json")
    if os.path.isfile(path):
        with open(path) as handle:
            return json.load(handle)
    return logged_results(trainer)


def logged_results(trainer: HubTrainerMixin) -> dict:
    """What the trainer's logs hold of the run's results: the last `evaluate()`, training time, hardware."""
    found: dict[str, Any] = {"method": trainer.args.method}
    for entry in reversed(trainer.state.log_history):
        if any(key.startswith("eval_") and key.endswith(("_top1", "_mean_recall")) for key in entry):
            found["finetuned"] = summarize(entry, "eval")
            break
    for entry in trainer.state.log_history:
        if "train_runtime" in entry:
            found["train_seconds"] = entry["train_runtime"]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU x{os.cpu_count()}"
    found["hardware"] = {"device": device, "num_processes": trainer.args.world_size, "torch": torch.__version__}
    return found


def _set_groups(trainer) -> dict[str, str]:
    eval_dataset = trainer.eval_dataset
    if not isinstance(eval_dataset, dict):
        return {}
    return {name: getattr(eval_set, "group", "id") for name, eval_set in eval_dataset.items()}


def _lora_description(model, adapters: bool) -> dict | None:
    from ..lora import is_lora_model

    if not is_lora_model(model):
        return None
    config = model.peft_config[model.active_adapter]
    return {
        "r": config.r,
        "alpha": config.lora_alpha,
        "dropout": config.lora_dropout,
        "target_modules": sorted(config.target_modules),
        "merged": not adapters,
    }


def trainer_model_card(
    trainer: HubTrainerMixin,
    results: dict | None = None,
    repo_id: str | None = None,
    adapters: bool = False,
    **kwargs,
) -> ModelCard:
    """`build_model_card` from a trainer's model, arguments and results; `adapters`: the card of a folder that
    holds a LoRA model's adapters (not the merged checkpoint)."""
    from ..lora import unwrap_base_model

    results = trainer_results(trainer, results)
    model = trainer.accelerator.unwrap_model(trainer.model)
    base = unwrap_base_model(model)
    run_args = results.get("args") or {}
    base_model = (run_args.get("model") or {}).get("model_name_or_path") or getattr(base, "name_or_path", None)
    data_args = run_args.get("data") or {}
    dataset = kwargs.pop("finetune_dataset", None) or data_args.get("dataset_name")
    if dataset is None and run_args:
        dataset = "miniworld:finetune"  # the example's built-in world
    return build_model_card(
        results,
        {k: v for k, v in trainer.args.to_dict().items() if "token" not in k},
        repo_id=repo_id or trainer.hub_model_id or trainer.args.hub_model_id or _default_repo(trainer),
        base_model=base_model,
        finetune_dataset=dataset,
        class_names=getattr(base.config, "class_names", None),
        templates=getattr(base.config, "templates", None),
        set_groups=_set_groups(trainer),
        lora=_lora_description(model, adapters),
        **kwargs,
    )


def _default_repo(trainer) -> str:
    """The repository name when none is given: the output folder's name."""
    return os.path.basename(os.path.abspath(trainer.args.output_dir))


def write_model_card(
    trainer: HubTrainerMixin, output_dir: str | None = None, results: dict | None = None, **kwargs
) -> str:
    """`Trainer.create_model_card` for anchorclip: write `README.md` to `output_dir` (default the trainer's),
    where the trainer saved the model (for a LoRA model: its adapters, so the card describes those)."""
    from ..lora import is_lora_model

    kwargs = {k: v for k, v in kwargs.items() if k in CARD_KWARGS and v is not None}
    if isinstance(kwargs.get("tags"), str):
        kwargs["tags"] = [kwargs["tags"]]
    adapters = is_lora_model(trainer.accelerator.unwrap_model(trainer.model))
    card = trainer_model_card(trainer, results, adapters=adapters, **kwargs)
    path = os.path.join(output_dir or run_output_dir(trainer), "README.md")
    card.save(path)
    return path
