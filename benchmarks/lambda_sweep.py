"""λ1 (caption anchors) and λ2 (pair anchors) chosen on finetune_val, as the learning rate is (issue 12).

    python benchmarks/lambda_sweep.py --jobs 2 --workdir outputs/robustness   # ~40 min on 2 CPU cores
    python benchmarks/lambda_sweep.py --jobs 2 --workdir outputs/robustness --row "ARF w/o caption anchors, \
        0.25 pair/image, MMR-diverse retrieval" --grid 0.125 0.25 0.5 1 2 \
        --lr_from docs/results/robustness_budget.json --output docs/results/lambda_sweep_budget   # budget: λ2 only

Protocol, in the order a user would tune:
- the row (`--row`; default anchorclip's default ARF, the "ARF, MMR-diverse retrieval" row of
  `benchmarks/robustness.py`) keeps the learning rate its own validation sweep chose (`--lr`, default: read from
  `--lr_from`, a `benchmarks/robustness.py --lr_protocol per_method` results file);
- at that lr, every (λ1, λ2) in `--grid` × `--grid` (λ2 alone for a row without caption anchors) is trained with
  the first seed and scored on `finetune_val` (ID validation images, never a test set); the best wins, the row's
  own weights on a tie;
- the chosen weights and the row's own are then trained with every seed and reported side by side (mean ± std).
The test numbers of every grid point (first seed) are printed for reading the trade-off; they choose nothing.

Runs share `benchmarks/robustness.py`'s cache (`<workdir>/runs/`): a workdir that already holds the robustness
table's runs trains only the new grid points.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time

import robustness as rb
import torch

from anchorclip.evaluation import GROUPS

BASE = "ARF, MMR-diverse retrieval"
BUDGET = "ARF w/o caption anchors, 0.25 pair/image, MMR-diverse retrieval"  # the budget preset's row
ROWS = (BASE, BUDGET)
VALUES = (0.125, 0.25, 0.5, 1.0, 2.0)  # the weights a grid may take
GRID = (0.5, 1.0, 2.0)


def own_lambdas(row: str) -> tuple[float, float]:
    """The row's (λ1, λ2) as `benchmarks/robustness.py` trains it."""
    overrides, fields = rb.METHODS[row][1], rb.AnchorTrainingArguments.__dataclass_fields__
    return tuple(overrides.get(name, fields[name].default) for name in ("lambda_caption", "lambda_pairs"))


def variant(row: str, lambda_caption: float, lambda_pairs: float) -> str:
    """The name of `row` trained with these weights (`row` itself at its own, so that its cached runs are reused). A
    row without caption anchors keeps λ1 = 0: only λ2 is swept."""
    if (lambda_caption, lambda_pairs) == own_lambdas(row):
        return row
    swept = [] if own_lambdas(row)[0] == 0 else [f"lambda_caption {lambda_caption:g}"]
    return ", ".join([row, *swept, f"lambda_pairs {lambda_pairs:g}"])


def points_of(row: str, grid) -> list[tuple[float, float]]:
    """The row's own weights first (so that they win ties), then the rest of the grid."""
    own = own_lambdas(row)
    first = grid if own[0] != 0 else [0.0]
    return [own] + [(l1, l2) for l1 in first for l2 in grid if (l1, l2) != own]


def register() -> None:
    """Add every grid row to `robustness.METHODS`. At import, so that spawned training workers (which import this
    script as their main module) know them too."""
    for row in ROWS:
        family, overrides, captions, pairs = rb.METHODS[row]
        for l1, l2 in points_of(row, VALUES):
            weights = {"lambda_caption": l1, "lambda_pairs": l2}
            rb.METHODS.setdefault(variant(row, l1, l2), (family, {**overrides, **weights}, captions, pairs))


register()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--row", choices=ROWS, default=BASE, help="the row whose λ are swept")
    parser.add_argument("--lr", type=float, default=None, help="default: the row's chosen lr in --lr_from")
    parser.add_argument(
        "--lr_from",
        default=os.path.join(os.path.dirname(__file__), "..", "docs", "results", "robustness.json"),
        help="a robustness.py results file whose chosen_lr has the row",
    )
    parser.add_argument("--grid", type=float, nargs="+", default=list(GRID), help=f"values of {VALUES}")
    parser.add_argument("--k_per_class", type=int, default=600)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="torch threads when --jobs 1")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once, one thread each")
    parser.add_argument("--workdir", default="outputs/robustness")
    parser.add_argument("--output", default="docs/results/lambda_sweep")
    parser.add_argument("--eval_size", type=int, default=None, help="images per evaluation set (default: 1000)")
    args = parser.parse_args()
    if not set(args.grid) <= set(VALUES):
        parser.error(f"--grid takes values of {VALUES} (the rows spawned workers know)")
    if args.lr is None:
        chosen_lr = json.load(open(args.lr_from))["chosen_lr"]
        if args.row not in chosen_lr:
            parser.error(
                f"{args.lr_from} chose no lr for {args.row!r}: pass --lr, or sweep the row's lr first with "
                f'`python benchmarks/robustness.py --lr_protocol per_method --methods "{args.row}"`'
            )
        args.lr = chosen_lr[args.row]
    torch.set_num_threads(args.threads)
    eval_sets = rb.evaluation_sets(args.eval_size)
    rb.check_workdir_models(args.workdir)
    anchors = rb.build_anchors(args.workdir, args.k_per_class)

    # 1. Every (λ1, λ2) at the row's lr, first seed; chosen on finetune_val.
    points, first = points_of(args.row, args.grid), args.seeds[0]
    runs = rb.run_all([(variant(args.row, *p), args.lr, first, False) for p in points], anchors, args, eval_sets)
    grid = dict(zip(points, runs))
    chosen = max(points, key=lambda point: grid[point]["val"])  # `points` starts at the row's own: it wins ties
    for point, run in grid.items():
        tests = "  ".join(f"{g} {100 * run['test']['groups'][g]:.1f}" for g in GROUPS if g in run["test"]["groups"])
        print(f"λ1 {point[0]:g}, λ2 {point[1]:g}: val {100 * run['val']:.2f}  |  {tests}")
    print(f"chosen on finetune_val: λ1 {chosen[0]:g}, λ2 {chosen[1]:g}")

    # 2. The chosen weights and the row's own with every seed.
    own = own_lambdas(args.row)
    rows = {own: f"{args.row} (its own λ1 {own[0]:g}, λ2 {own[1]:g})"}
    rows[chosen] = rows.get(chosen, args.row) + f", validation-chosen λ1 {chosen[0]:g}, λ2 {chosen[1]:g}"
    tasks = [(variant(args.row, *point), args.lr, seed, False) for point in rows for seed in args.seeds]
    finished = iter(rb.run_all(tasks, anchors, args, eval_sets))
    table = {label: rb.mean_std([next(finished)["test"] for _ in args.seeds]) for label in rows.values()}

    report = {
        "command": "python benchmarks/lambda_sweep.py " + shlex.join(sys.argv[1:]),
        "protocol": "Protocol" + __doc__.split("Protocol")[1].split("Runs share")[0].rstrip(),
        "row": args.row, "lr": args.lr, "steps": args.steps, "batch": args.batch, "seeds": args.seeds,
        "grid": args.grid, "chosen": {"lambda_caption": chosen[0], "lambda_pairs": chosen[1]},
        "machine": f"{os.cpu_count()} CPU cores" if not torch.cuda.is_available() else torch.cuda.get_device_name(),
        "date": time.strftime("%Y-%m-%d"),
        "grid_seed0": [{"lambda_caption": p[0], "lambda_pairs": p[1], "val": 100 * run["val"],
                        **{g: 100 * run["test"]["groups"][g] for g in GROUPS if g in run["test"]["groups"]}}
                       for p, run in grid.items()],
        "methods": {label: {**{g: row["groups"][g] for g in GROUPS if g in row["groups"]}, "sets": row["sets"]}
                    for label, row in table.items()},
    }  # fmt: skip
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    with open(args.output + ".json", "w") as handle:
        json.dump(report, handle, indent=2)
    header = ["λ1 (captions)", "λ2 (pairs)", "finetune_val", *GROUPS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for entry in report["grid_seed0"]:
        best = (entry["lambda_caption"], entry["lambda_pairs"]) == chosen
        cells = [f"{entry[key]:g}" for key in ("lambda_caption", "lambda_pairs")]
        cells.append(f"{entry['val']:.2f}" + (" ← chosen" if best else ""))
        lines.append("| " + " | ".join(cells + [f"{entry.get(g, float('nan')):.1f}" for g in GROUPS]) + " |")
    with open(args.output + ".md", "w") as handle:
        handle.write(
            f"# λ1, λ2 chosen on finetune_val\n\nCommand: `{report['command']}`  \n"
            f"Machine: {report['machine']}, {report['date']}. Row: {args.row} at lr {args.lr:g}; "
            f"steps {args.steps} × batch {args.batch}.\n\n{report['protocol']}\n\n"
            f"## Grid (seed {first}; test columns are for reading, never for choosing)\n\n" + "\n".join(lines) + "\n\n"
            f"## Chosen against the row's own weights (seeds {args.seeds}; mean ± std)\n\n{rb.markdown_table(table)}\n"
        )
    print(rb.markdown_table(table))


if __name__ == "__main__":
    main()
