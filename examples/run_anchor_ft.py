#!/usr/bin/env python
"""Finetune CLIP with Anchor-based Robust Finetuning (ARF) or a baseline, then evaluate zero-shot robustness.

    accelerate launch examples/run_anchor_ft.py                      # the built-in miniature world, offline
    accelerate launch examples/run_anchor_ft.py \
        --model_name_or_path openai/clip-vit-base-patch16 --dataset_name ILSVRC/imagenet-1k \
        --caption_anchors anchors/imagenet-blip2 --pair_anchors anchors/cc3m-imagenet \
        --eval_suite imagenet-ood --method arf --output_dir out/

The recipe, step by step, is `anchorclip.cli.train.main` (installed as `anchorclip train`, the same job):

1. the pretrained CLIP (`AnchorCLIPModel.from_pretrained`), the zero-shot start of every method;
2. the finetune set and its class names (none for `--method zeroshot`);
3. the anchors: captions of the finetune images (`--caption_anchors`, or built with `--captioner`) and
   image-text pairs retrieved from a pool (`--pair_anchors`, or built from `--pair_pool`), cached under
   `<output_dir>/anchors/`;
4. the evaluation sets (`--eval_suite`, `--eval_datasets NAME@GROUP=SPEC`);
5. `AnchorCLIPTrainer`: zero-shot evaluation, finetuning (resumable), evaluation, WiSE-FT (`--wise_alphas`);
6. results.json, results.md, the model card; 7. with `--push_to_hub`, the Hub.

With no dataset arguments the run uses `anchorclip.miniworld`: the shipped mini-CLIP, the finetune split
captioned by the shipped mini-captioner, pair anchors retrieved from the world's pool, and its evaluation suite.
"""

from anchorclip.cli.train import DataArguments, ModelArguments, main, miniworld_preset, parse_args
from anchorclip.distributed import close_process_group

__all__ = ["DataArguments", "ModelArguments", "main", "miniworld_preset", "parse_args"]

if __name__ == "__main__":
    main()
    close_process_group()  # every process waits for the others, then leaves the gloo/NCCL group cleanly
