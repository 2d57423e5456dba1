"""`anchorclip caption`: caption an image dataset with any HF captioning model (text-compensated anchors for ARF).

    anchorclip caption --dataset_name path/to/imagenet_train --captioner Salesforce/blip2-opt-2.7b \
        --output_dir anchors/imagenet-blip2 --batch_size 64
    anchorclip caption caption.yaml                     # the same options from a YAML / JSON file
    accelerate launch -m anchorclip caption ...          # several GPUs, one share of the rows each

The options are the fields of `CaptionArguments` (snake_case; `--output-dir`, `--batch-size`, ... work too).
Renamed after 0.1.0: `--dataset` is now `--dataset_name`, `--split` `--dataset_split`, `--model` `--captioner`; the old
names still work for one release, with a `FutureWarning`.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Sequence

from transformers import HfArgumentParser

from anchorclip.anchors.caption_job import CaptionArguments, run_captioning
from anchorclip.anchors.shards import process_state

__all__ = ["CaptionArguments", "main", "parse_args"]

DESCRIPTION = "Caption an image dataset with any HF captioning model (text-compensated anchors for ARF)."
# Old flag -> new flag, for the flags whose name (not only its spelling) changed.
RENAMED_FLAGS = {"--dataset": "--dataset_name", "--split": "--dataset_split", "--model": "--captioner"}


def parse_args(argv: Sequence[str] | None = None) -> CaptionArguments:
    argv = list(sys.argv[1:] if argv is None else argv)
    for word in argv:
        old = word.split("=", 1)[0]
        if old in RENAMED_FLAGS:
            warnings.warn(
                f"anchorclip caption: {old} is deprecated and will be removed in the next release; "
                f"use {RENAMED_FLAGS[old]}.",
                FutureWarning,
                stacklevel=2,
            )
    parser = HfArgumentParser(CaptionArguments, prog="anchorclip caption", description=DESCRIPTION)
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    is_main = process_state().is_main_process
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO if is_main else logging.WARNING
    )
    run_captioning(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
