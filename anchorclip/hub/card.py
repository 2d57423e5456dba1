"""The model card of a run: `ModelCardData` (YAML, with `model-index`) and a body rendered from the template
`anchorclip/assets/model_card_template.md` by `ModelCard.from_template`; `validate_card_locally` checks one.

The card carries structured evaluation results (one `EvalResult` per evaluation set), a Markdown table beside
the zero-shot start (and WiSE-FT points), hyper-parameters, anchor provenance, training time and hardware, and
usage snippets. Local paths anywhere in the inputs appear by name only (`public_name`).
"""

from __future__ import annotations

import os

import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.repocard_data import model_index_to_eval_results

from . import sections
from .names import is_hub_id, public_name, public_values
from .sections import GROUP_TITLES, METHOD_TITLES, has_adapters

#: The model card's `pipeline_tag`: the Hub task a finetuned checkpoint serves.
TASK = "zero-shot-image-classification"
#: The model card template (`huggingface_hub.ModelCard.from_template`) shipped with anchorclip.
TEMPLATE_PATH = os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets", "model_card_template.md")
#: The BibTeX entry of the ARF paper, cited by every model card.
ARF_CITATION = """@inproceedings{arf2024,
  title     = {Anchor-based Robust Finetuning of Vision-Language Models},
  author    = {Han and Lin and Sun and Gao and Yan and Ding and Gao and Xia},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  pages     = {26919--26928},
  year      = {2024},
  note      = {arXiv:2404.06244}
}"""

__all__ = [
    "ARF_CITATION",
    "GROUP_TITLES",
    "METHOD_TITLES",
    "TASK",
    "TEMPLATE_PATH",
    "build_model_card",
    "card_data",
    "eval_results",
    "validate_card_locally",
]


def eval_results(summary: dict, set_groups: dict[str, str]) -> list[EvalResult]:
    """One `EvalResult` per evaluation set (as fractions, exactly as in results.json): top-1 accuracy of a
    classification set, mean recall@{1,5,10} over both directions of a retrieval set."""
    results = []
    for name, value in summary.get("sets", {}).items():
        group = set_groups.get(name, "id")
        retrieval = group == "retrieval"
        results.append(
            EvalResult(
                task_type="zero-shot-image-text-retrieval" if retrieval else TASK,
                task_name="Zero-shot image-text retrieval" if retrieval else "Zero-shot image classification",
                dataset_type=name,
                dataset_name=f"{name} ({GROUP_TITLES.get(group, group)})",
                dataset_args={"anchorclip_group": group},
                metric_type="recall" if retrieval else "accuracy",
                metric_name="Mean recall@{1,5,10}, image->text and text->image" if retrieval else "Top-1 accuracy",
                metric_value=float(value),
            )
        )
    return results


def card_data(
    results: dict,
    method: str,
    repo_id: str,
    base_model: str | None,
    finetune_dataset: str | None,
    set_groups: dict[str, str],
    lora: dict | None = None,
    license: str | None = None,
    tags: list[str] | None = None,
) -> ModelCardData:
    """The card's YAML metadata: library, task, license, base model and dataset (Hub ids only), tags, results."""
    card_tags = ["anchorclip", "clip", "robust-finetuning", TASK, method]
    if method == "arf":
        card_tags.append("arf")
    if lora:
        card_tags.append("lora")
    finetuned = results.get("finetuned") or {}
    groups = sections.evaluated_groups(results, set_groups)
    metrics = (["accuracy"] if groups - {"retrieval"} else []) + (["recall"] if "retrieval" in groups else [])
    return ModelCardData(
        library_name="peft" if has_adapters(lora) else "transformers",  # the Hub loads adapter repos with peft
        pipeline_tag=TASK,
        license=license or _default_license(base_model),
        base_model=base_model if is_hub_id(base_model) else None,
        datasets=[finetune_dataset] if is_hub_id(finetune_dataset) else None,
        metrics=metrics or None,
        tags=[*card_tags, *(tags or [])],
        model_name=repo_id.split("/")[-1],
        eval_results=eval_results(finetuned, set_groups) or None,
    )


def build_model_card(
    results: dict,
    training_args: dict,
    *,
    repo_id: str,
    base_model: str | None = None,
    finetune_dataset: str | None = None,
    class_names: list[str] | None = None,
    templates: list[str] | None = None,
    set_groups: dict[str, str] | None = None,
    lora: dict | None = None,
    license: str | None = None,
    tags: list[str] | None = None,
) -> ModelCard:
    """The model card of a run: YAML metadata (with `model-index`) and a Markdown body from the template.

    `results` is the dict `examples/run_anchor_ft.py` writes to results.json ("finetuned", "zeroshot",
    "provenance", "train_seconds", "hardware", ...); `training_args` is `TrainingArguments.to_dict()`.
    `lora` (r, alpha, dropout, target_modules) describes merged adapters, or with `"merged": False` a folder
    of adapters. Local paths anywhere in the inputs appear by name only (`public_name`).
    """
    results, training_args = public_values(results), public_values(training_args)
    base_model, finetune_dataset = public_name(base_model), public_name(finetune_dataset)
    method = results.get("method") or training_args.get("method", "arf")
    set_groups = dict(results.get("eval_groups") or {}, **(set_groups or {}))
    data = card_data(results, method, repo_id, base_model, finetune_dataset, set_groups, lora, license, tags)
    return ModelCard.from_template(
        data,
        template_path=TEMPLATE_PATH,
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        base_text=sections.hub_link(base_model),
        dataset_text=sections.hub_link(finetune_dataset, "datasets/"),
        method_title=METHOD_TITLES.get(method, method),
        lora_phrase=sections.lora_phrase(lora),
        adapters=has_adapters(lora),
        num_class_names=len(class_names or []),
        labels=list(class_names or [])[:3] or ["cat", "dog"],
        num_classes=len(class_names or []) or "num_classes",
        results_header=sections.results_header(results, method),
        results_rows=sections.results_rows(results, set_groups),
        retrieval="retrieval" in sections.evaluated_groups(results, set_groups),
        loss=sections.loss_text(method, training_args),
        templates_count=len(templates or []),
        templates_shown=sections.templates_text(templates),
        hyperparameters=sections.hyperparameter_rows(training_args, method, results, lora),
        anchors=sections.anchor_lines(results.get("provenance") or {}),
        training_time=sections.training_time(results),
        hardware=_hardware(results),
        anchorclip_version=_anchorclip_version(),
        citation=ARF_CITATION,
    )


def validate_card_locally(card: ModelCard | str) -> tuple[ModelCardData, list[EvalResult]]:
    """Offline stand-in for `ModelCard.validate` (which posts to the Hub): parse the card from its text,
    rebuild `ModelCardData` from the YAML (strict: a bad `model-index` raises), and check the fields the Hub
    needs for a zero-shot CLIP model. Returns the parsed metadata and evaluation results."""
    text = card.content if isinstance(card, ModelCard) else card
    parsed = ModelCard(text, ignore_metadata_errors=False)
    metadata = parsed.data.to_dict()
    data = ModelCardData(**metadata)
    for key in ("library_name", "pipeline_tag", "license"):
        if not metadata.get(key):
            raise ValueError(f"The model card has no {key!r}.")
    if metadata["pipeline_tag"] != TASK:
        raise ValueError(f"pipeline_tag is {metadata['pipeline_tag']!r}, expected {TASK!r}.")
    eval_list: list[EvalResult] = []
    if "model-index" in metadata:
        _, eval_list = model_index_to_eval_results(metadata["model-index"])
        for result in eval_list:
            if not isinstance(result.metric_value, (int, float)):
                raise ValueError(f"Non-numeric metric value {result.metric_value!r} for {result.dataset_name}.")
    if not parsed.text.strip():
        raise ValueError("The model card has no body.")
    return data, eval_list


def _default_license(base_model: str | None) -> str:
    # The weights inherit the base model's license: OpenAI's CLIP checkpoints are MIT; otherwise anchorclip's
    # own Apache-2.0 (true for the shipped mini-CLIP). Pass license= to push_to_hub for anything else.
    if isinstance(base_model, str) and base_model.startswith("openai/clip"):
        return "mit"
    return "apache-2.0"


def _hardware(results: dict) -> dict:
    hardware = results.get("hardware") or {}
    return {
        "num_processes": hardware.get("num_processes", 1),
        "device": hardware.get("device", "unknown"),
        "torch": hardware.get("torch", torch.__version__),
        "transformers": hardware.get("transformers", "?"),
    }


def _anchorclip_version() -> str:
    from .. import __version__

    return __version__
