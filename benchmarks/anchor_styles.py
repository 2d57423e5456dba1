"""What `--diversity` (maximal marginal relevance) does to the miniature world's pair anchors.

    python benchmarks/anchor_styles.py --oversample 8 --diversity 0 0.5 0.7 0.9

Retrieves the default job's pair anchors (photo queries, 600 per class, no de-duplication) with each diversity
and prints how many come from each rendition style of the pool and how many show their class's shape. The
style and shape labels are the world's ground truth, read here only to describe the selection: retrieval never
sees them (a real pool has no such labels).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections import Counter

from anchorclip.anchors import RetrievalArguments, retrieve_anchors
from anchorclip.miniworld import MINICLIP_PATH, load_miniworld_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--diversity", type=float, nargs="+", default=[0.0, 0.5, 0.7, 0.9])
    parser.add_argument("--oversample", type=float, default=8.0)
    parser.add_argument("--k_per_class", type=int, default=600)
    args = parser.parse_args()
    class_names = load_miniworld_split("finetune").features["label"].names
    pool = load_miniworld_split("pool")
    styles, shapes = pool.features["style"].names, pool.features["shape"].names
    pool_style, pool_shape = pool["style"], pool["shape"]
    print(f"pool styles: {dict(Counter(styles[s] for s in pool_style))}")
    print("| diversity | anchors | " + " | ".join(styles) + " | class's shape |")
    print("|---" * (len(styles) + 3) + "|")
    with tempfile.TemporaryDirectory() as scratch:
        for diversity in args.diversity:
            settings = RetrievalArguments(
                model_name_or_path=MINICLIP_PATH, output_dir=os.path.join(scratch, str(diversity)),
                templates=["photo"], k_per_class=args.k_per_class, oversample=args.oversample,
                pool_id="miniworld-pool", dedup_threshold=None, diversity=diversity, report_per_class=0,
            )  # fmt: skip
            anchors = retrieve_anchors(settings, pool, class_names)
            rows = anchors["pool_index"]
            counts = Counter(pool_style[row] for row in rows)
            right = sum(shapes[pool_shape[row]] == name for row, name in zip(rows, anchors["class_name"]))
            shares = " | ".join(f"{100 * counts[i] / len(rows):.1f}%" for i in range(len(styles)))
            print(f"| {diversity:g} | {len(rows)} | {shares} | {100 * right / len(rows):.1f}% |", flush=True)


if __name__ == "__main__":
    main()
