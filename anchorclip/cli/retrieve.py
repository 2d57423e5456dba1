"""`anchorclip retrieve`: image-caption anchors (ARF's L_itp set) retrieved from a pool for the downstream classes.

    anchorclip retrieve --pool pixparse/cc3m-wds --model_name_or_path openai/clip-vit-base-patch16 \\
        --finetune_dataset imagenet-1k --output_dir anchors/cc3m-imagenet --k_per_class 100
    accelerate launch -m anchorclip retrieve ...        # several GPUs embed the pool, one share each

The options are the fields of `RetrievalArguments` (see `anchorclip.anchors.retrieval` and docs/retrieval.md).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import asdict

from anchorclip.anchors.retrieval import RetrievalArguments, retrieve_anchors

__all__ = ["RetrievalArguments", "main"]


def main(argv: list[str] | None = None) -> int:
    from transformers import HfArgumentParser

    parser = HfArgumentParser(RetrievalArguments)
    parser.prog = "anchorclip retrieve"
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    if (args.pool is None) == (args.pool_embeddings is None):
        parser.error("pass one of --pool and --pool_embeddings")
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    class_names = list(args.class_names or [])
    if args.class_names_file:
        with open(args.class_names_file, encoding="utf-8") as file:
            class_names += [line.strip() for line in file if line.strip()]
    templates = args.templates[0] if len(args.templates) == 1 and "{}" not in args.templates[0] else args.templates
    options = asdict(args)
    for name in (
        "pool",
        "model_name_or_path",
        "output_dir",
        "class_names",
        "class_names_file",
        "finetune_dataset",
        "templates",
        "dedup_threshold",
    ):
        options.pop(name)
    from accelerate import Accelerator

    retrieve_anchors(
        args.pool,
        class_names or None,
        args.model_name_or_path,
        args.output_dir,
        finetune=args.finetune_dataset,
        accelerator=Accelerator(),  # the command owns its processes: embed in the launcher's mixed precision
        templates=templates,
        dedup_threshold=args.dedup_threshold if args.dedup_threshold > 0 else None,
        **options,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
