"""Compare two robustness tables (JSON written by benchmarks/robustness.py): the change per method and group.

    python benchmarks/robustness_diff.py OLD.json NEW.json     # e.g. OLD from `git show REV:docs/results/...`

Prints a Markdown table: for every method in both files, each group's mean ± std over seeds in OLD and NEW
and the difference of the means. Methods in only one file are listed below the table.
"""

from __future__ import annotations

import argparse
import json

GROUPS = {"id": "ID", "domain_shift": "domain shift", "zero_shot": "zero-shot"}


def diff_table(old: dict, new: dict) -> str:
    header = ["method"] + [f"{title} {when}" for title in GROUPS.values() for when in ("before", "after", "Δ")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, after in new["methods"].items():
        before = old["methods"].get(name)
        if before is None:
            continue
        cells = []
        for group in GROUPS:
            a, b = before[group], after[group]
            cells += [
                f"{a['mean']:.1f} ± {a['std']:.1f}",
                f"{b['mean']:.1f} ± {b['std']:.1f}",
                f"{b['mean'] - a['mean']:+.1f}",
            ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    only = sorted(set(old["methods"]) ^ set(new["methods"]))
    if only:
        lines += ["", "In one file only (not compared): " + ", ".join(only)]
    chosen = f"learning rates chosen: before {old.get('chosen_lr')}, after {new.get('chosen_lr')}"
    return "\n".join(lines + ["", chosen])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old")
    parser.add_argument("new")
    args = parser.parse_args()
    with open(args.old) as old, open(args.new) as new:
        print(diff_table(json.load(old), json.load(new)))


if __name__ == "__main__":
    main()
