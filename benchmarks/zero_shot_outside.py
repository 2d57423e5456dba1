"""Zero-shot tasks the miniworld suite does not name: do saved runs keep the pretrained model's answers there too?

    python benchmarks/robustness.py ... --save_models --workdir W   # or lambda_sweep.py --save_models
    python benchmarks/zero_shot_outside.py --workdir W --runs FLYP-lr0.001 "ARF,_MMR-diverse_retrieval-lr0.003" \
        --seeds 0 1 2 --output docs/results/zero_shot_outside

The suite's zero-shot group is unseen shapes, colour and background. The world's scenes carry two more attributes
that its captions name and no finetune label or suite task uses: size (small, large) and position (centre and the
four corners). This scores each saved run (and the pretrained model) on 1,000 fresh photo scenes of all 12 shapes
for each, classified by prompt ensembles as the suite's tasks are, so that a claim about zero-shot recognition is
checked on tasks nobody chose anything on. The scenes come from the world's generator with seeds no split uses.
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
import robustness as rb  # noqa: E402  (the benchmark's evaluation of a finished model)

from anchorclip import AnchorCLIPModel  # noqa: E402
from anchorclip.evaluation import EvalSet  # noqa: E402
from anchorclip.miniworld import MINICLIP_PATH  # noqa: E402
from anchorclip.miniworld.attributes import POSITIONS, SHAPES, SIZES  # noqa: E402
from anchorclip.miniworld.splits import SplitSpec, _generate_split  # noqa: E402

# (attribute, its classes, seed, prompt templates): seeds outside every split's (1001-1004, 2001-2008).
TASKS = (
    ("size", SIZES, 3001, ("a photo of a {} shape.", "a picture of a {} object.", "an image of a {} shape.")),
    (
        "position",
        POSITIONS,
        3002,
        ("a photo of a shape in the {}.", "a picture of an object in the {}.", "an image of a shape in the {}."),
    ),
)


def outside_sets(size: int = 1000) -> dict[str, EvalSet]:
    """The two tasks as evaluation sets, rendered by the world's generator on each run (2,000 small images)."""
    sets = {}
    for attribute, classes, seed, templates in TASKS:
        spec = SplitSpec(f"outside_{attribute}", seed, size, SHAPES, ("photo",), attribute, classes)
        dataset = _generate_split(spec, size, seed, num_proc=1)
        sets[attribute] = EvalSet(dataset, group="zero_shot", class_names=list(classes), templates=list(templates))
    return sets


def score(model: AnchorCLIPModel, sets: dict[str, EvalSet], workdir: str) -> dict[str, float]:
    metrics = rb.evaluation_trainer(model, workdir).evaluate(sets)
    return {name: 100 * metrics[f"eval_{name}_top1"] for name in sets}


def _cell(values: list[float]) -> dict:
    return {
        "mean": statistics.mean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": values,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="where the runs were trained with --save_models")
    parser.add_argument("--runs", nargs="+", required=True, help="saved run names without the -s<seed> suffix")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--size", type=int, default=1000, help="images per task")
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    sets = outside_sets(args.size)
    rows = {"zero-shot (pretrained)": [score(AnchorCLIPModel.from_pretrained(MINICLIP_PATH), sets, args.workdir)]}
    for run in args.runs:
        rows[run] = []
        for seed in args.seeds:
            rows[run].append(score(rb.saved_model(args.workdir, run, seed), sets, args.workdir))
    table = {}
    for row, scores in rows.items():
        per_task = {task: [s[task] for s in scores] for task in sets}
        per_task["mean"] = [statistics.mean(s[task] for task in sets) for s in scores]  # per seed, then over seeds
        table[row] = {task: _cell(values) for task, values in per_task.items()}
    report = {
        "command": "python benchmarks/zero_shot_outside.py " + shlex.join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"), "seeds": args.seeds, "images_per_task": args.size,
        "tasks": {attribute: {"classes": list(classes), "seed": seed, "templates": list(templates)}
                  for attribute, classes, seed, templates in TASKS},
        "table": table,
    }  # fmt: skip
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    with open(args.output + ".json", "w") as handle:
        json.dump(report, handle, indent=1)
    lines = [
        "# Zero-shot tasks outside the suite: size and position (top-1 %, mean ± std over seeds)",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: 2 CPU cores, {report['date']}. {args.size} photo scenes of all 12 shapes per task; chance is 50 % "
        "for size, 20 % for position.",
        "",
        "| run | size | position | mean of the two |",
        "|---|---|---|---|",
    ]
    for row, entry in table.items():
        cells = [f"{entry[k]['mean']:.1f} ± {entry[k]['std']:.1f}" for k in ("size", "position", "mean")]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    with open(args.output + ".md", "w") as handle:
        handle.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
