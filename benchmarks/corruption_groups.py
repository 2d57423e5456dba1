"""The miniworld corruption suite split in two: the corruptions that resemble what the world's renderer does to
its domain-shift styles (it blurs paintings and pixelates pixel art: the four blurs and pixelate) and the other
ten. Read from robustness.py result files; nothing is trained or evaluated again.

    python benchmarks/corruption_groups.py docs/results/corruptions_3seeds.json \
        docs/results/corruptions_jsd_3seeds.json --output docs/results/corruptions_groups

The grouping follows the renderer (anchorclip/miniworld/render.py), not the results: JPEG, where ARF also trails
FLYP, is in "other".
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys

RENDERER_LIKE = ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur", "pixelate")


def group_of(set_name: str) -> str | None:
    """ "renderer-like" or "other" for a corruption cell `<split>-<corruption>-<severity>`; None for any other set."""
    if set_name.count("-") != 2:
        return None
    return "renderer-like" if set_name.split("-")[1] in RENDERER_LIKE else "other"


def group_means(sets: dict[str, dict]) -> dict[str, list[float]]:
    """Per seed, the mean top-1 over the cells `<split>-<corruption>-<severity>` of each group."""
    cells = {name: values["values"] for name, values in sets.items() if group_of(name)}
    seeds = len(next(iter(cells.values())))
    groups = {
        "renderer-like": [v for name, v in cells.items() if group_of(name) == "renderer-like"],
        "other": [v for name, v in cells.items() if group_of(name) == "other"],
        "all": list(cells.values()),
    }
    return {group: [statistics.mean(v[i] for v in rows) for i in range(seeds)] for group, rows in groups.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="robustness.py result files (.json) with a corruption suite")
    parser.add_argument("--output", required=True, help="writes OUTPUT.md and OUTPUT.json")
    args = parser.parse_args()
    command = "python benchmarks/corruption_groups.py " + shlex.join(sys.argv[1:])
    report: dict = {"command": command, "renderer_like": list(RENDERER_LIKE), "methods": {}}
    lines = [
        "# The corruption suite in two groups: like the world's renderer, and the rest (mean ± sample std over seeds)",
        "",
        f"Command: `{command}`",
        "",
        f"Renderer-like: {', '.join(RENDERER_LIKE)} (25 cells); other: the remaining 10 corruptions (50 cells).",
        "",
        "| results file | method | renderer-like | other | all 15 |",
        "|---|---|---|---|---|",
    ]
    for path in args.results:
        with open(path) as file:
            methods = json.load(file)["methods"]
        for method, row in methods.items():
            means = group_means(row["sets"])
            report["methods"][f"{path}: {method}"] = means
            cells = [
                f"{statistics.mean(v):.1f} ± {statistics.stdev(v) if len(v) > 1 else 0.0:.1f}" for v in means.values()
            ]
            lines.append(f"| {path.rsplit('/', 1)[-1]} | {method} | " + " | ".join(cells) + " |")
    with open(args.output + ".json", "w") as file:
        json.dump(report, file, indent=1)
    with open(args.output + ".md", "w") as file:
        file.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
