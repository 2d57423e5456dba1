"""Push a finetuned model to the Hugging Face Hub with a model card; offline, write the exact upload folder.

`AnchorCLIPTrainer.push_to_hub()` (and `--push_to_hub` in `examples/run_anchor_ft.py`) call `push_to_hub`
below. It builds one clean folder, by default `<output_dir>/hub_upload/`, holding

* a standard CLIP checkpoint: `model.safetensors`, `config.json` (with the finetune class names and
  templates), tokenizer files and `preprocessor_config.json` -- LoRA runs are merged first, so the Hub
  widget, `pipeline("zero-shot-image-classification")` and plain `CLIPModel` all work;
* `finetune_head.safetensors` for the FT / LP-FT baselines;
* `results.json` of the run (evaluation, anchor provenance, arguments, hardware) when there is one;
* `README.md`: the model card (`huggingface_hub.ModelCard`), with structured evaluation results
  (`model-index`, one `EvalResult` per evaluation set, top-1 accuracy), a Markdown table beside the
  zero-shot start, hyper-parameters, anchor provenance, training time and hardware, and usage snippets.

and uploads that folder with `HfApi.upload_folder`. Only the final model is pushed: the Trainer's
mid-training pushes are not made, since `output_dir` also holds anchor caches and checkpoints; a
`hub_strategy` other than "end" warns once that it does nothing here.

Offline only when declared: `HF_HUB_OFFLINE=1` (or `TRANSFORMERS_OFFLINE=1`). Then nothing is uploaded, the
folder is still written, a log line says where with the `hf upload` command that finishes the job, and
`push_to_hub` returns the folder path instead of a `CommitInfo`. Without that flag, a failure to create the
repository (no network, no token, no permission) raises when the trainer is built, before any training, and
a failed upload raises after the folder is written: a run that was asked to push never ends "successfully"
without pushing.

`write_model_card` writes the same card to `output_dir` on every run (LoRA runs: describing the adapters, in
place of peft's template). Local paths never reach a card or the upload folder: a local base model is named
by the Hub id its config records, else by its folder's name (`public_name`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil

import torch
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.repocard_data import model_index_to_eval_results
from transformers.trainer_utils import HubStrategy

from .evaluation import GROUPS
from .reporting import summarize

logger = logging.getLogger(__name__)

UPLOAD_DIR = "hub_upload"
TASK = "zero-shot-image-classification"
GROUP_TITLES = {
    "id": "ID",
    "domain_shift": "domain shift",
    "zero_shot": "zero-shot",
    "retrieval": "retrieval (mean R@1/5/10)",
}
METHOD_TITLES = {
    "arf": "ARF (Anchor-based Robust Finetuning)",
    "flyp": "FLYP (contrastive finetuning with class prompts)",
    "ft": "FT (image tower + linear head, cross-entropy)",
    "lp_ft": "LP-FT (linear probe, then FT)",
    "zeroshot": "zero-shot (no training)",
}
ARF_CITATION = """@inproceedings{arf2024,
  title     = {Anchor-based Robust Finetuning of Vision-Language Models},
  author    = {Han and Lin and Sun and Gao and Yan and Ding and Gao and Xia},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  pages     = {26919--26928},
  year      = {2024},
  note      = {arXiv:2404.06244}
}"""
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# ------------------------------------------------------------------ offline


def hub_offline() -> bool:
    """True when offline mode is set (`HF_HUB_OFFLINE` / `TRANSFORMERS_OFFLINE`), read at call time."""
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return constants.HF_HUB_OFFLINE or any(str(v).upper() in ("1", "ON", "YES", "TRUE") for v in flags if v)


def init_hf_repo(trainer, token: str | None = None, private: bool | None = None) -> None:
    """`Trainer.init_hf_repo` (called when the trainer is built): create the repository, or raise at once.

    Only a declared offline mode (`hub_offline()`) skips it; any other failure raises here, before training,
    rather than after hours of training. Warns when `hub_strategy` asks for pushes that are not made.
    """
    if not trainer.is_world_process_zero():
        return
    args = trainer.args
    if args.push_to_hub and args.hub_strategy != HubStrategy.END:
        logger.warning(
            "--hub_strategy %s does nothing in anchorclip: the model is pushed once, at the end of the run (as "
            "with --hub_strategy end), as one clean folder; checkpoints stay local.",
            args.hub_strategy.value if isinstance(args.hub_strategy, HubStrategy) else args.hub_strategy,
        )
    repo_name = args.hub_model_id or os.path.basename(os.path.abspath(args.output_dir))
    trainer.hub_model_id, trainer.push_in_progress = repo_name, None
    if hub_offline():
        trainer._hub_offline = "HF_HUB_OFFLINE is set"
        return
    try:
        repo_url = HfApi().create_repo(
            repo_name,
            token=token if token is not None else args.hub_token,
            private=private if private is not None else args.hub_private_repo,
            exist_ok=True,
        )
    except Exception as error:
        raise RuntimeError(
            f"--push_to_hub: cannot create the Hub repository {repo_name!r} ({type(error).__name__}: {error}). "
            "Check the network and your token (`hf auth login`), or set HF_HUB_OFFLINE=1 to train and only "
            "write the upload folder."
        ) from error
    trainer.hub_model_id = repo_url.repo_id
    trainer._hub_offline = None


# ------------------------------------------------------------------ card


def is_hub_id(name) -> bool:
    """A `namespace/name` string that is not a local path (only such ids belong in `base_model`/`datasets`)."""
    return isinstance(name, str) and bool(_REPO_ID.match(name)) and not os.path.exists(name)


def public_name(name):
    """How a card names a model or dataset: a Hub id as is; a local folder by the Hub id that its config.json
    records (`_name_or_path`) or that its Hub-cache path holds (`models--org--name/snapshots/<rev>`), else by
    the folder's base name -- never by the training machine's path."""
    if not isinstance(name, (str, os.PathLike)) or not os.fspath(name):
        return name
    name = os.fspath(name)
    if not (os.path.isabs(name) or os.path.exists(name)):
        return name  # a Hub id, or a spec such as "miniworld:finetune"
    path = os.path.normpath(name)
    parts = path.split(os.sep)
    for part, child in zip(parts, parts[1:]):
        if part.startswith(("models--", "datasets--")) and child == "snapshots":
            return part.split("--", 1)[1].replace("--", "/")
    recorded = None
    config = os.path.join(path, "config.json")
    if os.path.isfile(config):
        try:
            with open(config) as handle:
                recorded = json.load(handle).get("_name_or_path")
        except (OSError, ValueError):
            pass
    return recorded if is_hub_id(recorded) else os.path.basename(path)


def _public(value):
    """`value` (results, arguments) with every absolute path, alone or after "=" (`NAME@GROUP=PATH`), replaced
    by its `public_name`."""
    if isinstance(value, dict):
        return {key: _public(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_public(item) for item in value]
    if isinstance(value, str):
        head, equals, path = value.rpartition("=")
        if os.path.isabs(path):
            return head + equals + public_name(path)
    return value


def _adapters(lora: dict | None) -> bool:
    return bool(lora) and lora.get("merged") is False


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
    """The model card of a run: YAML metadata (with `model-index`) and a Markdown body.

    `results` is the dict `examples/run_anchor_ft.py` writes to results.json ("finetuned", "zeroshot",
    "provenance", "train_seconds", "hardware", ...); `training_args` is `TrainingArguments.to_dict()`.
    `lora` (r, alpha, dropout, target_modules) describes merged adapters, or with `"merged": False` a folder
    of adapters. Local paths anywhere in the inputs appear by name only (`public_name`).
    """
    results, training_args = _public(results), _public(training_args)
    base_model, finetune_dataset = public_name(base_model), public_name(finetune_dataset)
    method = results.get("method") or training_args.get("method", "arf")
    set_groups = dict(results.get("eval_groups") or {}, **(set_groups or {}))
    model_name = repo_id.split("/")[-1]
    card_tags = ["anchorclip", "clip", "robust-finetuning", TASK, method]
    if method == "arf":
        card_tags.append("arf")
    if lora:
        card_tags.append("lora")
    finetuned = results.get("finetuned") or {}
    data = ModelCardData(
        library_name="peft" if _adapters(lora) else "transformers",  # the Hub loads adapter repos with peft
        pipeline_tag=TASK,
        license=license or _default_license(base_model),
        base_model=base_model if is_hub_id(base_model) else None,
        datasets=[finetune_dataset] if is_hub_id(finetune_dataset) else None,
        metrics=["accuracy"] if finetuned.get("sets") else None,
        tags=[*card_tags, *(tags or [])],
        model_name=model_name,
        eval_results=eval_results(finetuned, set_groups) or None,
    )
    body = _card_body(
        results, training_args, repo_id, method, base_model, finetune_dataset, class_names, templates, set_groups, lora
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


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
    eval_list = []
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


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _results_table(results: dict, method: str, set_groups: dict[str, str]) -> str:
    finetuned, zeroshot = results.get("finetuned") or {}, results.get("zeroshot") or {}
    wise = results.get("wise") or {}
    if not finetuned.get("sets"):
        return "_No evaluation results were recorded for this run._"
    header = ["evaluation set", "group", "zero-shot start", f"this model ({method})", "Δ"]
    header += [f"WiSE-FT α={alpha}" for alpha in wise]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def row(label, group, start, end, wise_values):
        delta = "–" if start is None or end is None else f"{round(100 * (end - start), 1) + 0.0:+.1f}"  # no -0.0
        cells = [label, group, _pct(start), _pct(end), delta, *[_pct(v) for v in wise_values]]
        return "| " + " | ".join(cells) + " |"

    for name, value in finetuned["sets"].items():
        group = GROUP_TITLES.get(set_groups.get(name, "id"), set_groups.get(name, "id"))
        start = zeroshot.get("sets", {}).get(name)
        lines.append(row(name, group, start, value, [w.get("sets", {}).get(name) for w in wise.values()]))
    for group in GROUPS:
        if group in finetuned.get("groups", {}):
            start = zeroshot.get("groups", {}).get(group)
            wise_values = [w.get("groups", {}).get(group) for w in wise.values()]
            lines.append(row(f"**{GROUP_TITLES[group]} mean**", "", start, finetuned["groups"][group], wise_values))
    return "\n".join(lines)


def _hyperparameter_table(training_args: dict, method: str, results: dict, lora: dict | None) -> str:
    a = training_args
    processes = (results.get("hardware") or {}).get("num_processes") or a.get("world_size") or 1
    per_device = a.get("per_device_train_batch_size")
    accumulation = a.get("gradient_accumulation_steps", 1)
    rows = [("method", METHOD_TITLES.get(method, method))]
    if method == "arf":
        rows += [
            ("λ1 (caption anchors, `lambda_caption`)", a.get("lambda_caption")),
            ("λ2 (pair anchors, `lambda_pairs`)", a.get("lambda_pairs")),
            ("retrieved pairs per finetune image", a.get("pair_anchors_per_image")),
        ]
    steps = (results.get("train") or {}).get("global_step") or a.get("max_steps")
    rows += [
        ("learning rate", a.get("learning_rate")),
        ("schedule", f"{a.get('lr_scheduler_type')}, warm-up {_warmup(a)}"),
        ("weight decay", a.get("weight_decay")),
        ("optimizer", a.get("optim")),
        ("steps", steps if steps and steps > 0 else f"{a.get('num_train_epochs')} epochs"),
        (
            "batch (finetune images per step)",
            f"{per_device} per device × {processes} process(es) × {accumulation} accumulation"
            + (f" = {per_device * processes * accumulation}" if isinstance(per_device, int) else ""),
        ),
        ("class-prompt templates (training)", f"`{a.get('train_templates')}`"),
        ("templates of the zero-shot heads (evaluation)", f"`{a.get('eval_templates')}`"),
        ("same-class pairs in L_cls", a.get("duplicate_classes")),
        ("precision", "bf16" if a.get("bf16") else "fp16" if a.get("fp16") else "fp32"),
        ("seed", a.get("seed")),
    ]
    if lora:
        rows.append(
            (
                "LoRA (adapters in this folder)" if _adapters(lora) else "LoRA (merged into this checkpoint)",
                f"r={lora.get('r')}, alpha={lora.get('alpha')}, dropout={lora.get('dropout')}, "
                f"modules={', '.join(lora.get('target_modules') or [])} (both towers); logit scale and "
                "projections frozen",
            )
        )
    return "\n".join(["| hyper-parameter | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows]])


def _warmup(a: dict) -> str:
    if a.get("warmup_steps"):
        return f"{a['warmup_steps']} steps"
    return f"ratio {a.get('warmup_ratio') or 0}"


def _provenance_section(provenance: dict) -> str:
    lines = []
    captions = provenance.get("caption_anchors")
    if captions:
        if "captioner" in captions:
            generation = captions.get("generation") or {}
            counts = captions.get("counts") or {}
            lines.append(
                f"- **Text-compensated anchors (L_tc)**: captions of the finetune images by `{captions['captioner']}`"
                f" ({captions.get('captioner_class', '')}; beams {generation.get('num_beams')}, "
                f"max new tokens {generation.get('max_new_tokens')}, prompt {generation.get('prompt')!r}); "
                f"{counts.get('captioned', '?')} of {counts.get('input_rows', '?')} images captioned."
            )
        else:
            lines.append(f"- **Text-compensated anchors (L_tc)**: given captions, `{captions.get('source')}`.")
    pairs = provenance.get("pair_anchors")
    if pairs:
        if "rule" in pairs:
            counts = pairs.get("counts") or {}
            kept = counts.get("selected", counts.get("kept", counts.get("anchors")))
            lines.append(
                f"- **Image-text pair anchors (L_itp)**: retrieved from `{pairs.get('pool')}` with the pretrained "
                f"`{pairs.get('model')}`; rule `{pairs.get('rule')}` (query mode `{pairs.get('query_mode')}`, "
                f"templates `{pairs.get('templates')}`), k = {pairs.get('k_per_class')} per class, budget "
                f"{pairs.get('budget')}, de-duplication threshold {pairs.get('dedup_threshold')}, leakage "
                f"threshold {pairs.get('leakage_threshold')}"
                + (f"; {kept} anchors kept." if kept is not None else ".")
            )
        else:
            lines.append(f"- **Image-text pair anchors (L_itp)**: given set, `{pairs.get('source')}`.")
    if not lines:
        return "No anchors (the method uses none, or they were not recorded)."
    return "\n".join(lines) + "\n\nThe full provenance records are in `results.json` in this repository."


def _card_body(results, training_args, repo_id, method, base_model, dataset, class_names, templates, set_groups, lora):
    hardware = results.get("hardware") or {}
    seconds = results.get("train_seconds") or (results.get("train") or {}).get("train_runtime")
    labels = list(class_names or [])[:3] or ["cat", "dog"]
    base_text = f"`{base_model}`"
    if is_hub_id(base_model):
        base_text = f"[`{base_model}`](https://huggingface.co/{base_model})"
    dataset_text = (
        f"[`{dataset}`](https://huggingface.co/datasets/{dataset})" if is_hub_id(dataset) else f"`{dataset}`"
    )
    return f"""# {repo_id.split("/")[-1]}

{base_text} finetuned on {dataset_text} with **{METHOD_TITLES.get(method, method)}**
([Han et al., CVPR 2024](https://arxiv.org/abs/2404.06244)), trained with
anchorclip{_lora_phrase(lora)}.
ARF finetunes both CLIP towers with the class-prompt contrastive loss plus two anchor losses (captions of the
finetune images, and image-text pairs retrieved from a pretraining-like pool) to keep CLIP's robustness to
domain shift and its zero-shot ability on unseen classes.

{_contents_text(class_names, lora)}

## Evaluation

Zero-shot top-1 accuracy (%) with prompt-ensemble heads built from the text tower, next to the pretrained model
the run started from. Groups: ID (the finetune task), domain shift (same classes, other renditions),
zero-shot (classes unseen in finetuning).

{_results_table(results, method, set_groups)}

## Usage

{_usage_text(repo_id, class_names, labels, lora)}

## Training

- Base model: {base_text}
- Finetune dataset: {dataset_text}
- Loss: {_loss_text(method, training_args)}
- Prompt templates saved in the config ({len(templates or [])}): {_templates_text(templates)}

{_hyperparameter_table(training_args, method, results, lora)}

### Anchors

{_provenance_section(results.get("provenance") or {})}

### Training time and hardware

- Training time: {f"{seconds / 60:.1f} min ({seconds:.0f} s)" if seconds else "not recorded"}
- Hardware: {hardware.get("num_processes", 1)} × {hardware.get("device", "unknown")}
- Software: torch {hardware.get("torch", torch.__version__)}, transformers {hardware.get("transformers", "?")},
  anchorclip {_anchorclip_version()}

## Citation

```bibtex
{ARF_CITATION}
```
"""


def _lora_phrase(lora: dict | None) -> str:
    if not lora:
        return ""
    return " using LoRA adapters (this folder)" if _adapters(lora) else " using LoRA adapters, merged into the weights"


def _contents_text(class_names, lora) -> str:
    if _adapters(lora):
        return (
            "This folder holds LoRA adapters (`adapter_config.json`, `adapter_model.safetensors`) and, in\n"
            "`anchorclip_lora.json`, the finetune class names and prompt templates. `anchorclip.lora.merge_lora`\n"
            "folds the adapters into the base model: a standard CLIP checkpoint (what `--push_to_hub` uploads)."
        )
    return (
        "This repository holds a standard CLIP checkpoint: it loads with plain `transformers` (`CLIPModel`, the\n"
        "`zero-shot-image-classification` pipeline), no anchorclip needed. Its `config.json` also records the\n"
        f"{len(class_names or [])} finetune class names and the prompt templates, used by `AnchorCLIPModel.classify`."
    )


def _usage_text(repo_id, class_names, labels, lora) -> str:
    num_classes = len(class_names or []) or "num_classes"
    if _adapters(lora):
        return f"""With anchorclip (`pip install anchorclip`), from this folder:

```python
from PIL import Image
from anchorclip.lora import merge_lora

# base model + adapters folded in: an AnchorCLIPModel (base_model=... if the base is elsewhere now)
model = merge_lora("path/to/{repo_id.split("/")[-1]}")
logits = model.classify([Image.open("image.jpg")])   # (1, {num_classes})
model.save_pretrained("merged")                       # a plain CLIP checkpoint
```"""
    return f"""With plain `transformers`:

```python
from PIL import Image
from transformers import pipeline

classifier = pipeline("zero-shot-image-classification", model="{repo_id}")
classifier(Image.open("image.jpg"), candidate_labels={labels!r})
```

```python
import torch
from PIL import Image
from transformers import CLIPModel, CLIPProcessor

model = CLIPModel.from_pretrained("{repo_id}")
processor = CLIPProcessor.from_pretrained("{repo_id}")
inputs = processor(text=[f"a photo of a {{c}}." for c in {labels!r}], images=Image.open("image.jpg"),
                   return_tensors="pt", padding=True)
with torch.no_grad():
    probs = model(**inputs).logits_per_image.softmax(dim=-1)
```

With anchorclip (`pip install anchorclip`), over the finetune classes and templates saved in the config:

```python
from PIL import Image
from anchorclip import AnchorCLIPModel

model = AnchorCLIPModel.from_pretrained("{repo_id}")
logits = model.classify([Image.open("image.jpg")])   # (1, {num_classes})
predicted = [model.config.class_names[i] for i in logits.argmax(-1)]
```"""


def _loss_text(method: str, a: dict) -> str:
    temperature = "frozen temperature (LoRA)" if a.get("lora_r") else "learned temperature"
    if method == "arf":
        return (
            f"L_cls + {a.get('lambda_caption')}·L_tc + {a.get('lambda_pairs')}·L_itp "
            f"(symmetric CLIP contrastive losses, {temperature})"
        )
    if method == "flyp":
        return "L_cls (contrastive image / class-prompt loss, FLYP)"
    return "cross-entropy on a linear head initialised from the zero-shot head"


def _templates_text(templates) -> str:
    if not templates:
        return "none"
    shown = ", ".join(f"`{t}`" for t in templates[:3])
    return shown + (f", … ({len(templates) - 3} more)" if len(templates) > 3 else "")


def _anchorclip_version() -> str:
    from . import __version__

    return __version__


# ------------------------------------------------------------------ trainer side


def _trainer_results(trainer, results: dict | None) -> dict:
    """The run's results: given, else `<output_dir>/results.json`, else the last `evaluate()` in the logs."""
    if results is not None:
        return results
    path = os.path.join(trainer.args.output_dir, "results.json")
    if os.path.isfile(path):
        with open(path) as handle:
            return json.load(handle)
    return logged_results(trainer)


def logged_results(trainer) -> dict:
    """What the trainer's logs hold of the run's results: the last `evaluate()`, training time, hardware."""
    found = {"method": trainer.args.method}
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


def trainer_model_card(
    trainer, results: dict | None = None, repo_id: str | None = None, adapters: bool = False, **kwargs
) -> ModelCard:
    """`build_model_card` from a trainer's model, arguments and results; `adapters`: the card of a folder that
    holds a LoRA model's adapters (not the merged checkpoint)."""
    from .lora import is_lora_model, unwrap_base_model

    results = _trainer_results(trainer, results)
    model = trainer.accelerator.unwrap_model(trainer.model)
    base = unwrap_base_model(model)
    run_args = results.get("args") or {}
    base_model = (run_args.get("model") or {}).get("model_name_or_path") or getattr(base, "name_or_path", None)
    data_args = run_args.get("data") or {}
    dataset = kwargs.pop("finetune_dataset", None) or data_args.get("dataset_name")
    if dataset is None and run_args:
        dataset = "miniworld:finetune"  # the example's built-in world
    lora = None
    if is_lora_model(model):
        config = model.peft_config[model.active_adapter]
        lora = {
            "r": config.r,
            "alpha": config.lora_alpha,
            "dropout": config.lora_dropout,
            "target_modules": sorted(config.target_modules),
            "merged": not adapters,
        }
    return build_model_card(
        results,
        {k: v for k, v in trainer.args.to_dict().items() if "token" not in k},
        repo_id=repo_id or trainer.hub_model_id or trainer.args.hub_model_id or _default_repo(trainer),
        base_model=base_model,
        finetune_dataset=dataset,
        class_names=getattr(base.config, "class_names", None),
        templates=getattr(base.config, "templates", None),
        set_groups=_set_groups(trainer),
        lora=lora,
        **kwargs,
    )


def _default_repo(trainer) -> str:
    return os.path.basename(os.path.abspath(trainer.args.output_dir))


def write_model_card(trainer, output_dir: str | None = None, results: dict | None = None, **kwargs) -> str:
    """`Trainer.create_model_card` for anchorclip: write `README.md` to `output_dir` (default the trainer's),
    where the trainer saved the model (for a LoRA model: its adapters, so the card describes those)."""
    from .lora import is_lora_model

    kwargs = {k: v for k, v in kwargs.items() if k in ("license", "tags", "finetune_dataset") and v is not None}
    if isinstance(kwargs.get("tags"), str):
        kwargs["tags"] = [kwargs["tags"]]
    adapters = is_lora_model(trainer.accelerator.unwrap_model(trainer.model))
    card = trainer_model_card(trainer, results, adapters=adapters, **kwargs)
    path = os.path.join(output_dir or trainer.args.output_dir, "README.md")
    card.save(path)
    return path


def prepare_upload_folder(trainer, folder: str | None = None, results: dict | None = None, **card_kwargs) -> str:
    """Write the folder `push_to_hub` uploads: plain CLIP checkpoint, processor, results.json, README.md card.

    Call on every process (saving may be collective); only the main process writes.
    """
    from .lora import is_lora_model, merge_lora

    folder = folder or os.path.join(trainer.args.output_dir, UPLOAD_DIR)
    model = trainer.accelerator.unwrap_model(trainer.model)
    main = trainer.is_world_process_zero()
    if main and os.path.isdir(folder):
        shutil.rmtree(folder)  # exactly what would be uploaded, nothing left over from an earlier push
    trainer.accelerator.wait_for_everyone()
    if is_lora_model(model):
        if main:
            merged = merge_lora(model)
            merged.save_pretrained(folder)
            if trainer.processing_class is not None:
                trainer.processing_class.save_pretrained(folder)
    else:
        trainer.save_model(folder, _internal_call=True)  # collective under FSDP / DeepSpeed; writes on main only
    if not main:
        return folder
    training_args_file = os.path.join(folder, "training_args.bin")
    if os.path.isfile(training_args_file):
        os.remove(training_args_file)  # a pickle; the card and results.json carry the arguments
    results = _trainer_results(trainer, results)
    if results.get("finetuned") or results.get("provenance"):
        with open(os.path.join(folder, "results.json"), "w") as handle:
            json.dump(_public(results), handle, indent=2, default=str)  # public: no local paths
    trainer_model_card(trainer, results, **card_kwargs).save(os.path.join(folder, "README.md"))
    return folder


def push_to_hub(
    trainer,
    commit_message: str | None = "End of training",
    blocking: bool = True,
    token: str | None = None,
    revision: str | None = None,
    private: bool | None = None,
    results: dict | None = None,
    folder: str | None = None,
    **card_kwargs,
):
    """`AnchorCLIPTrainer.push_to_hub`: write the upload folder, then upload it (see the module docstring).

    Returns the `CommitInfo` (or a future with `blocking=False`) or, when offline, the folder path.
    """
    trainer.callback_handler.on_push_begin(trainer.args, trainer.state, trainer.control)
    token = token if token is not None else trainer.args.hub_token
    card_kwargs = {k: v for k, v in card_kwargs.items() if k in ("license", "tags", "finetune_dataset")}
    if trainer.hub_model_id is None:
        init_hf_repo(trainer, token=token, private=private)
    folder = prepare_upload_folder(trainer, folder, results, repo_id=trainer.hub_model_id, **card_kwargs)
    if not trainer.is_world_process_zero():
        return None
    reason = getattr(trainer, "_hub_offline", None) or ("HF_HUB_OFFLINE is set" if hub_offline() else None)
    upload_command = f"hf upload {trainer.hub_model_id} {folder} ."
    if reason is not None:
        logger.warning(
            "Hub offline (%s): nothing was uploaded. The folder that would be uploaded to %s is %s -- "
            "upload it later with: %s",
            reason,
            trainer.hub_model_id,
            folder,
            upload_command,
        )
        return folder
    try:
        return HfApi().upload_folder(
            repo_id=trainer.hub_model_id,
            folder_path=folder,
            commit_message=commit_message,
            token=token,
            revision=revision if revision is not None else trainer.args.hub_revision,
            run_as_future=not blocking,
        )
    except Exception as error:
        raise RuntimeError(
            f"Upload to the Hub repository {trainer.hub_model_id!r} failed ({type(error).__name__}: {error}). "
            f"The folder is written: {folder} -- retry with: {upload_command}"
        ) from error
