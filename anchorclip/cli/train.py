"""`anchorclip train`: finetune CLIP with ARF or a baseline, then evaluate zero-shot robustness.

The installed form of `examples/run_anchor_ft.py` (the example runs this `main`):

    anchorclip train                                               # the built-in miniature world, offline
    accelerate launch -m anchorclip train --model_name_or_path openai/clip-vit-base-patch16 \
        --dataset_name imagenet-1k --caption_anchors anchors/imagenet-blip2 --pair_anchors anchors/cc3m \
        --eval_suite imagenet-ood --method arf --output_dir out/

With no dataset arguments the run uses `anchorclip.miniworld`: the shipped mini-CLIP, the finetune split
captioned by the shipped mini-captioner, pair anchors retrieved from the world's pool, and its evaluation
suite. Anchors that are built (not given) are cached under `<output_dir>/anchors/`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import datasets
import transformers
from accelerate import PartialState
from transformers import CLIPProcessor, HfArgumentParser

from anchorclip import AnchorCLIPModel, AnchorCLIPTrainer, AnchorTrainingArguments
from anchorclip.anchors.pool.args import prefixed_arguments, retrieval_arguments
from anchorclip.checkpoints import checkpoint_to_resume, choose_checkpoint_writers
from anchorclip.cli import plug_in_miniworld
from anchorclip.cli._steps import EvalSetArguments, eval_sets_from_args, hardware, wise_sweep
from anchorclip.data import LABEL_COLUMNS, class_names_from_features, find_column, load_dataset_any
from anchorclip.distributed import check_same_command
from anchorclip.evaluation.corruption_sets import add_corruption_reports
from anchorclip.evaluation.formats import class_names_from_file
from anchorclip.lora import save_merged
from anchorclip.results import format_results_table, result_rows, summarize, write_results
from anchorclip.train_data import check_steps_will_train

logger = logging.getLogger(__name__)
RETRIEVAL_PREFIX = "retrieval_"
plug_in_miniworld()  # `miniworld:` specs in --eval_datasets and --retrieval_leakage_sets, as in the default job


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Any CLIP checkpoint (Hub id or folder). Default: the shipped mini-CLIP."}
    )
    attn_implementation: str | None = field(
        default=None, metadata={"help": "Attention kernel: sdpa (default in transformers), eager, flash_attention_2."}
    )


# In-process `anchorclip retrieve`: `--retrieval_rule`, `--retrieval_k_per_class`, ... are `RetrievalArguments` fields,
# with the command's defaults and help.
RetrievalFlags = prefixed_arguments(RETRIEVAL_PREFIX)


@dataclass
class DataArguments(EvalSetArguments, RetrievalFlags):  # type: ignore[misc,valid-type]  # a class built at run time
    dataset_name: str | None = field(
        default=None, metadata={"help": "Finetune set: Hub id, image folder or save_to_disk folder ('spec:split')."}
    )
    dataset_split: str = field(default="train")
    max_train_samples: int | None = field(default=None)
    class_names: list[str] | None = field(
        default=None, metadata={"help": "Class names in label order, if the label column is not a ClassLabel."}
    )
    class_names_file: str | None = field(
        default=None, metadata={"help": "A text file of class names, one a line in label order (or wnid name)."}
    )
    caption_anchors: str | None = field(
        default=None, metadata={"help": "Captions keyed by finetune row id (output of `anchorclip caption`)."}
    )
    captioner: str | None = field(
        default=None, metadata={"help": "Build caption anchors with this HF captioning model if none are given."}
    )
    caption_batch_size: int = field(default=64)
    pair_anchors: str | None = field(
        default=None, metadata={"help": "Retrieved image-caption pairs (output of `anchorclip retrieve`)."}
    )
    pair_pool: str | None = field(
        default=None, metadata={"help": "Build pair anchors by retrieval from this image-caption pool if none given."}
    )
    miniworld_fraction: float = field(
        default=1.0, metadata={"help": "Default world only: scale every miniworld split (e.g. 0.02 for a smoke run)."}
    )
    auto_resume: bool = field(
        default=True, metadata={"help": "Continue from the last checkpoint in output_dir when there is one."}
    )
    wise_alphas: list[float] = field(
        default_factory=list, metadata={"help": "Also evaluate WiSE-FT interpolations at these alphas."}
    )


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, training_args = parse_args(argv)
    _setup_logging(training_args)
    # The launch's processes as the Trainer will see them (its --use_cpu, --ddp_timeout, --ddp_backend). Only the
    # process group: no AcceleratorState exists before the Trainer's, so its mixed precision (--bf16) can be set.
    _ = training_args.device
    state = PartialState()
    check_same_command(sys.argv[1:] if argv is None else argv)
    choose_checkpoint_writers(training_args)

    # 1. The pretrained model: the zero-shot start point of every method.
    model = AnchorCLIPModel.from_pretrained(
        model_args.model_name_or_path, attn_implementation=model_args.attn_implementation
    )
    processor = CLIPProcessor.from_pretrained(model_args.model_name_or_path)

    # 2. The finetune set, with its class names (zero-shot evaluation has none).
    train, class_names = None, None
    if training_args.method != "zeroshot":
        train = _load_finetune_set(data_args, training_args)
        label_column = find_column(train, training_args.label_column, LABEL_COLUMNS, "label")
        class_names = _class_names(data_args, train, label_column)
        check_steps_will_train(training_args, len(train))  # before minutes of captioning and retrieval, not after

    # 3. Anchors: text-compensated (captions of the finetune images) and retrieved image-text pairs.
    provenance, captions = {}, None
    if training_args.uses_captions:
        captions, provenance["caption_anchors"] = _caption_anchors(data_args, training_args, train)
    pairs = None
    if training_args.uses_pairs:
        pairs, provenance["pair_anchors"] = _pair_anchors(class_names, model_args, data_args, training_args, state)

    # 4. Evaluation sets: --eval_datasets and --eval_suite (the default world: its own suite).
    eval_sets = eval_sets_from_args(data_args, miniworld_size=_miniworld_size("test_photo", data_args))

    trainer = AnchorCLIPTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=eval_sets or None,
        processing_class=processor,
        class_names=class_names,
        pair_anchors=pairs,
        caption_anchors=captions,  # joined to `train` by row id inside the trainer
    )

    # 5. Zero-shot start, finetune, evaluate.
    results = {"method": training_args.method, "provenance": provenance}
    if eval_sets:
        results["zeroshot"] = summarize(trainer.evaluate(metric_key_prefix="zeroshot"), "zeroshot")
    start = time.time()
    if training_args.method != "zeroshot":
        checkpoint = checkpoint_to_resume(training_args, data_args.auto_resume)
        train_result = trainer.train(resume_from_checkpoint=checkpoint)
        results["train"] = train_result.metrics
        results["train_seconds"] = round(time.time() - start, 1)
        # With --push_to_hub, the push happens once at the end (step 7), when the card can carry the results.
        trainer.save_model(_internal_call=training_args.push_to_hub)
        trainer.save_state()
        if training_args.lora_r > 0 and state.is_main_process:  # LoRA: adapters above, merged CLIP checkpoint here
            save_merged(trainer.model, os.path.join(training_args.output_dir, "merged"), processor)
    if eval_sets:
        results["eval_groups"] = {name: eval_set.group for name, eval_set in eval_sets.items()}
        results["finetuned"] = summarize(trainer.evaluate())
        if data_args.wise_alphas:
            results["wise"] = wise_sweep(trainer, model_args.model_name_or_path, data_args.wise_alphas)

    # 6. Report.
    add_corruption_reports(results, data_args)  # mean / per-corruption top-1, mCE (--eval_corruption_reference)
    if state.is_main_process:
        results["hardware"] = {**hardware(), "num_processes": state.num_processes}
        results["args"] = {
            "model": asdict(model_args),
            "data": asdict(data_args),
            "training": {k: v for k, v in training_args.to_dict().items() if "token" not in k},
        }
        write_results(results, training_args.output_dir)
        saved = "results.json and provenance"
        if training_args.method != "zeroshot":  # the model card (README.md) beside the saved model, as run_clip.py
            trainer.create_model_card(results=results)
            saved = "the model, its model card (README.md), " + saved
        if eval_sets:
            print("\n" + format_results_table(result_rows(results)))
        print(f"\nSaved {saved} to {training_args.output_dir}")

    # 7. Hub: a plain CLIP checkpoint + model card; with HF_HUB_OFFLINE=1 only <output_dir>/hub_upload/. A failed
    # push raises (exit status 1): the results above are saved first.
    if training_args.push_to_hub:
        trainer.push_to_hub(results=results)
    return results


# ------------------------------------------------------------------ steps


def _setup_logging(training_args) -> None:
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    level = training_args.get_process_log_level()
    logger.setLevel(level)
    logging.getLogger("anchorclip").setLevel(level)
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)


def parse_args(argv: list[str] | None = None):
    """`(model_args, data_args, training_args)`. Defaults live in the parser (`set_defaults`), so every spelling
    of a flag (`--output_dir`, `--output-dir`, `--output_dir=...`) overrides them alike."""
    # transformers types dataclass_types as NewType(Any), which no class matches
    parser = HfArgumentParser((ModelArguments, DataArguments, AnchorTrainingArguments))  # type: ignore[arg-type]
    parser.set_defaults(output_dir=DEFAULT_OUTPUT_DIR)
    argv = sys.argv[1:] if argv is None else list(argv)
    # A first parse only decides whether this is the default world; its preset then becomes the parser's defaults.
    first, _ = parser.parse_known_args(argv)
    if first.dataset_name is None:
        parser.set_defaults(**miniworld_preset(first))
    return parser.parse_args_into_dataclasses(args=argv)


DEFAULT_OUTPUT_DIR = "outputs/run_anchor_ft"  # the example's name: `anchorclip train` and the example are one job


def miniworld_preset(given) -> dict:
    """Defaults for the built-in miniature world (see anchorclip.miniworld); any flag given still wins.

    `given` is the first parse of the command line: the anchor sources depend on which anchors were given.
    """
    from anchorclip import miniworld
    from anchorclip.miniworld.prompts import SHAPE_TEMPLATES

    preset = dict(
        model_name_or_path=miniworld.MINICLIP_PATH,
        # Every miniworld image is a distinct rendering, but the mini-CLIP embeds same-class images at cosine
        # > 0.95: embedding-space de-duplication would discard most genuine anchors.
        retrieval_dedup_threshold=None,
        # The mini-CLIP's word-level vocabulary covers the world's own prompts, not OpenAI's 80 templates.
        retrieval_templates=["photo"] if given.retrieval_query_mode == "ensemble" else list(SHAPE_TEMPLATES),
        # 600 pairs per class: the pool's classes are few and the anchors plentiful.
        retrieval_k_per_class=600,
        # Training defaults that fit the world (chosen on the finetune_val split; see docs/results).
        max_steps=200,
        per_device_train_batch_size=128,
        per_device_eval_batch_size=256,
        learning_rate=1e-3,
        warmup_steps=20,
        weight_decay=0.1,
        lr_scheduler_type="cosine",
        logging_steps=20,
        save_steps=100,
        eval_templates=list(SHAPE_TEMPLATES),
        dataloader_num_workers=2,
        report_to=[],
    )
    if not given.eval_datasets and given.eval_suite is None:
        preset["eval_suite"] = "miniworld"
    if given.caption_anchors is None:
        preset["captioner"] = miniworld.MINICAPTIONER_PATH
    if given.pair_anchors is None:
        preset["pair_pool"] = "miniworld:pool"
    return preset


def _load_finetune_set(data_args, training_args):
    if data_args.dataset_name is None:
        from anchorclip.miniworld import load_miniworld_split

        # The finetune set is labels only: its ground-truth captions are kept aside as an "oracle captioner".
        train = load_miniworld_split("finetune", size=_miniworld_size("finetune", data_args))
        train = train.rename_column("caption", "oracle_caption")
    else:
        # Labels given as names in a CSV / JSON file are numbered in the order of --class_names or of a
        # --class_names_file list (not a wnid mapping), and checked against it.
        names = data_args.class_names
        if names is None and data_args.class_names_file:
            with contextlib.suppress(ValueError):  # a mapping needs the label names: applied in _class_names
                names = class_names_from_file(data_args.class_names_file)
        columns = {"image_column": training_args.image_column, "label_column": training_args.label_column}
        train = load_dataset_any(data_args.dataset_name, split=data_args.dataset_split, class_names=names, **columns)
    if data_args.max_train_samples is not None:
        train = train.select(range(min(len(train), data_args.max_train_samples)))
    return train


def _miniworld_size(split: str, data_args) -> int | None:
    from anchorclip.miniworld import SPLITS

    if data_args.miniworld_fraction == 1.0:
        return None
    return max(8, round(SPLITS[split].size * data_args.miniworld_fraction))


def _class_names(data_args, train, label_column) -> list[str]:
    if data_args.class_names and data_args.class_names_file:
        raise ValueError("Give the class names once: --class_names or --class_names_file.")
    if data_args.class_names:  # a list: names such as "tench, Tinca tinca" keep their commas
        return list(data_args.class_names)
    names = class_names_from_features(train, label_column)
    if data_args.class_names_file:
        return class_names_from_file(data_args.class_names_file, names)
    if not names:
        raise ValueError(
            f"Column {label_column!r} is not a ClassLabel: pass --class_names cat dog ... or --class_names_file FILE."
        )
    return names


# In-process anchors on N processes: every process calls the builders, which split the work and own all the
# barriers (none is wrapped in `main_process_first`, whose barriers would pair with theirs on the other ranks);
# every process reads the results only once the builder has returned, i.e. after its final barrier.


def _caption_anchors(data_args, training_args, train):
    """The captions table (keyed by row id, see `anchorclip caption`) and its provenance."""
    if data_args.caption_anchors is not None:
        captions = load_dataset_any(data_args.caption_anchors, split=data_args.dataset_split)
        return captions, {"source": data_args.caption_anchors}
    if data_args.captioner is None:
        raise ValueError("ARF with lambda_caption > 0 needs --caption_anchors or --captioner (or lambda_caption 0).")
    from anchorclip.anchors.captions.job import CaptionArguments, run_captioning

    output = os.path.join(training_args.output_dir, "anchors", "captions")
    caption_args = CaptionArguments(  # the finetune set is passed loaded (and subsampled): no dataset_name
        captioner=data_args.captioner,
        output_dir=output,
        batch_size=data_args.caption_batch_size,
        num_workers=training_args.dataloader_num_workers,
        progress=training_args.local_process_index == 0,
    )
    captions = run_captioning(caption_args, train)  # resumes from (and checks) the chunks left under `output`
    with open(os.path.join(output, "anchorclip_provenance.json")) as handle:
        return captions, json.load(handle)


def _pair_anchors(class_names, model_args, data_args, training_args, state):
    if data_args.pair_anchors is not None:
        return load_dataset_any(data_args.pair_anchors, split="train"), {"source": data_args.pair_anchors}
    if data_args.pair_pool is None:
        raise ValueError("ARF with lambda_pairs > 0 needs --pair_anchors or --pair_pool (or lambda_pairs 0).")
    from anchorclip.anchors import retrieve_anchors

    pool = None  # a spec, loaded by `retrieve_anchors` as `anchorclip retrieve --pool` loads it
    output = os.path.join(training_args.output_dir, "anchors", "pairs")
    args = _retrieval_args(model_args, data_args, output)
    if data_args.pair_pool == "miniworld:pool":
        from anchorclip.miniworld import load_miniworld_split

        pool = load_miniworld_split("pool", size=_miniworld_size("pool", data_args))
        args.pool, args.pool_id = None, f"miniworld-pool-{len(pool)}"
    # Anchors an earlier (or interrupted) run built are reused once checked against these settings.
    anchors = retrieve_anchors(args, pool, class_names, reuse=True)
    with open(os.path.join(output, "anchorclip_provenance.json")) as handle:
        return anchors, json.load(handle)


def _retrieval_args(model_args, data_args, output: str):
    """The `anchorclip retrieve` job that `--pair_pool` and the `--retrieval_*` flags stand for: the command's
    defaults for every setting that has no train flag, so both build (and record) the same anchors."""
    return retrieval_arguments(
        data_args,
        RETRIEVAL_PREFIX,
        model_name_or_path=model_args.model_name_or_path,
        output_dir=output,
        pool=data_args.pair_pool,
    )


if __name__ == "__main__":
    main()
