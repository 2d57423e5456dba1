"""Training throughput (images/s), peak memory and MFU of FLYP vs ARF (1 pair/image) at equal finetune batch.

    python benchmarks/throughput.py                                  # tiny config, CPU smoke run (< 1 min)
    python benchmarks/throughput.py --variants base,ckpt,compile     # + torch.compile (~1 min per method on CPU)
    python benchmarks/throughput.py --config vit-b-16 --batch 256    # on a GPU: bf16 autocast, fused AdamW
    python benchmarks/throughput.py --config vit-b-16 --batch 256 --variants compile --output ...

Every (method, variant) builds a fresh model from config (random weights, so nothing is downloaded) and
times `AnchorCLIPTrainer.compute_loss` + backward + AdamW step on synthetic batches shaped as the
trainer's collator builds them (see `benchmarks/common.py`). Variants:

    base        SDPA attention; on a GPU bf16 autocast and fused AdamW (`--optim adamw_torch_fused`)
    ckpt        + gradient checkpointing of both towers (`model.gradient_checkpointing_enable()`)
    compile     + `model.compile()` (torch.compile of the whole CLIP model; a failure is caught and reported)
    eager-attn  attention through the eager (matmul + softmax) path instead of SDPA
    fp32        no autocast (full fp32)
    foreach     AdamW with foreach=True instead of fused=True (GPU)
    nosync      the loss math alone, without `compute_loss`'s per-step host syncs (`.item()`, finiteness check)

"finetune images/s" counts the finetune batch only (the number the targets use); "all images/s" also
counts the pair images. MFU = model FLOPs of the step (benchmarks/flops.py: 3 x forward, checkpointing's
re-forward not counted) / step time / the GPU's dense bf16 peak (H100 SXM, H200: 989 TFLOP/s; A100: 312).
On a CPU MFU is n/a. CPU timings on a shared machine are noisy: medians of the timed steps are reported.
"""

from __future__ import annotations

import argparse
import gc
import os
import time
import traceback

import torch
from common import (
    build_model,
    make_trainer,
    markdown_table,
    max_rss_mib,
    median_time,
    run_info,
    synthetic_batch,
    write_json,
)
from flops import arf_flyp_ratio, peak_bf16_tflops, step_flops

METHODS = {"flyp": ("flyp", False, 0), "arf": ("arf", True, 1)}  # name: (method, captions, pairs per image)
VARIANTS = {
    "base": {},
    "ckpt": {"checkpointing": True},
    "compile": {"compile": True},
    "eager-attn": {"attn": "eager"},
    "fp32": {"bf16": False},
    "foreach": {"fused": False},
    "nosync": {"nosync": True},
}
DEFAULT_VARIANTS = {"cpu": "base,ckpt", "cuda": "base,ckpt,eager-attn,compile"}  # CPU compile: ~1 min/method


def run_variant(config: str, method: str, options: dict, batch_size: int, steps: int, warmup: int, device) -> dict:
    method_name, captions, pairs = METHODS[method]
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    with torch.device(device):  # initialise on the GPU: random init of ViT-B/16 on the CPU takes seconds
        model, spec = build_model(config, attn_implementation=options.get("attn", "sdpa"))
    model.to(device).train()
    if options.get("checkpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    trainer = make_trainer(model, method_name, captions, pairs, options["bf16"])
    if options.get("compile"):
        model.compile()  # in place: the module stays an AnchorCLIPModel, so the trainer code is unchanged
    fused = cuda and options.get("fused", True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=fused or None, foreach=None if fused else cuda)
    batch = synthetic_batch(spec, batch_size, pairs, captions, device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=options["bf16"]):
            if options.get("nosync"):
                loss = trainer._contrastive_window_loss(model, dict(batch), 0, 1)[0]
            else:
                loss = trainer.compute_loss(model, dict(batch))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    step()  # the first step: compilation, autotuning, allocator warm-up
    sync()
    first_step_s = time.perf_counter() - start
    median, times = median_time(step, steps, max(warmup - 1, 0), sync)
    flops = step_flops(spec, batch_size, pairs, captions)
    tflops = flops["train_step"] / median / 1e12
    peak = peak_bf16_tflops(torch.cuda.get_device_name() if cuda else None)
    result = {
        "status": "ok",
        "median_step_s": median,
        "step_times_s": [round(t, 5) for t in times],
        "first_step_s": first_step_s,
        "finetune_images_per_s": batch_size / median,
        "all_images_per_s": flops["num_images"] / median,
        "step_tflop": flops["train_step"] / 1e12,
        "achieved_tflops": tflops,
        "mfu": tflops / peak if (peak and options["bf16"]) else None,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "max_rss_mib": None if cuda else max_rss_mib(),
    }
    return result


def _cleanup(device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    torch._dynamo.reset()


def to_markdown(report: dict) -> str:
    info = report["run"]
    lines = [
        f"# Training throughput: FLYP vs ARF (1 pair/image), `{report['config']}`, finetune batch {report['batch']}",
        "",
        f"- command: `{info['command']}`",
        f"- machine: {info['machine']}; date: {info['date']}; torch {info['torch']}, "
        f"transformers {info['transformers']}",
        f"- bf16 autocast: {report['bf16']}; timed steps: {report['steps']} (median), warm-up: {report['warmup']}",
        f"- FLOP-expected ARF/FLYP images/s (compute-bound): {report['expected_arf_over_flyp_images_per_s']:.3f}",
    ]
    if report.get("note"):
        lines.append(f"- **{report['note']}**")
    lines.append("")
    header = ["variant", "method", "finetune img/s", "all img/s", "ms/step", "ARF/FLYP img/s", "TFLOP/s", "MFU",
              "peak mem", "first step s", "status"]  # fmt: skip
    rows = []
    for variant, methods in report["results"].items():
        for method, r in methods.items():
            if r.get("status") != "ok":
                rows.append([variant, method, "", "", "", "", "", "", "", "", r.get("status", "?")])
                continue
            ratio = methods.get("arf", {}).get("finetune_images_per_s")
            base = methods.get("flyp", {}).get("finetune_images_per_s")
            ratio_text = f"{ratio / base:.3f}" if (method == "arf" and ratio and base) else ""
            memory = (f"{r['peak_memory_gib']:.2f} GiB" if r["peak_memory_gib"] is not None
                      else f"RSS {r['max_rss_mib']:.0f} MiB*")  # fmt: skip
            rows.append([
                variant, method, f"{r['finetune_images_per_s']:.1f}", f"{r['all_images_per_s']:.1f}",
                f"{r['median_step_s'] * 1000:.1f}", ratio_text, f"{r['achieved_tflops']:.3g}",
                f"{r['mfu'] * 100:.1f}%" if r["mfu"] is not None else "n/a", memory, f"{r['first_step_s']:.1f}", "ok",
            ])  # fmt: skip
    lines.append(markdown_table(header, rows))
    if any(r.get("max_rss_mib") for m in report["results"].values() for r in m.values()):
        lines += ["", "\\* CPU: the process's peak RSS so far (monotonic across variants), not per-variant memory."]
    failures = [(v, m, r["error"]) for v, ms in report["results"].items() for m, r in ms.items() if r.get("error")]
    if failures:
        lines += ["", "Failures:", ""] + [f"- {v} / {m}: `{e.splitlines()[-1][:300]}`" for v, m, e in failures]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny", choices=["tiny", "vit-b-16"])
    parser.add_argument("--batch", type=int, default=32, help="Finetune images per step (ARF adds as many pairs).")
    parser.add_argument("--methods", default="flyp,arf")
    parser.add_argument("--variants", default=None, help=f"Comma-separated, of {list(VARIANTS)}.")
    parser.add_argument("--steps", type=int, default=None, help="Timed steps (default: 10 on GPU, 5 on CPU).")
    parser.add_argument("--warmup", type=int, default=3, help="Untimed steps, the first (compile) one included.")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                        help="bf16 autocast (default: on with a GPU, off on CPU).")  # fmt: skip
    parser.add_argument("--time-budget", type=float, default=None,
                        help="Seconds; variants not started within it are recorded as skipped.")  # fmt: skip
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: 1 on CPU: on a shared 2-core machine one is fastest).",
    )
    parser.add_argument("--note", default=None, help="A line to put at the top of the Markdown table.")
    parser.add_argument("--output", default="docs/results/throughput_cpu_tiny.json")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = device.type == "cuda" if args.bf16 is None else args.bf16
    steps = args.steps or (10 if device.type == "cuda" else 5)
    variants = (args.variants or DEFAULT_VARIANTS[device.type]).split(",")
    methods = args.methods.split(",")
    unknown = [v for v in variants if v not in VARIANTS] + [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown variants/methods {unknown}")
    if args.threads or device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    from common import CONFIGS

    report = {
        "config": args.config, "batch": args.batch, "steps": steps, "warmup": args.warmup, "bf16": bf16,
        "run": run_info(), "note": args.note,
        "expected_arf_over_flyp_images_per_s": 1 / arf_flyp_ratio(CONFIGS[args.config], args.batch),
        "results": {},
    }  # fmt: skip
    started = time.perf_counter()
    for variant in variants:
        for method in methods:
            entry = report["results"].setdefault(variant, {})
            if args.time_budget and time.perf_counter() - started > args.time_budget:
                entry[method] = {"status": "skipped (time budget)"}
                continue
            options = {"bf16": bf16, **VARIANTS[variant]}
            label = f"{variant:<10} {method:<5}"
            try:
                entry[method] = r = run_variant(args.config, method, options, args.batch, steps, args.warmup, device)
                mfu = f"{r['mfu'] * 100:5.1f}%" if r["mfu"] is not None else "  n/a"
                print(f"{label} {r['finetune_images_per_s']:9.1f} finetune img/s  {r['median_step_s'] * 1000:8.1f} "
                      f"ms/step  {r['achieved_tflops']:8.3g} TFLOP/s  MFU {mfu}  first step "
                      f"{r['first_step_s']:.1f}s", flush=True)  # fmt: skip
            except Exception as error:  # noqa: BLE001 - compile/OOM/anything: record it, go on with the rest
                oom = isinstance(error, torch.cuda.OutOfMemoryError)
                entry[method] = {"status": "oom" if oom else f"failed ({type(error).__name__})",
                                 "error": traceback.format_exc()[-3000:]}  # fmt: skip
                print(f"{label} {entry[method]['status']}: {str(error).splitlines()[0][:200] if str(error) else ''}",
                      flush=True)  # fmt: skip
            _cleanup(device)
            write_json(args.output, report)  # after every variant: a timeout still leaves what was measured
            with open(os.path.splitext(args.output)[0] + ".md", "w") as handle:
                handle.write(to_markdown(report))
    for variant, entry in report["results"].items():
        arf, flyp = entry.get("arf", {}), entry.get("flyp", {})
        if arf.get("status") == "ok" and flyp.get("status") == "ok":
            ratio = arf["finetune_images_per_s"] / flyp["finetune_images_per_s"]
            print(f"{variant}: ARF/FLYP finetune images/s = {ratio:.3f} (FLOP-expected "
                  f"{report['expected_arf_over_flyp_images_per_s']:.3f}; target >= 0.55)")  # fmt: skip
    print(f"written to {args.output} and {os.path.splitext(args.output)[0]}.md")


if __name__ == "__main__":
    main()
