"""Which tower carries a finetuned model's corruption (and zero-shot) accuracy: its image tower or its text tower?

    python benchmarks/robustness.py ... --corruptions 100 --save_models --workdir W   # keeps every run's model
    python benchmarks/tower_swap.py --workdir W --runs FLYP-lr0.001 "ARF,_MMR-diverse_retrieval-lr0.003" \
        --seeds 0 1 2 --output docs/results/corruptions_tower_swap

A corruption changes only the image, so the text tower meets it through the class head alone. For each saved run
(seeds averaged) this scores, on the miniworld corruption suite (the same images as robustness.py's) and on the
clean ID / domain-shift / zero-shot sets, four models assembled from two towers each: finetuned image + finetuned
text (the run itself), finetuned image + pretrained text, pretrained image + finetuned text, and pretrained both (the
zero-shot start). A tower "carries" a gain if swapping it in moves the score.

With `--early_from RUN2 --blocks 0 1 ...` it asks the same of the image tower's depth instead: each run of
`--runs` with its patch embedding and first K transformer blocks (K = 0: the embedding alone) taken from RUN2
(same seed), everything after them (later blocks, final norm, projection, text tower) its own. Surgical
fine-tuning (Lee et al., ICLR 2023) finds input-level shifts such as corruptions carried by the first blocks and
feature-level shifts by the later ones.
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from corruption_groups import group_of  # noqa: E402
from robustness import _tests, evaluation_sets, evaluation_trainer, saved_model  # noqa: E402

from anchorclip import AnchorCLIPModel  # noqa: E402
from anchorclip.miniworld import MINICLIP_PATH  # noqa: E402
from anchorclip.results import summarize  # noqa: E402

IMAGE_TOWER = ("vision_model.", "visual_projection.")
GROUPS = ("id", "domain_shift", "zero_shot", "corruption")  # the summary groups scored, in table order


def _early(blocks: int) -> tuple[str, ...]:
    """Parameter prefixes of the image tower's input end: patch embedding, first norm, the first `blocks` blocks."""
    layers = tuple(f"vision_model.encoder.layers.{i}." for i in range(blocks))
    return ("vision_model.embeddings.", "vision_model.pre_layrnorm.", *layers)


def assemble(
    image_from: AnchorCLIPModel,
    text_from: AnchorCLIPModel,
    early_from: AnchorCLIPModel | None = None,
    blocks: int = 0,
) -> AnchorCLIPModel:
    """A model with `image_from`'s image tower and `text_from`'s text tower (and temperature); with `early_from`,
    the image tower's patch embedding and first `blocks` blocks are `early_from`'s."""
    model = AnchorCLIPModel.from_pretrained(MINICLIP_PATH)
    state = {}
    for name in model.state_dict():
        local = name.split("clip.", 1)[-1]
        source = image_from if local.startswith(IMAGE_TOWER) else text_from
        if early_from is not None and local.startswith(_early(blocks)):
            source = early_from
        state[name] = source.state_dict()[name]
    model.load_state_dict(state)
    return model


def score(model: AnchorCLIPModel, eval_sets: dict, workdir: str) -> dict:
    trainer = evaluation_trainer(model, workdir)
    summary = summarize(trainer.evaluate(_tests(eval_sets)))
    groups = summary["groups"]
    scores = {group: 100 * groups[group] for group in GROUPS if group in groups}
    # Where ARF trails FLYP (docs/results/corruptions.md): corruption_groups.py's renderer-like cells, beside all 75.
    renderer_like = [value for name, value in summary["sets"].items() if group_of(name) == "renderer-like"]
    if renderer_like:
        scores["renderer_like"] = 100 * statistics.mean(renderer_like)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="robustness.py's --workdir, run with --save_models")
    parser.add_argument("--runs", nargs="+", required=True, help="saved run names without the -s<seed> suffix")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--corruptions", type=int, default=100, help="images per corruption x severity")
    parser.add_argument("--early_from", help="a saved run: score --runs with its first --blocks image blocks")
    parser.add_argument("--blocks", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="with --early_from")
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    eval_sets = evaluation_sets(None, args.corruptions)
    pretrained = AnchorCLIPModel.from_pretrained(MINICLIP_PATH)
    report: dict = {"command": "python benchmarks/tower_swap.py " + shlex.join(sys.argv[1:]), "runs": {}}
    if not args.early_from:
        zero_shot = score(pretrained, eval_sets, args.workdir)
        report["runs"]["zero-shot"] = {"pretrained image + pretrained text": zero_shot}
    for run in args.runs:
        per_seed: dict[str, list[dict]] = {}
        for seed in args.seeds:
            finetuned = saved_model(args.workdir, run, seed)
            # (label, image tower, text tower, early image blocks from, how many)
            models: list[tuple[str, AnchorCLIPModel, AnchorCLIPModel, AnchorCLIPModel | None, int]] = [
                ("finetuned image + finetuned text", finetuned, finetuned, None, 0)
            ]
            if args.early_from:
                early = saved_model(args.workdir, args.early_from, seed)
                models += [
                    (
                        f"patch embedding + first {k} image blocks from {args.early_from}",
                        finetuned,
                        finetuned,
                        early,
                        k,
                    )
                    for k in args.blocks
                ]
            else:
                models.append(("finetuned image + pretrained text", finetuned, pretrained, None, 0))
                models.append(("pretrained image + finetuned text", pretrained, finetuned, None, 0))
            for label, image, text, early_from, blocks in models:
                model = assemble(image, text, early_from, blocks)
                per_seed.setdefault(label, []).append(score(model, eval_sets, args.workdir))
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
        f"# Which {'image blocks carry' if args.early_from else 'tower carries'} the corruption and zero-shot accuracy"
        " (miniworld corruption suite, mean ± std over seeds)",
        "",
        f"Command: `{report['command']}`",
        "",
        "| run | towers | ID | domain shift | zero-shot | corruption (15 x 5) | renderer-like (4 blurs, pixelate) |",
        "|---|---|---|---|---|---|---|",
    ]
    for run, rows in report["runs"].items():
        for label, groups in rows.items():
            cells = [
                f"{groups[g][0]:.1f} ± {groups[g][1]:.1f}" if isinstance(groups[g], list) else f"{groups[g]:.1f}"
                for g in (*GROUPS, "renderer_like")
                if g in groups
            ]
            lines.append(f"| {run} | {label} | " + " | ".join(cells) + " |")
    with open(args.output + ".md", "w") as handle:
        handle.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
