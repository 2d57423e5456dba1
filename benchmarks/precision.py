"""bf16 autocast vs fp32: does ARF train the same? One model init, the same batches, two precisions.

    python benchmarks/precision.py                                   # tiny config, CPU smoke run (seconds)
    python benchmarks/precision.py --config vit-b-16 --batch 256 --ckpt   # on a GPU (the issue's setting)

Both runs start from the same random weights and see the same synthetic ARF batches (finetune images,
1 pair/image, captions; `--num_batches` distinct batches cycled, so the loss actually falls) under AdamW.
Reported: the training loss of every step in each precision, and the relative difference of the loss at
the last step and of the mean of the last 5 steps. Target (issue 10): within 2% after 20 steps.
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch
from common import build_model, make_trainer, markdown_table, run_info, synthetic_batch, write_json


def train(model, spec, args, device, bf16: bool) -> list[float]:
    model = copy.deepcopy(model).to(device).train()
    if args.ckpt:  # recomputation changes memory, not the arithmetic: fp32 ARF at batch 256 needs it on 80 GB
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    trainer = make_trainer(model, "arf", True, 1, bf16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    torch.manual_seed(1)  # the same batches for both precisions
    batches = [synthetic_batch(spec, args.batch, 1, True, device) for _ in range(args.num_batches)]
    losses = []
    for step in range(args.steps):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = trainer.compute_loss(model, dict(batches[step % len(batches)]))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    del model, trainer, optimizer, batches
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="tiny", choices=["tiny", "vit-b-16"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--num_batches", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--ckpt", action="store_true", help="gradient checkpointing of both towers")
    parser.add_argument("--output", default=None, help="JSON report (a .md table is written beside it)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with torch.device(device):
        model, spec = build_model(args.config)
    model = model.cpu()
    fp32 = train(model, spec, args, device, bf16=False)
    bf16 = train(model, spec, args, device, bf16=True)
    last5 = (statistics.mean(fp32[-5:]), statistics.mean(bf16[-5:]))
    report = {
        "run": run_info(),
        "config": args.config,
        "batch": args.batch,
        "steps": args.steps,
        "gradient_checkpointing": args.ckpt,
        "loss_fp32": fp32,
        "loss_bf16": bf16,
        "relative_difference_last_step": abs(bf16[-1] - fp32[-1]) / abs(fp32[-1]),
        "relative_difference_last5_mean": abs(last5[1] - last5[0]) / abs(last5[0]),
    }
    rows = [[step + 1, f"{a:.4f}", f"{b:.4f}", f"{(b - a) / a:+.2%}"] for step, (a, b) in enumerate(zip(fp32, bf16))]
    table = markdown_table(["step", "loss fp32", "loss bf16", "bf16 vs fp32"], rows)
    summary = (
        f"# ARF loss, bf16 autocast vs fp32: `{args.config}`, batch {args.batch} + {args.batch} pairs + captions\n\n"
        f"- machine: {report['run']['machine']}; {report['run']['date']}; command `{report['run']['command']}`\n"
        f"- relative difference at step {args.steps}: {report['relative_difference_last_step']:.2%}; "
        f"of the mean of the last 5 steps: {report['relative_difference_last5_mean']:.2%} (target: within 2%)\n\n"
    )
    print(summary + table)
    if args.output:
        write_json(args.output, report)
        with open(args.output.removesuffix(".json") + ".md", "w") as handle:
            handle.write(summary + table + "\n")


if __name__ == "__main__":
    main()
