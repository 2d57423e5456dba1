"""`anchorclip caption`: caption an image dataset with any HF captioning model (text-compensated anchors for ARF).

    anchorclip caption --dataset_name path/to/imagenet_train --captioner Salesforce/blip2-opt-2.7b \
        --output_dir anchors/imagenet-blip2 --batch_size 64
    anchorclip caption caption.yaml                     # the same options from a YAML / JSON file
    accelerate launch -m anchorclip caption ...          # several GPUs, one share of the rows each

The options are the fields of `CaptionArguments` (snake_case; `--output-dir`, `--batch-size`, ... work too).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from transformers import HfArgumentParser

from anchorclip.anchors.captions.job import CaptionArguments, run_captioning
from anchorclip.distributed import check_same_command, process_state

__all__ = ["CaptionArguments", "main", "parse_args"]

DESCRIPTION = "Caption an image dataset with any HF captioning model (text-compensated anchors for ARF)."


def parse_args(argv: Sequence[str] | None = None) -> CaptionArguments:
    argv = list(sys.argv[1:] if argv is None else argv)
    # transformers types dataclass_types as NewType(Any), which no class matches
    parser = HfArgumentParser(CaptionArguments, prog="anchorclip caption", description=DESCRIPTION)  # type: ignore[arg-type]
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    is_main = process_state().is_main_process
    check_same_command(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO if is_main else logging.WARNING
    )
    run_captioning(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
