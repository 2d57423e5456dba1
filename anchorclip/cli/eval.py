"""`anchorclip eval`: evaluate CLIP checkpoints zero-shot on evaluation sets, no finetune set needed.

    anchorclip eval --model_name_or_path openai/clip-vit-base-patch16 --eval_suite imagenet-ood --output_dir out/
    anchorclip eval --model_name_or_path out/arf --eval_datasets cars@zero_shot=data/wds_cars:test ...
    anchorclip eval --wise_between openai/clip-vit-base-patch16 out/arf --wise_alphas 0.25 0.5 0.75 ...

Prints the table training prints and writes `results.json` + `results.md` under `--output_dir`, in the
schema training writes: with `--wise_between ZERO_SHOT FINETUNED`, `zeroshot`, `finetuned` and `wise` rows,
else one row per checkpoint under `models`. Plain CLIP checkpoints and anchorclip ones (FT / LP-FT linear
heads included: a set over the finetune classes is scored by the head) load alike.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from accelerate import PartialState
from transformers import CLIPProcessor, HfArgumentParser

from ..distributed import check_same_command
from ..evaluation.corruption_sets import add_corruption_reports
from ..evaluation.formats import scaled_size
from ..hub import public_name
from ..modeling_anchorclip import AnchorCLIPModel
from ..results import format_results_table, result_rows, summarize, write_results
from ..templates import resolve_templates
from ..trainer import AnchorCLIPTrainer
from ..training_args import AnchorTrainingArguments
from . import plug_in_miniworld
from ._steps import EvalSetArguments, eval_sets_from_args, hardware, wise_sweep

logger = logging.getLogger(__name__)
plug_in_miniworld()  # `--eval_suite miniworld`, `miniworld:` specs


@dataclass
class EvalArguments(EvalSetArguments):
    model_name_or_path: list[str] = field(
        default_factory=list, metadata={"help": "One or more CLIP checkpoints (Hub ids or folders)."}
    )
    wise_between: list[str] = field(
        default_factory=list, metadata={"help": "ZERO_SHOT FINETUNED: evaluate both and their WiSE-FT blends."}
    )
    wise_alphas: list[float] = field(default_factory=list, metadata={"help": "WiSE-FT alphas (--wise_between)."})
    eval_templates: str = field(
        default="openai_imagenet",
        metadata={"help": "Templates of sets that name none: a set name (simple, openai_imagenet, ...)."},
    )
    per_device_eval_batch_size: int = field(default=256, metadata={"help": "Images per batch and process."})
    dataloader_num_workers: int = field(default=4, metadata={"help": "Image-decoding workers per process."})
    bf16: bool = field(default=False, metadata={"help": "Evaluate in bfloat16 autocast."})
    use_cpu: bool = field(default=False, metadata={"help": "Run on CPU even if a GPU is there (gloo launches)."})
    output_dir: str = field(default="outputs/eval", metadata={"help": "Where results.json and results.md go."})
    miniworld_fraction: float = field(
        default=1.0, metadata={"help": "miniworld suite only: scale each set (e.g. 0.1 for a quick look)."}
    )


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    if bool(args.wise_between) == bool(args.model_name_or_path):
        raise SystemExit("anchorclip eval: give --model_name_or_path M [M ...] or --wise_between ZERO_SHOT FINETUNED.")
    if args.wise_between and len(args.wise_between) != 2:
        raise SystemExit("anchorclip eval: --wise_between takes two checkpoints, ZERO_SHOT FINETUNED.")
    if args.wise_alphas and not args.wise_between:
        raise SystemExit("anchorclip eval: --wise_alphas needs --wise_between ZERO_SHOT FINETUNED.")
    resolve_templates(args.eval_templates)  # an unknown template set fails here, before any model loads
    training_args = AnchorTrainingArguments(
        output_dir=args.output_dir,
        method="zeroshot",
        per_device_eval_batch_size=args.per_device_eval_batch_size,
        dataloader_num_workers=args.dataloader_num_workers,
        eval_templates=args.eval_templates,
        bf16=args.bf16,
        use_cpu=args.use_cpu,
        report_to=[],
    )
    state = PartialState()
    check_same_command(sys.argv[1:] if argv is None else argv)
    size = scaled_size("miniworld:test_photo", args.miniworld_fraction)  # one size for every set of the world
    eval_sets = eval_sets_from_args(args, miniworld_size=size)
    if not eval_sets:
        raise SystemExit("anchorclip eval: no evaluation set; give --eval_suite and/or --eval_datasets.")

    results: dict[str, Any] = {"method": "eval"}
    if args.wise_between:
        zero_shot, finetuned = args.wise_between
        results["method"] = public_name(finetuned)  # the table's label of the finetuned row and its blends
        trainer = _trainer(finetuned, training_args, eval_sets)
        results["finetuned"] = summarize(trainer.evaluate())
        if args.wise_alphas:
            results["wise"] = wise_sweep(trainer, zero_shot, args.wise_alphas)
        trainer = _trainer(zero_shot, training_args, eval_sets)
        results["zeroshot"] = summarize(trainer.evaluate(metric_key_prefix="zeroshot"), "zeroshot")
        results["models"] = {"zero-shot": public_name(zero_shot), "finetuned": public_name(finetuned)}
    else:
        results["evaluated"] = {}
        for name in args.model_name_or_path:
            trainer = _trainer(name, training_args, eval_sets)
            results["evaluated"][public_name(name)] = summarize(trainer.evaluate())
    results["eval_groups"] = {name: eval_set.group for name, eval_set in eval_sets.items()}
    add_corruption_reports(results, args)  # mean / per-corruption top-1, mCE (--eval_corruption_reference)
    if state.is_main_process:
        results["hardware"] = {**hardware(), "num_processes": state.num_processes}
        results["args"] = asdict(args)
        write_results(results, args.output_dir)
        print("\n" + format_results_table(result_rows(results)))
        print(f"\nSaved results.json and results.md to {args.output_dir}")
    return results


def parse_args(argv: list[str] | None = None) -> EvalArguments:
    """Both spellings of each flag (`--output_dir`, `--output-dir`); `anchorclip eval CONFIG.yaml` expands a
    config file into flags first (see `anchorclip.cli`)."""
    parser = HfArgumentParser(EvalArguments)  # type: ignore[arg-type]  # transformers: NewType(Any), matching no class
    return parser.parse_args_into_dataclasses(args=sys.argv[1:] if argv is None else list(argv))[0]


def _trainer(model_name: str, training_args: AnchorTrainingArguments, eval_sets) -> AnchorCLIPTrainer:
    model = AnchorCLIPModel.from_pretrained(model_name)
    processor = CLIPProcessor.from_pretrained(model_name)
    class_names = getattr(model.config, "class_names", None)  # an FT / LP-FT head scores sets over these names
    return AnchorCLIPTrainer(
        model=model, args=training_args, eval_dataset=eval_sets, processing_class=processor, class_names=class_names
    )
