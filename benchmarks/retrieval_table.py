"""Image-text retrieval of every run of `benchmarks/robustness.py`: recall@{1,5,10} both ways, mean ± std.

    python benchmarks/retrieval_table.py outputs/robustness/runs [--set test_retrieval]

Reads the per-run JSON files the robustness benchmark caches (`<workdir>/runs/NAME-lrLR-sSEED.json`) and
prints one Markdown row per method and learning rate: the finetuned model's recalls, and WiSE-FT α=0.5's where
the run has it. The zero-shot start is the `--zero_shot` run file's `zeroshot` entry when given.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import statistics
from collections import defaultdict

METRICS = [f"{d}_recall@{k}" for d in ("image2text", "text2image") for k in (1, 5, 10)] + ["mean_recall"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", help="the robustness benchmark's <workdir>/runs folder")
    parser.add_argument("--set", default="test_retrieval", help="the retrieval set's name")
    args = parser.parse_args()
    rows = defaultdict(list)
    for path in sorted(glob.glob(os.path.join(args.runs, "*.json"))):
        match = re.match(r"(.+)-lr([^-]+)-s(\d+)\.json$", os.path.basename(path))
        with open(path) as handle:
            run = json.load(handle)
        metrics = run["test"].get("metrics", {}).get(args.set)
        if match is None or metrics is None:
            continue  # a run from before the retrieval group
        rows[(run["name"], match.group(2))].append(metrics)
        wise = run.get("wise", {}).get("0.5", {}).get("metrics", {}).get(args.set)
        if wise is not None:
            rows[(run["name"] + " + WiSE-FT (α=0.5)", match.group(2))].append(wise)
    header = ["method", "lr", "seeds", *[m.replace("image2text", "i→t").replace("text2image", "t→i") for m in METRICS]]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for (name, lr), runs in rows.items():
        cells = []
        for metric in METRICS:
            values = [100 * run[metric] for run in runs]
            spread = f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else ""
            cells.append(f"{statistics.mean(values):.1f}{spread}")
        print(f"| {name} | {lr} | {len(runs)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
