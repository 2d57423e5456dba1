"""`anchorclip retrieve`: image-caption anchors (the set behind ARF's L_pairs) retrieved from a pool for the
downstream classes.

    anchorclip retrieve --pool pixparse/cc3m-wds --model_name_or_path openai/clip-vit-base-patch16 \\
        --finetune_dataset imagenet-1k --output_dir anchors/cc3m-imagenet --k_per_class 100
    accelerate launch -m anchorclip retrieve ...        # several GPUs embed the pool, one share each

The options are the fields of `RetrievalArguments` (see `anchorclip.anchors.pool.job` and docs/retrieval.md).
"""

from __future__ import annotations

import logging
import sys

from transformers import HfArgumentParser

from anchorclip.anchors import RetrievalArguments, retrieve_anchors
from anchorclip.cli import plug_in_miniworld
from anchorclip.distributed import check_same_command, launch_accelerator

__all__ = ["RetrievalArguments", "main", "parse_args"]

plug_in_miniworld()  # `miniworld:` specs in --leakage_sets
DESCRIPTION = "Retrieve image-caption anchors from a pool for the downstream classes."


def parse_args(argv: list[str] | None = None) -> RetrievalArguments:
    parser = HfArgumentParser(RetrievalArguments, prog="anchorclip retrieve", description=DESCRIPTION)
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    if (args.pool is None) == (args.pool_embeddings is None):
        parser.error("pass one of --pool and --pool_embeddings")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    # The command owns its processes: it embeds in the launcher's mixed precision, on gloo where there is no GPU.
    accelerator = launch_accelerator()
    check_same_command(sys.argv[1:] if argv is None else argv)
    retrieve_anchors(args, accelerator=accelerator)
    return 0


if __name__ == "__main__":
    sys.exit(main())
