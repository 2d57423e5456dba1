"""Median training-step time of ARF vs FLYP at equal finetune batch: same process, model and optimizer.

    python benchmarks/step_time.py                       # tiny config, CPU smoke run
    python benchmarks/step_time.py --config vit-b-16 --batch 128 --bf16   # on a GPU

Each variant runs `AnchorCLIPTrainer.compute_loss` + backward + AdamW step on synthetic batches shaped
exactly as the trainer's collator builds them. The ratio ARF / FLYP is the cost of the anchors. Two
variants are also timed as their batches were encoded before the model took `text_groups` ("one padded
text pass": every prompt padded to the longest caption), to measure what encoding by width saves, and the
budget setting with anchor distillation, both ways: augmented pair images (`--lambda_distill`: a frozen
image-tower pass over the pair images every step) and un-augmented ones (`--augment_pairs false`: the targets,
computed once before training, come with the batch).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch
from common import build_model, machine, synthetic_batch
from tokenizers import Tokenizer, models
from transformers import CLIPImageProcessor, CLIPProcessor, PreTrainedTokenizerFast

from anchorclip import AnchorCLIPTrainer, AnchorTrainingArguments

VARIANTS = {  # name: (method, captions, pairs per image)
    "flyp": ("flyp", False, 0),
    "arf, captions only": ("arf", True, 0),
    "arf, 1 pair/image": ("arf", True, 1),
    "arf, 2 pairs/image": ("arf", True, 2),
    # Cheaper anchors (fractional pairs: one pair for every 2 or 4 finetune images), with and without captions.
    "arf, 0.5 pair/image": ("arf", True, 0.5),
    "arf, 0.25 pair/image": ("arf", True, 0.25),
    "arf, no captions, 1 pair/image": ("arf", False, 1),
    "arf, no captions, 0.5 pair/image": ("arf", False, 0.5),
    "arf, no captions, 0.25 pair/image": ("arf", False, 0.25),
}
# The same batches encoded as before `text_groups`: every prompt padded to the longest caption, one text pass.
PADDED_TOGETHER = ("arf, 1 pair/image", "arf, no captions, 0.25 pair/image")
# ... and with anchor distillation (`--lambda_distill`): a frozen image-tower pass over the pair images, or, with
# un-augmented pair images, their precomputed targets in the batch.
DISTILLED = ("arf, no captions, 0.25 pair/image",)
UNAUGMENTED = " + anchor distillation, un-augmented pairs (targets precomputed)"


def _trainer(
    model, method: str, captions: bool, pairs: float, bf16: bool, distill: bool, augment_pairs: bool = True
) -> AnchorCLIPTrainer:
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0}, "[UNK]")))
    args = AnchorTrainingArguments(
        output_dir=tempfile.mkdtemp(), method=method, lambda_caption=1.0 if captions else 0.0,
        lambda_pairs=1.0 if pairs else 0.0, pair_anchors_per_image=pairs or 1, report_to="none", bf16=bf16,
        use_cpu=not torch.cuda.is_available(), per_device_train_batch_size=4,  # only checked (1/m divides it)
        lambda_distill=10.0 if distill else 0.0, augment_pairs=augment_pairs,
    )  # fmt: skip
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tokenizer)
    return AnchorCLIPTrainer(model=model, args=args, processing_class=processor)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny", choices=["tiny", "vit-b-16"])
    parser.add_argument("--batch", type=int, default=32, help="Finetune images per step.")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--output", default="docs/results/step_time.json")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model, spec = build_model(args.config)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    variants = (
        dict(VARIANTS)
        | {f"{name}, one padded text pass": VARIANTS[name] for name in PADDED_TOGETHER}
        | {f"{name} + anchor distillation": VARIANTS[name] for name in DISTILLED}
        | {name + UNAUGMENTED: VARIANTS[name] for name in DISTILLED}
    )
    steps = {}
    for name, (method, captions, pairs) in variants.items():
        unaugmented = name.endswith(UNAUGMENTED)
        distill = unaugmented or name.endswith("anchor distillation")
        trainer = _trainer(model, method, captions, pairs, args.bf16, distill, augment_pairs=not unaugmented)
        batch = synthetic_batch(spec, args.batch, pairs, captions, device)
        if name.endswith("one padded text pass"):
            del batch["text_groups"]
        if unaugmented:  # as the collator brings them: one stored target per pair image
            targets = torch.randn(batch["num_pairs"], model.config.projection_dim, device=device)
            batch["pair_targets"] = torch.nn.functional.normalize(targets, dim=-1)

        def step(trainer=trainer, batch=batch):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
                loss = trainer.compute_loss(model, dict(batch))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        steps[name] = step
        for _ in range(args.warmup):
            step()
    # Round-robin: round r times one step of every variant, so that a change in the machine's load (a shared
    # CI machine) slows all variants alike and the ratios stay meaningful.
    times = {name: [] for name in steps}
    for _ in range(args.steps):
        for name, step in steps.items():
            sync()
            start = time.perf_counter()
            step()
            sync()
            times[name].append(time.perf_counter() - start)
    results = {}
    for name, (_, _, pairs) in variants.items():
        median = statistics.median(times[name])
        results[name] = {
            "median_s": median,
            "images_per_s": args.batch / median,
            "pair_batch": int(args.batch * pairs),
        }
        print(f"{name:<100} median {median * 1000:8.1f} ms   {args.batch / median:8.1f} finetune images/s")
    base = results["flyp"]["median_s"]
    for entry in results.values():
        entry["ratio_to_flyp"] = entry["median_s"] / base
    report = {
        "config": args.config,
        "batch": args.batch,
        "steps": args.steps,
        "bf16": args.bf16,
        "machine": machine(),
        "torch": torch.__version__,
        "variants": results,
    }
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as handle:
        json.dump(report, handle, indent=2)
    rows = [
        f"| {name} | {entry['pair_batch']} | {entry['median_s'] * 1000:.1f} | {entry['images_per_s']:.1f} | "
        f"{entry['ratio_to_flyp']:.2f}× |"
        for name, entry in results.items()
    ]
    with open(args.output.removesuffix(".json") + ".md", "w") as handle:
        handle.write(
            f"# ARF vs FLYP step time\n\nCommand: `python benchmarks/step_time.py {' '.join(sys.argv[1:])}`  \n"
            f"Machine: {report['machine']}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}. Config "
            f"`{args.config}`, finetune batch {args.batch}, median of {args.steps} steps after {args.warmup} "
            f"warm-up steps (forward, backward and AdamW step), variants timed round-robin.\n\n"
            "| variant | pair-anchor batch | median step ms | finetune images/s | step time / FLYP |\n"
            "|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
        )
    print(
        f"\nARF (1 pair/image) / FLYP step time: {results['arf, 1 pair/image']['ratio_to_flyp']:.2f}x "
        f"(target <= 1.6x); written to {args.output}"
    )


if __name__ == "__main__":
    main()
