"""Which tower carries a finetuned model's corruption accuracy: its image tower or its text tower?

    python benchmarks/robustness.py ... --corruptions 100 --save_models --workdir W   # keeps every run's model
    python benchmarks/tower_swap.py --workdir W --runs FLYP-lr0.001 "ARF,_MMR-diverse_retrieval-lr0.003" \
        --seeds 0 1 2 --output docs/results/corruptions_tower_swap

A corruption changes only the image, so the text tower meets it through the class head alone. For each saved run
(seeds averaged) this scores, on the miniworld corruption suite (the same images as robustness.py's) and on the
clean ID / domain-shift sets, four models assembled from two towers each: finetuned image + finetuned text (the
run itself), finetuned image + pretrained text, pretrained image + finetuned text, and pretrained both (the
zero-shot start). A tower "carries" a gain if swapping it in moves the score.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time

import torch
from transformers import CLIPProcessor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from robustness import _tests, evaluation_sets  # noqa: E402  (the benchmark's own sets, made the same way)

from anchorclip import AnchorCLIPModel, AnchorCLIPTrainer, AnchorTrainingArguments  # noqa: E402
from anchorclip.miniworld import MINICLIP_PATH  # noqa: E402
from anchorclip.miniworld.prompts import SHAPE_TEMPLATES  # noqa: E402
from anchorclip.results import summarize  # noqa: E402

IMAGE_TOWER = ("vision_model.", "visual_projection.")


def assemble(image_from: AnchorCLIPModel, text_from: AnchorCLIPModel) -> AnchorCLIPModel:
    """A model with `image_from`'s image tower and `text_from`'s text tower (and temperature)."""
    model = AnchorCLIPModel.from_pretrained(MINICLIP_PATH)
    state = {
        name: (image_from if name.split("clip.", 1)[-1].startswith(IMAGE_TOWER) else text_from).state_dict()[name]
        for name in model.state_dict()
    }
    model.load_state_dict(state)
    return model


def score(model: AnchorCLIPModel, eval_sets: dict, workdir: str) -> dict:
    args = AnchorTrainingArguments(
        output_dir=os.path.join(workdir, "scratch"), method="zeroshot", report_to="none",
        use_cpu=not torch.cuda.is_available(), per_device_eval_batch_size=128, eval_templates=list(SHAPE_TEMPLATES),
    )  # fmt: skip
    trainer = AnchorCLIPTrainer(model=model, args=args, processing_class=CLIPProcessor.from_pretrained(MINICLIP_PATH))
    groups = summarize(trainer.evaluate(_tests(eval_sets)))["groups"]
    return {group: 100 * groups[group] for group in ("id", "domain_shift", "corruption") if group in groups}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="robustness.py's --workdir, run with --save_models")
    parser.add_argument("--runs", nargs="+", required=True, help="saved run names without the -s<seed> suffix")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--corruptions", type=int, default=100, help="images per corruption x severity")
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    eval_sets = evaluation_sets(None, args.corruptions)
    pretrained = AnchorCLIPModel.from_pretrained(MINICLIP_PATH)
    report: dict = {"command": "python benchmarks/tower_swap.py " + shlex.join(sys.argv[1:]), "runs": {}}
    report["runs"]["zero-shot"] = {"pretrained image + pretrained text": score(pretrained, eval_sets, args.workdir)}
    for run in args.runs:
        per_seed: dict[str, list[dict]] = {}
        for seed in args.seeds:
            finetuned = AnchorCLIPModel.from_pretrained(os.path.join(args.workdir, "models", f"{run}-s{seed}"))
            for label, (image, text) in {
                "finetuned image + finetuned text": (finetuned, finetuned),
                "finetuned image + pretrained text": (finetuned, pretrained),
                "pretrained image + finetuned text": (pretrained, finetuned),
            }.items():
                per_seed.setdefault(label, []).append(score(assemble(image, text), eval_sets, args.workdir))
        report["runs"][run] = {
            label: {
                group: [statistics.mean(s[group] for s in scores), statistics.pstdev(s[group] for s in scores)]
                for group in scores[0]
            }
            for label, scores in per_seed.items()
        }
    report["seeds"], report["date"] = args.seeds, time.strftime("%Y-%m-%d")
    with open(args.output + ".json", "w") as handle:
        json.dump(report, handle, indent=1)
    lines = [
        "# Which tower carries the corruption accuracy (miniworld corruption suite, mean ± std over seeds)",
        "",
        f"Command: `{report['command']}`",
        "",
        "| run | towers | ID | domain shift | corruption (15 x 5) |",
        "|---|---|---|---|---|",
    ]
    for run, rows in report["runs"].items():
        for label, groups in rows.items():
            cells = [
                f"{groups[g][0]:.1f} ± {groups[g][1]:.1f}" if isinstance(groups[g], list) else f"{groups[g]:.1f}"
                for g in ("id", "domain_shift", "corruption")
            ]
            lines.append(f"| {run} | {label} | " + " | ".join(cells) + " |")
    with open(args.output + ".md", "w") as handle:
        handle.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
