"""Steps that `anchorclip train` and `anchorclip eval` share: evaluation sets from flags, WiSE-FT, hardware."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import transformers

from ..evaluation import GROUPS, EvalSet
from ..evaluation.corruption_sets import CorruptionArguments, corruption_sets_from_args
from ..evaluation.suites import SuiteEntry, build_eval_set, list_suites, load_suite_sets
from ..modeling_anchorclip import AnchorCLIPModel
from ..results import summarize
from ..wise import wise_ft


@dataclass
class EvalSetArguments(CorruptionArguments):
    """Which sets to evaluate on: the same flags, with the same meaning, for `anchorclip train` and `eval`."""

    eval_datasets: list[str] = field(
        default_factory=list,
        metadata={"help": "Evaluation sets as NAME@GROUP=SPEC (GROUP: id, domain_shift, zero_shot, retrieval)."},
    )
    eval_suite: str | None = field(
        default=None,
        metadata={"help": f"An evaluation suite: a shipped one ({', '.join(list_suites())}) or a YAML file."},
    )
    eval_data_root: str | None = field(
        default=None, metadata={"help": "Read a suite's datasets from local copies <eval_data_root>/<name>."}
    )


def eval_sets_from_args(args: EvalSetArguments, miniworld_size: int | None = None) -> dict[str, EvalSet]:
    """`--eval_suite` (a shipped suite or a YAML file) followed by each `--eval_datasets NAME@GROUP=SPEC`.

    A `SPEC` is anything `anchorclip.evaluation.formats.load_eval_dataset` reads, with the split after a colon;
    its class names and templates come from the source when it has them (a CLIP_benchmark folder's text files),
    else from the label column's `ClassLabel` and the run's `--eval_templates`.
    """
    eval_sets, data_root = {}, args.eval_data_root
    if args.eval_suite:
        eval_sets.update(load_suite_sets(args.eval_suite, data_root=data_root, miniworld_size=miniworld_size))
    for spec in args.eval_datasets:
        name_group, _, dataset_spec = spec.partition("=")
        name, _, group = name_group.partition("@")
        if not dataset_spec or not name:
            raise ValueError(f"--eval_datasets entries look like NAME@GROUP=SPEC, got {spec!r}.")
        group = group or "id"
        if group not in GROUPS:
            raise ValueError(f"--eval_datasets {spec!r}: GROUP must be one of {GROUPS}, got {group!r}.")
        if name in eval_sets:
            raise ValueError(f"--eval_datasets {spec!r}: the name {name!r} is already taken (by the suite?).")
        entry = SuiteEntry(name=name, group=group, dataset=dataset_spec, class_names="auto", templates="auto")
        eval_sets[name] = build_eval_set(entry, data_root=data_root, miniworld_size=miniworld_size)
    eval_sets.update(corruption_sets_from_args(args, eval_sets, data_root))  # --eval_corruptions / _imagenet_c
    return eval_sets


def wise_sweep(trainer, zero_shot_model: str, alphas: list[float], finetuned=None) -> dict:
    """Evaluate θ(α) = (1-α)·θ_zero-shot + α·θ_finetuned for each α, restoring the trainer's model after.

    `finetuned` defaults to the trainer's model (just trained)."""
    zero_shot = AnchorCLIPModel.from_pretrained(zero_shot_model)
    current = trainer.model
    finetuned = finetuned if finetuned is not None else current
    zero_shot_head = None
    if getattr(finetuned, "finetune_head", None) is not None:  # FT / LP-FT: a heads.LinearHeadCLIP
        # FT's linear head started as the zero-shot head times the logit scale (the trainer's
        # `_prepare_linear_head`): that start is what α=0 must give back.
        with torch.no_grad():
            head = zero_shot.build_zero_shot_head(
                trainer.class_names, trainer.args.eval_templates, trainer.processing_class.tokenizer
            )
            zero_shot_head = head * zero_shot.logit_scale.exp()
    sweep = {}
    for alpha in alphas:
        trainer.model = wise_ft(zero_shot, finetuned, alpha, zero_shot_head=zero_shot_head).to(current.device)
        sweep[str(alpha)] = summarize(trainer.evaluate(metric_key_prefix="wise"), "wise")
    trainer.model = current
    return sweep


def hardware() -> dict:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU x{os.cpu_count()}"
    return {"device": device, "torch": torch.__version__, "transformers": transformers.__version__}
