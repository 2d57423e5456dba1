"""λ1 (caption anchors) and λ2 (pair anchors) chosen on validation, as the learning rate is (issue 12); FLYP, which
has no λ, gets the same number of runs on its own two knobs (lr and weight decay), so that the two compare at one
tuning budget.

    python benchmarks/lambda_sweep.py --jobs 2 --workdir outputs/robustness   # ~40 min on 2 CPU cores
    python benchmarks/lambda_sweep.py --jobs 2 --workdir outputs/robustness --row "ARF w/o caption anchors, \
        0.25 pair/image, MMR-diverse retrieval" --grid 0.125 0.25 0.5 1 2 \
        --lr_from docs/results/robustness_budget.json --output docs/results/lambda_sweep_budget   # budget: λ2 only
    python benchmarks/lambda_sweep.py --jobs 2 --workdir outputs/corruptions --corruptions 100 --eval_batch 128 \
        --choose_on val_and_corruption --lr_from docs/results/corruptions_3seeds.json \
        --output docs/results/corruptions_lambda   # the corruption protocol (docs/results/corruptions.md)
    python benchmarks/lambda_sweep.py --row FLYP ... (the same)   --output docs/results/corruptions_flyp_grid

Protocol, in the order a user would tune:
- the row (`--row`; default anchorclip's default ARF, the "ARF, MMR-diverse retrieval" row of
  `benchmarks/robustness.py`) keeps the learning rate its own validation sweep chose (`--lr`, default: read from
  `--lr_from`, a `benchmarks/robustness.py --lr_protocol per_method` results file);
- at that lr, every (λ1, λ2) in `--grid` × `--grid` (λ2 alone for a row without caption anchors; for FLYP, lr ×
  {½, 1, 2} × weight decay {0.03, 0.1, 0.3}: nine points like a 3-value λ grid) is trained with the first seed
  and scored on `finetune_val` (ID validation images, never a test set; with `--choose_on val_and_corruption`, its
  mean with finetune_val under the 4 validation corruptions); the best wins, the row's own point on a tie;
- the chosen point and the row's own are then trained with every seed and reported side by side (mean ± std).
With `--grid_seeds N` every grid point is trained with the first N seeds and chosen on the mean of their scores (a
check of how firmly one seed chose). The test numbers of every grid point are printed for reading the trade-off;
they choose nothing.

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
FLYP = "FLYP"  # no λ: the same number of runs goes to its own two knobs
ROWS = (BASE, BUDGET, FLYP)
VALUES = (0.125, 0.25, 0.5, 1.0, 2.0)  # the weights a grid may take
GRID = (0.5, 1.0, 2.0)
LR_FACTORS = (0.5, 1.0, 2.0)  # FLYP's first knob: its chosen lr times these
WEIGHT_DECAYS = (0.03, rb.WEIGHT_DECAY, 0.3)  # its second


def knobs(row: str) -> tuple[str, str]:
    """What a grid point `(a, b)` of the row sets: its two λ, or FLYP's lr (× the chosen) and weight decay."""
    return ("lr_factor", "weight_decay") if row == FLYP else ("lambda_caption", "lambda_pairs")


def own_point(row: str) -> tuple[float, float]:
    """The row's point as `benchmarks/robustness.py` trains it."""
    if row == FLYP:
        return (1.0, rb.WEIGHT_DECAY)
    overrides, fields = rb.METHODS[row][1], rb.AnchorTrainingArguments.__dataclass_fields__
    return tuple(overrides.get(name, fields[name].default) for name in knobs(row))


def variant(row: str, a: float, b: float) -> str:
    """The name of `row` trained at point `(a, b)` (`row` itself at its own, so that its cached runs are reused). A
    row without caption anchors keeps λ1 = 0: only λ2 is swept. FLYP's lr is not in the name (the cache keys it)."""
    if row == FLYP:
        return row if b == rb.WEIGHT_DECAY else f"{row}, weight_decay {b:g}"
    if (a, b) == own_point(row):
        return row
    swept = [] if own_point(row)[0] == 0 else [f"lambda_caption {a:g}"]
    return ", ".join([row, *swept, f"lambda_pairs {b:g}"])


def points_of(row: str, grid) -> list[tuple[float, float]]:
    """The row's own point first (so that it wins ties), then the rest of the grid (FLYP's is fixed: 3 × 3, the
    same number of runs as a λ grid of 3 values)."""
    own = own_point(row)
    if row == FLYP:
        first, second = LR_FACTORS, WEIGHT_DECAYS
    else:
        first, second = (grid if own[0] != 0 else [0.0]), grid
    return [own] + [(a, b) for a in first for b in second if (a, b) != own]


def task(row: str, point: tuple[float, float], lr: float, seed: int) -> tuple[str, float, int, bool]:
    """What `robustness.run_all` trains for this point: its name, lr and seed, no WiSE-FT."""
    return (variant(row, *point), lr * point[0] if row == FLYP else lr, seed, False)


def register() -> None:
    """Add every grid row to `robustness.METHODS`. At import, so that spawned training workers (which import this
    script as their main module) know them too."""
    for row in ROWS:
        family, overrides, captions, pairs = rb.METHODS[row]
        for point in points_of(row, VALUES):
            settings = {"weight_decay": point[1]} if row == FLYP else dict(zip(knobs(row), point))
            rb.METHODS.setdefault(variant(row, *point), (family, {**overrides, **settings}, captions, pairs))


register()


def _mean_run(runs: list[dict]) -> dict:
    """One grid point's runs (one a seed) as one: the mean of each validation score and test group."""
    mean = {key: sum(run[key] for run in runs) / len(runs) for key in ("val", "val_corruption") if key in runs[0]}
    groups = {g: sum(run["test"]["groups"][g] for run in runs) / len(runs) for g in runs[0]["test"]["groups"]}
    return {"lr": runs[0]["lr"], **mean, "test": {"groups": groups}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument(
        "--row", choices=ROWS, default=BASE, help="the row whose λ (for FLYP: lr and weight decay) are swept"
    )
    parser.add_argument("--lr", type=float, default=None, help="default: the row's chosen lr in --lr_from")
    parser.add_argument(
        "--lr_from",
        default=os.path.join(os.path.dirname(__file__), "..", "docs", "results", "robustness.json"),
        help="a robustness.py results file whose chosen_lr has the row",
    )
    parser.add_argument(
        "--grid", type=float, nargs="+", default=list(GRID), help=f"λ values of {VALUES} (FLYP's grid is fixed)"
    )
    parser.add_argument("--k_per_class", type=int, default=600)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="torch threads when --jobs 1")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once, one thread each")
    parser.add_argument("--workdir", default="outputs/robustness")
    parser.add_argument("--output", default="docs/results/lambda_sweep")
    parser.add_argument("--eval_size", type=int, default=None, help="images per evaluation set (default: 1000)")
    parser.add_argument("--eval_batch", type=int, default=8, help="evaluation batch size (speed only)")
    parser.add_argument(
        "--grid_seeds",
        type=int,
        default=1,
        help="train every grid point with the first N of --seeds and choose on the mean of their validation scores",
    )
    parser.add_argument("--corruptions", type=int, default=0, help="images per corruption x severity (0: none)")
    parser.add_argument(
        "--save_models", action="store_true", help="keep each run trained now under <workdir>/models (tower swaps)"
    )
    parser.add_argument(
        "--choose_on",
        choices=["val", "val_and_corruption"],
        default="val",
        help="finetune_val top-1, or its mean with finetune_val under the 4 validation corruptions (needs "
        "--corruptions; never the 15 test corruptions)",
    )
    args = parser.parse_args()
    if not set(args.grid) <= set(VALUES):
        parser.error(f"--grid takes values of {VALUES} (the rows spawned workers know)")
    if args.choose_on == "val_and_corruption" and not args.corruptions:
        parser.error("--choose_on val_and_corruption needs --corruptions N")
    if args.lr is None:
        chosen_lr = json.load(open(args.lr_from))["chosen_lr"]
        if args.row not in chosen_lr:
            parser.error(
                f"{args.lr_from} chose no lr for {args.row!r}: pass --lr, or sweep the row's lr first with "
                f'`python benchmarks/robustness.py --lr_protocol per_method --methods "{args.row}"`'
            )
        args.lr = chosen_lr[args.row]
    torch.set_num_threads(args.threads)
    eval_sets = rb.evaluation_sets(args.eval_size, args.corruptions)
    rb.check_workdir_models(args.workdir)
    anchors = rb.build_anchors(args.workdir, args.k_per_class)

    # 1. Every grid point at the row's lr, first seed (or first --grid_seeds); chosen on validation.
    names = knobs(args.row)
    short = {"lambda_caption": "λ1", "lambda_pairs": "λ2", "lr_factor": "lr ×", "weight_decay": "weight decay"}

    def say(point: tuple[float, float]) -> str:
        return ", ".join(f"{short[name]} {value:g}" for name, value in zip(names, point))

    points, grid_seeds = points_of(args.row, args.grid), args.seeds[: args.grid_seeds]
    tasks = [task(args.row, p, args.lr, seed) for p in points for seed in grid_seeds]
    done = iter(rb.run_all(tasks, anchors, args, eval_sets))
    grid = {point: _mean_run([next(done) for _ in grid_seeds]) for point in points}
    score = {point: rb.selection_score(run, args.choose_on) for point, run in grid.items()}
    chosen = max(points, key=score.__getitem__)  # `points` starts at the row's own: it wins ties
    for point, run in grid.items():
        tests = "  ".join(f"{g} {100 * run['test']['groups'][g]:.1f}" for g in GROUPS if g in run["test"]["groups"])
        print(f"{say(point)}: {args.choose_on} {100 * score[point]:.2f}  |  {tests}")
    print(f"chosen on {args.choose_on}: {say(chosen)}")

    # 2. The chosen point and the row's own with every seed.
    own = own_point(args.row)
    rows = {own: f"{args.row} (its own {say(own)})"}
    rows[chosen] = rows.get(chosen, args.row) + f", validation-chosen {say(chosen)}"
    tasks = [task(args.row, point, args.lr, seed) for point in rows for seed in args.seeds]
    finished = iter(rb.run_all(tasks, anchors, args, eval_sets))
    table = {label: rb.mean_std([next(finished)["test"] for _ in args.seeds]) for label in rows.values()}

    grid_key = "grid_seed0" if len(grid_seeds) == 1 else "grid_seed_mean"  # the seed-0 key of earlier files
    grid_entries = [
        {**dict(zip(names, p)), "lr": run["lr"], "val": 100 * run["val"],
         **({"val_corruption": 100 * run["val_corruption"]} if args.corruptions else {}), "score": 100 * score[p],
         **{g: 100 * run["test"]["groups"][g] for g in GROUPS if g in run["test"]["groups"]}}
        for p, run in grid.items()
    ]  # fmt: skip
    report = {
        "command": "python benchmarks/lambda_sweep.py " + shlex.join(sys.argv[1:]),
        "protocol": "Protocol" + __doc__.split("Protocol")[1].split("Runs share")[0].rstrip(),
        "row": args.row, "lr": args.lr, "steps": args.steps, "batch": args.batch, "seeds": args.seeds,
        "grid": [list(point) for point in points], "knobs": list(names), "choose_on": args.choose_on,
        "corruption_images_per_cell": args.corruptions, "chosen": dict(zip(names, chosen)),
        "machine": f"{os.cpu_count()} CPU cores" if not torch.cuda.is_available() else torch.cuda.get_device_name(),
        "date": time.strftime("%Y-%m-%d"),
        "grid_seeds": grid_seeds, grid_key: grid_entries,
        "methods": {label: {**{g: row["groups"][g] for g in GROUPS if g in row["groups"]}, "sets": row["sets"]}
                    for label, row in table.items()},
    }  # fmt: skip
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    with open(args.output + ".json", "w") as handle:
        json.dump(report, handle, indent=2)
    scored = ["val"] + (["val_corruption", "score"] if args.corruptions else [])
    titles = {"val": "finetune_val", "val_corruption": "val-corruption", "score": "their mean"}
    columns = ("lambda_caption", "lambda_pairs") if args.row != FLYP else ("lr", "weight_decay")
    knob_titles = {
        "lambda_caption": "λ1 (captions)",
        "lambda_pairs": "λ2 (pairs)",
        "lr": "lr",
        "weight_decay": "weight decay",
    }
    groups = [g for g in GROUPS if any(g in entry for entry in grid_entries)]
    header = [*(knob_titles[key] for key in columns), *(titles[key] for key in scored), *groups]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for point, entry in zip(points, grid_entries):
        cells = [f"{entry[key]:g}" for key in columns] + [f"{entry[key]:.2f}" for key in scored]
        cells[-1] += " ← chosen" if point == chosen else ""
        lines.append("| " + " | ".join(cells + [f"{entry.get(g, float('nan')):.1f}" for g in groups]) + " |")
    chooser = "finetune_val" if args.choose_on == "val" else "finetune_val and its validation corruptions"
    seeds_said = f"seed {grid_seeds[0]}" if len(grid_seeds) == 1 else f"mean over seeds {grid_seeds}"
    swept = "lr and weight decay" if args.row == FLYP else "λ1, λ2"
    with open(args.output + ".md", "w") as handle:
        handle.write(
            f"# {swept} chosen on {chooser}\n\nCommand: `{report['command']}`  \n"
            f"Machine: {report['machine']}, {report['date']}. Row: {args.row} at lr {args.lr:g}; "
            f"steps {args.steps} × batch {args.batch}.\n\n{report['protocol']}\n\n"
            f"## Grid ({seeds_said}; test columns are for reading, never for choosing)\n\n" + "\n".join(lines) + "\n\n"
            f"## Chosen against the row's own point (seeds {args.seeds}; mean ± std)\n\n{rb.markdown_table(table)}\n"
        )
    print(rb.markdown_table(table))


if __name__ == "__main__":
    main()
