"""Trainable parameters and peak memory of one ARF training step: LoRA vs full finetune, same run.

    python benchmarks/lora_memory.py                                 # tiny config, CPU
    python benchmarks/lora_memory.py --config vit-b-16 --batch 64 --bf16   # on a GPU

Every variant runs in its own fresh subprocess (so peaks do not leak from one to the next) and performs the
same ARF step as `benchmarks/step_time.py`: `AnchorCLIPTrainer.compute_loss` (L_cls + L_caption + L_pairs) +
backward + AdamW step, on a synthetic batch shaped as the trainer's collator builds it. Peak memory:

* GPU: `torch.cuda.max_memory_allocated()` over the measured steps, minus the memory held before the first
  step (the model weights), i.e. what training adds: activations, gradients, optimizer state.
* CPU: peak resident set size (`resource.getrusage(...).ru_maxrss`) minus the RSS before the first step.

Also reported: the exact bytes of gradients + AdamW state (2 fp32 moments) of the trainable parameters.
Results go to `docs/results/lora.json` and `docs/results/lora.md`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile

import torch

VARIANTS = {  # name: LoRA rank (0 = full finetune)
    "full finetune": 0,
    "LoRA r=8": 8,
    "LoRA r=16": 16,
}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _child(args) -> dict:
    from common import build_model, median_time, synthetic_batch
    from tokenizers import Tokenizer, models
    from transformers import CLIPImageProcessor, CLIPProcessor, PreTrainedTokenizerFast

    from anchorclip import AnchorCLIPTrainer, AnchorTrainingArguments
    from anchorclip.lora import apply_lora, count_parameters

    torch.set_num_threads(args.threads or torch.get_num_threads())
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model, spec = build_model(args.config)
    if args.rank:
        model = apply_lora(model, r=args.rank)
    model.to(device).train()
    trainable, total = count_parameters(model)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0}, "[UNK]")))
    trainer = AnchorCLIPTrainer(
        model=model,
        args=AnchorTrainingArguments(
            output_dir=tempfile.mkdtemp(),
            method="arf",
            report_to="none",
            bf16=args.bf16,
            pair_anchors_per_image=args.pairs,
            use_cpu=device.type == "cpu",
        ),  # fmt: skip
        processing_class=CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tokenizer),
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    batch = synthetic_batch(spec, args.batch, args.pairs, True, device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            loss = trainer.compute_loss(model, dict(batch))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _rss_bytes()
    median, _ = median_time(step, args.steps, args.warmup, sync)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    trainable_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return {
        "lora_rank": args.rank,
        "trainable_params": trainable,
        "total_params": total,
        "trainable_fraction": trainable / total,
        "grad_and_adamw_state_bytes": 3 * trainable_bytes,
        "peak_training_memory_bytes": peak,
        "median_step_s": median,
    }


def _counts(config: str) -> dict:
    """Exact trainable-parameter counts of each variant for `config` (no training step: cheap for ViT-B/16)."""
    from common import build_model

    from anchorclip.lora import apply_lora, count_parameters

    counts = {}
    for name, rank in VARIANTS.items():
        model, _ = build_model(config)
        trainable, total = count_parameters(apply_lora(model, r=rank) if rank else model)
        counts[name] = {
            "trainable_params": trainable,
            "total_params": total,
            "grad_and_adamw_state_bytes": 12 * trainable,
        }
    return counts


def _machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores visible)"


def _mib(value: int) -> str:
    return f"{value / 2**20:,.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny", choices=["tiny", "vit-b-16"])
    parser.add_argument("--batch", type=int, default=32, help="Finetune images per step (each with a caption).")
    parser.add_argument("--pairs", type=int, default=1, help="Retrieved pairs per finetune image.")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default).")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--output", default="docs/results/lora.json")
    parser.add_argument("--rank", type=int, default=None, help=argparse.SUPPRESS)  # internal: one child variant
    args = parser.parse_args()
    if args.rank is not None:
        print(json.dumps(_child(args)))
        return

    command = "python " + " ".join([os.path.relpath(__file__), *sys.argv[1:]])
    results = {}
    for name, rank in VARIANTS.items():
        child = subprocess.run(
            [sys.executable, __file__, *sys.argv[1:], "--rank", str(rank)], capture_output=True, text=True
        )
        if child.returncode != 0:
            raise RuntimeError(f"{name} failed:\n{child.stderr[-3000:]}")
        results[name] = json.loads(child.stdout.strip().splitlines()[-1])
        entry = results[name]
        print(
            f"{name:<14} trainable {entry['trainable_params']:>12,} ({100 * entry['trainable_fraction']:.2f}%)  "
            f"peak +{_mib(entry['peak_training_memory_bytes'])} MiB  step {1000 * entry['median_step_s']:.0f} ms"
        )
    full = results["full finetune"]
    for entry in results.values():
        entry["peak_memory_ratio_to_full"] = entry["peak_training_memory_bytes"] / full["peak_training_memory_bytes"]
    report = {
        "command": command,
        "date": datetime.date.today().isoformat(),
        "machine": _machine(),
        "torch": torch.__version__,
        "config": args.config,
        "batch": args.batch,
        "pairs_per_image": args.pairs,
        "steps": args.steps,
        "bf16": args.bf16,
        "memory_measure": "cuda max_memory_allocated delta" if torch.cuda.is_available() else "peak RSS delta",
        "variants": results,
        "vit-b-16_counts": _counts("vit-b-16"),
    }
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    with open(args.output, "w") as handle:
        json.dump(report, handle, indent=2)
    rows = [
        "| variant | trainable params | % of all | grads + AdamW state (MiB) | peak training memory (MiB) | "
        "vs full | median step (ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, entry in results.items():
        rows.append(
            f"| {name} | {entry['trainable_params']:,} | {100 * entry['trainable_fraction']:.2f} | "
            f"{_mib(entry['grad_and_adamw_state_bytes'])} | {_mib(entry['peak_training_memory_bytes'])} | "
            f"{entry['peak_memory_ratio_to_full']:.2f}× | {1000 * entry['median_step_s']:.0f} |"
        )
    rows += [
        "",
        "Trainable parameters of the same variants on CLIP ViT-B/16 (exact counts; fp32 grads + AdamW state = "
        "12 bytes per trainable parameter):",
        "",
        "| variant | trainable params | % of all | grads + AdamW state (MiB) |",
        "|---|---|---|---|",
    ]
    for name, entry in report["vit-b-16_counts"].items():
        rows.append(
            f"| {name} | {entry['trainable_params']:,} | {100 * entry['trainable_params'] / entry['total_params']:.2f}"
            f" | {_mib(entry['grad_and_adamw_state_bytes'])} |"
        )
    markdown = "\n".join(
        [
            "# LoRA vs full finetune: one ARF step",
            "",
            f"- Command: `{command}`",
            f"- Machine: {report['machine']}, torch {report['torch']}; date {report['date']}",
            f"- Config `{args.config}`, {args.batch} finetune images + captions + {args.batch * args.pairs} "
            f"retrieved pairs per step, {'bf16' if args.bf16 else 'fp32'}; each variant in a fresh process.",
            f"- Peak memory: {report['memory_measure']} over {args.warmup} warm-up + {args.steps} steps "
            "(what training adds on top of the weights). LoRA on q/k/v/out projections of both towers.",
            *(
                ["- CPU step times on a shared machine are noisy and not comparable; time on a GPU instead."]
                if not torch.cuda.is_available()
                else []
            ),
            "",
            *rows,
            "",
        ]
    )
    with open(os.path.splitext(args.output)[0] + ".md", "w") as handle:
        handle.write(markdown)
    print(f"\nWritten to {args.output} and {os.path.splitext(args.output)[0]}.md")


if __name__ == "__main__":
    main()
