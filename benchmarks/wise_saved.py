"""WiSE-FT of saved finetuned models, its α chosen on validation like every other choice: does a lead survive it?

    python benchmarks/robustness.py ... --corruptions 100 --save_models --workdir W  # or lambda_sweep.py --save_models
    python benchmarks/wise_saved.py --workdir W --runs FLYP-lr0.001 "ARF,_MMR-diverse_retrieval-lr0.003" \
        --seeds 0 1 2 --corruptions 100 --choose_on val_and_corruption --output docs/results/corruptions_wise

WiSE-FT (Wortsman et al., CVPR 2022) is θ(α) = (1 − α)·θ_zero-shot + α·θ_finetuned (`anchorclip.wise_ft`); the
paper leaves open whether ARF is combined with it. robustness.py sweeps α while it trains; this scores the sweep
of models already trained and saved, so that rows trained elsewhere (lambda_sweep.py's) get it without training
again. For each run, every α of `--alphas` is scored on finetune_val (with `--choose_on val_and_corruption`, its
mean with finetune_val under the 4 validation corruptions: robustness.py's selection score) and on the test suite.
α is chosen per run on the mean score of the first `--grid_seeds` seeds (α = 1, the run itself, on a tie), never on
a test set; the chosen α and α = 1 are then reported over every seed. Each (run, seed, α) result is cached under
`<workdir>/wise/`, so an interrupted sweep resumes.
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
import robustness as rb  # noqa: E402  (the benchmark's own sets, score and tables)

from anchorclip import AnchorCLIPModel, wise_ft  # noqa: E402
from anchorclip.evaluation import GROUPS  # noqa: E402
from anchorclip.miniworld import MINICLIP_PATH  # noqa: E402


def sweep(run: str, seed: int, alphas: list[float], eval_sets: dict, args) -> dict[float, dict]:
    """Every α's result for one saved run and seed, each cached as it finishes."""
    finetuned = pretrained = None
    results = {}
    for alpha in alphas:
        # The corruption images per cell are in the name: a sweep scored without them cannot answer one with them.
        path = os.path.join(args.workdir, "wise", f"{run}-s{seed}-alpha{alpha:g}-c{args.corruptions}.json")
        if os.path.isfile(path):
            results[alpha] = json.load(open(path))
            continue
        if finetuned is None:
            finetuned = rb.saved_model(args.workdir, run, seed)
            pretrained = AnchorCLIPModel.from_pretrained(MINICLIP_PATH)
        model = wise_ft(pretrained, finetuned, alpha)
        trainer = rb.evaluation_trainer(model, args.workdir, args.eval_batch)
        results[alpha] = rb._save(path, rb.evaluate_run(trainer, eval_sets))  # written whole or not at all
        print(f"{run} s{seed} α {alpha:g}: {rb.selection_score(results[alpha], args.choose_on):.4f}", flush=True)
    return results


def _brief(result: dict) -> dict:
    return {**{k: v for k, v in result.items() if k != "test"}, "test": {"groups": result["test"]["groups"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="where the runs were trained with --save_models")
    parser.add_argument("--runs", nargs="+", required=True, help="saved run names without the -s<seed> suffix")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--alphas", type=float, nargs="+", default=list(rb.WISE_ALPHAS), help="must include 1")
    parser.add_argument("--grid_seeds", type=int, default=1, help="choose α on the mean of the first N seeds")
    parser.add_argument("--corruptions", type=int, default=0, help="images per corruption x severity (0: none)")
    parser.add_argument("--choose_on", choices=["val", "val_and_corruption"], default="val")
    parser.add_argument("--eval_batch", type=int, default=128, help="evaluation batch size (speed only)")
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    if 1.0 not in args.alphas:
        parser.error("--alphas must include 1 (the finetuned run itself: the point α is chosen against)")
    if args.choose_on == "val_and_corruption" and not args.corruptions:
        parser.error("--choose_on val_and_corruption needs --corruptions N")
    torch.set_num_threads(1)
    eval_sets = rb.evaluation_sets(None, args.corruptions)
    alphas = sorted(set(args.alphas), reverse=True)  # α = 1 first: it wins ties
    report: dict = {
        "command": "python benchmarks/wise_saved.py " + shlex.join(sys.argv[1:]),
        "choose_on": args.choose_on, "seeds": args.seeds, "grid_seeds": args.grid_seeds, "alphas": alphas,
        "date": time.strftime("%Y-%m-%d"), "runs": {},
    }  # fmt: skip
    table = {}
    for run in args.runs:
        by_seed = {seed: sweep(run, seed, alphas, eval_sets, args) for seed in args.seeds}
        chooser = args.seeds[: args.grid_seeds]
        score = {a: statistics.mean(rb.selection_score(by_seed[s][a], args.choose_on) for s in chooser)
                 for a in alphas}  # fmt: skip
        chosen = max(alphas, key=lambda a: score[a])  # max keeps the first of equals: α = 1
        report["runs"][run] = {
            "score": {str(a): 100 * v for a, v in score.items()}, "chosen_alpha": chosen,
            # Per α and seed the scores and test group means (each cell's numbers stay in <workdir>/wise/).
            "sweep": {str(a): {str(s): _brief(by_seed[s][a]) for s in args.seeds} for a in alphas},
        }  # fmt: skip
        print(f"{run}: score by α { {a: round(100 * v, 2) for a, v in score.items()} } -> α {chosen:g}")
        for alpha in dict.fromkeys([1.0, chosen]):
            label = run if alpha == 1.0 else f"{run} + WiSE-FT (α={alpha:g}, validation-chosen)"
            table[label] = rb.mean_std([by_seed[s][alpha]["test"] for s in args.seeds])
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    with open(args.output + ".json", "w") as handle:
        json.dump({**report, "table": table}, handle, indent=1)
    groups = [g for g in GROUPS if g in next(iter(table.values()))["groups"]]
    lines = [
        "# WiSE-FT of saved runs, α chosen on " + ("finetune_val" if args.choose_on == "val" else
                                                    "finetune_val and its validation corruptions"),
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: 2 CPU cores, {report['date']}. α chosen per run on the mean selection score of seeds "
        f"{args.seeds[: args.grid_seeds]}; the test columns of the sweep are for reading, never for choosing.",
        "",
        f"## Sweep (seeds {args.seeds[: args.grid_seeds]}: score; test columns: means over seeds {args.seeds})",
        "",
        "| run | α | score | " + " | ".join(groups) + " |",
        "|---|---|---|" + "---|" * len(groups),
    ]  # fmt: skip
    for run, entry in report["runs"].items():
        for alpha in alphas:
            tests = [100 * statistics.mean(r["test"]["groups"][g] for r in entry["sweep"][str(alpha)].values())
                     for g in groups]  # fmt: skip
            mark = " ← chosen" if alpha == entry["chosen_alpha"] else ""
            lines.append(f"| {run} | {alpha:g} | {entry['score'][str(alpha)]:.2f}{mark} | "
                         + " | ".join(f"{v:.1f}" for v in tests) + " |")  # fmt: skip
    lines += ["", f"## Chosen α against α = 1 (seeds {args.seeds}; mean ± std)", "", rb.markdown_table(table)]
    with open(args.output + ".md", "w") as handle:
        handle.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
