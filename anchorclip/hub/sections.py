"""The model card's tables and short texts, computed from a run's results and arguments.

`card.py` hands these to the template (`anchorclip/assets/model_card_template.md`), which lays out the page.
Tables are lists of rows (lists of cells, as strings); percentages have one decimal.
"""

from __future__ import annotations

from typing import Any

from ..evaluation import GROUPS
from .names import is_hub_id

#: The model card's title of each evaluation group.
GROUP_TITLES = {
    "id": "ID",
    "domain_shift": "domain shift",
    "zero_shot": "zero-shot",
    "retrieval": "retrieval (mean R@1/5/10)",
    "corruption": "corruptions (ImageNet-C style)",
    "corruption_val": "validation corruptions",
}
_MEAN_TITLES = {"retrieval": "retrieval"}  # group-mean rows: the metric is in the sets' group column
#: The model card's title of each training method.
METHOD_TITLES = {
    "arf": "ARF (Anchor-based Robust Finetuning)",
    "flyp": "FLYP (contrastive finetuning with class prompts)",
    "ft": "FT (image tower + linear head, cross-entropy)",
    "lp_ft": "LP-FT (linear probe, then FT)",
    "zeroshot": "zero-shot (no training)",
}


def has_adapters(lora: dict | None) -> bool:
    """The card describes a folder of LoRA adapters (not merged into the weights)."""
    return bool(lora) and lora is not None and lora.get("merged") is False


def lora_phrase(lora: dict | None) -> str:
    if not lora:
        return ""
    return (
        " using LoRA adapters (this folder)" if has_adapters(lora) else " using LoRA adapters, merged into the weights"
    )


def pct(value) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _delta(start, end) -> str:
    return "–" if start is None or end is None else f"{round(100 * (end - start), 1) + 0.0:+.1f}"  # no -0.0


def results_header(results: dict, method: str) -> list[str]:
    header = ["evaluation set", "group", "zero-shot start", f"this model ({method})", "Δ"]
    return header + [f"WiSE-FT α={alpha}" for alpha in results.get("wise") or {}]


def results_rows(results: dict, set_groups: dict[str, str]) -> list[list[str]]:
    """One row per evaluation set, then one per group mean: zero-shot start, this model, Δ, WiSE-FT points.
    Empty when the run recorded no evaluation."""
    finetuned, zeroshot = results.get("finetuned") or {}, results.get("zeroshot") or {}
    wise = list((results.get("wise") or {}).values())
    if not finetuned.get("sets"):
        return []

    def row(label, group, key, name, end):
        start = zeroshot.get(key, {}).get(name)
        return [label, group, pct(start), pct(end), _delta(start, end), *[pct(w.get(key, {}).get(name)) for w in wise]]

    rows = []
    for name, value in finetuned["sets"].items():
        group = set_groups.get(name, "id")
        rows.append(row(name, GROUP_TITLES.get(group, group), "sets", name, value))
    for group in GROUPS:
        if group in finetuned.get("groups", {}):
            title = _MEAN_TITLES.get(group, GROUP_TITLES[group])
            rows.append(row(f"**{title} mean**", "", "groups", group, finetuned["groups"][group]))
    return rows


def evaluated_groups(results: dict, set_groups: dict[str, str]) -> set[str]:
    """The groups of the evaluation sets the card reports."""
    return {set_groups.get(name, "id") for name in ((results.get("finetuned") or {}).get("sets") or {})}


def hyperparameter_rows(training_args: dict, method: str, results: dict, lora: dict | None) -> list[tuple[str, Any]]:
    a = training_args
    processes = (results.get("hardware") or {}).get("num_processes") or a.get("world_size") or 1
    per_device = a.get("per_device_train_batch_size")
    accumulation = a.get("gradient_accumulation_steps", 1)
    rows: list[tuple[str, Any]] = [("method", METHOD_TITLES.get(method, method))]
    if method == "arf":
        rows += [
            ("λ1 (caption anchors, `lambda_caption`)", a.get("lambda_caption")),
            ("λ2 (pair anchors, `lambda_pairs`)", a.get("lambda_pairs")),
            ("retrieved pairs per finetune image", a.get("pair_anchors_per_image")),
        ]
        if a.get("lambda_distill"):
            rows.append(("λ3 (anchor-feature distillation, `lambda_distill`)", a.get("lambda_distill")))
        if a.get("augment_pairs") is False:
            rows.append(("pair images", "un-augmented (evaluation view, `--augment_pairs false`)"))
    if a.get("augmix"):
        rows.append(("AugMix views (`augmix`)", f"p = {a['augmix']:g} per training image, clean-view targets"))
    if a.get("lambda_jsd"):
        rows.append(("AugMix consistency (`lambda_jsd`)", f"{a['lambda_jsd']:g}, two AugMix views per finetune image"))
    if a.get("corrupt_pairs"):
        rows.append(
            (
                "corrupted pair anchors (`corrupt_pairs`)",
                f"q = {a['corrupt_pairs']:g} per pair image, training corruptions disjoint from ImageNet-C, "
                "clean targets",
            )
        )
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
                "LoRA (adapters in this folder)" if has_adapters(lora) else "LoRA (merged into this checkpoint)",
                f"r={lora.get('r')}, alpha={lora.get('alpha')}, dropout={lora.get('dropout')}, "
                f"modules={', '.join(lora.get('target_modules') or [])} (both towers); logit scale and "
                "projections frozen",
            )
        )
    return rows


def _warmup(a: dict) -> str:
    if a.get("warmup_steps"):
        return f"{a['warmup_steps']} steps"
    return f"ratio {a.get('warmup_ratio') or 0}"


def anchor_lines(provenance: dict) -> list[str]:
    """One Markdown line per kind of anchor the run used, from the provenance records in results.json."""
    lines = []
    captions = provenance.get("caption_anchors")
    if captions and "captioner" in captions:
        generation = captions.get("generation") or {}
        counts = captions.get("counts") or {}
        lines.append(
            "**Text-compensated anchors (L_caption, the paper's L_tc)**: captions of the finetune images by "
            f"`{captions['captioner']}`"
            f" ({captions.get('captioner_class', '')}; beams {generation.get('num_beams')}, "
            f"max new tokens {generation.get('max_new_tokens')}, prompt {generation.get('prompt')!r}); "
            f"{counts.get('captioned', '?')} of {counts.get('input_rows', '?')} images captioned."
        )
    elif captions:
        lines.append(
            f"**Text-compensated anchors (L_caption, the paper's L_tc)**: given captions, `{captions.get('source')}`."
        )
    pairs = provenance.get("pair_anchors")
    if pairs and "rule" in pairs:
        counts = pairs.get("counts") or {}
        kept = counts.get("selected", counts.get("kept", counts.get("anchors")))
        lines.append(
            f"**Image-text pair anchors (L_pairs, the paper's L_itp)**: retrieved from `{pairs.get('pool')}` with "
            "the pretrained "
            f"`{pairs.get('model')}`; rule `{pairs.get('rule')}` (query mode `{pairs.get('query_mode')}`, "
            f"templates `{pairs.get('templates')}`), k = {pairs.get('k_per_class')} per class, budget "
            f"{pairs.get('budget')}, de-duplication threshold {pairs.get('dedup_threshold')}, leakage "
            f"threshold {pairs.get('leakage_threshold')}" + (f"; {kept} anchors kept." if kept is not None else ".")
        )
    elif pairs:
        lines.append(f"**Image-text pair anchors (L_pairs, the paper's L_itp)**: given set, `{pairs.get('source')}`.")
    return lines


def loss_text(method: str, a: dict) -> str:
    temperature = "frozen temperature (LoRA)" if a.get("lora_r") else "learned temperature"
    if method == "arf":
        distill = (
            f" + {a['lambda_distill']}·L_distill (pair images' features vs the frozen pretrained image tower)"
            if a.get("lambda_distill")
            else ""
        )
        return (
            f"L_cls + {a.get('lambda_caption')}·L_caption + {a.get('lambda_pairs')}·L_pairs{distill} "
            f"(symmetric CLIP contrastive losses, {temperature})"
        )
    if method == "flyp":
        return "L_cls (contrastive image / class-prompt loss, FLYP)"
    return "cross-entropy on a linear head initialised from the zero-shot head"


def templates_text(templates) -> str:
    if not templates:
        return "none"
    shown = ", ".join(f"`{t}`" for t in templates[:3])
    return shown + (f", … ({len(templates) - 3} more)" if len(templates) > 3 else "")


def training_time(results: dict) -> str:
    seconds = results.get("train_seconds") or (results.get("train") or {}).get("train_runtime")
    return f"{seconds / 60:.1f} min ({seconds:.0f} s)" if seconds else "not recorded"


def hub_link(name, kind: str = "") -> str:
    """`name` in code style, linked to its Hub page when it is a Hub id (`kind`: "" or "datasets/")."""
    return f"[`{name}`](https://huggingface.co/{kind}{name})" if is_hub_id(name) else f"`{name}`"
