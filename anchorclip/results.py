"""Robustness tables and `results.json` from the metrics `AnchorCLIPTrainer.evaluate` returns."""

from __future__ import annotations

import json
import os

from .evaluation import GROUPS

_GROUP_TITLES = {
    "id": "ID",
    "domain_shift": "domain-shift avg",
    "zero_shot": "zero-shot avg",
    "retrieval": "retrieval mean R@{1,5,10}",
    "corruption": "corruption avg",
    "corruption_val": "val-corruption avg",
}
# Metric names of one set, longest first so that `a_top1` is not read as set `a_top` + `1`.
SET_METRICS = sorted(
    ["top1", "top5", "mean_per_class_recall", "mean_recall"]
    + [f"{d}_recall@{k}" for d in ("image2text", "text2image") for k in (1, 5, 10)],
    key=len,
    reverse=True,
)


def summarize(metrics: dict[str, float], prefix: str = "eval") -> dict[str, dict]:
    """`{"groups": {group: mean}, "sets": {name: score}, "metrics": {name: {metric: value}}}` from the metrics
    `evaluate(metric_key_prefix=prefix)` returns. A set's score is its top-1 (classification) or its mean
    recall (retrieval)."""
    summary: dict[str, dict] = {"groups": {}, "sets": {}, "metrics": {}}
    for key, value in metrics.items():
        if not key.startswith(prefix + "_"):
            continue
        name = key[len(prefix) + 1 :]
        if name.endswith("_mean") and name[: -len("_mean")] in GROUPS:
            summary["groups"][name[: -len("_mean")]] = value
            continue
        metric = next((m for m in SET_METRICS if name.endswith("_" + m)), None)
        if metric is not None:
            summary["metrics"].setdefault(name[: -len(metric) - 1], {})[metric] = value
    for name, values in summary["metrics"].items():
        summary["sets"][name] = values.get("top1", values.get("mean_recall"))
    return summary


def format_results_table(rows: list[tuple[str, dict]]) -> str:
    """A Markdown table of `(label, summary)` rows (see `summarize`), accuracy in %."""
    if not rows:
        return ""
    groups = [g for g in GROUPS if g in rows[0][1]["groups"]]
    set_names = list(rows[0][1]["sets"])
    header = ["model", *[_GROUP_TITLES[g] for g in groups], *set_names]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, summary in rows:
        cells = [f"{100 * summary['groups'][g]:.1f}" for g in groups]
        cells += [f"{100 * summary['sets'][n]:.1f}" for n in set_names]
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return "\n".join(lines)


def result_rows(results: dict) -> list[tuple[str, dict]]:
    """The table rows of a results dict (`anchorclip train` / `eval`): zero-shot start, finetuned, WiSE-FT alphas,
    evaluated checkpoints."""
    rows = []
    if "zeroshot" in results:
        rows.append(("zero-shot", results["zeroshot"]))
    if "finetuned" in results:
        rows.append((results.get("method", "finetuned"), results["finetuned"]))
    for alpha, summary in results.get("wise", {}).items():
        rows.append((f"{results.get('method', '')} + WiSE-FT α={alpha}".lstrip(" +"), summary))
    rows += list(results.get("evaluated", {}).items())  # `anchorclip eval`: one row per checkpoint
    return rows


def write_results(results: dict, output_dir: str) -> str:
    """Write `results.json` and `results.md` (the table) to `output_dir`; return the JSON path."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, "results.json")
    with open(path, "w") as handle:
        json.dump(results, handle, indent=2, default=str)
    with open(os.path.join(output_dir, "results.md"), "w") as handle:
        handle.write(format_results_table(result_rows(results)) + "\n")
    return path
