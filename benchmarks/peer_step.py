"""anchorclip's training step side by side with open_clip's: same CLIP, batch, precision, optimizer, data.

Install (open_clip is a benchmark-only extra; the anchorclip package never imports it):

    pip install --no-deps open_clip_torch==3.3.0     # setup.py's "bench" extra, without its dependencies
    pip install --no-deps ftfy wcwidth               # optional: a stand-in is used when ftfy is missing

(`pip install ".[bench]"` would also install open_clip's dependencies torchvision and timm: a torchvision wheel
can replace the installed torch with its own pinned build, or fail beside it.)

`--no-deps` keeps pip from pulling torchvision and timm. open_clip imports torchvision at load time (its image
transforms, `FrozenBatchNorm2d`) and ftfy (its tokenizer); none of them run in a training step fed with
tensors. When `import torchvision` (or `ftfy`) fails, this script registers a stand-in module with those names
before importing open_clip (`install_import_standins`): every stand-in raises if it is *called*, so open_clip's
model, `ClipLoss` and `open_clip_train.train.train_one_epoch` run unchanged. With a working torchvision
installed (on a GPU machine, its CUDA wheel beside CUDA torch) the real one is used.

Run:

    python benchmarks/peer_step.py --config tiny --batch 16 --steps 30 --rounds 5       # CPU, ~minutes
    python benchmarks/peer_step.py --config vit-b-16 --batch 16 --steps 3 --warmup 1 --rounds 3
    python benchmarks/peer_step.py --config vit-b-16 --batch 128 --bf16 [--compile]      # on a GPU
    python benchmarks/peer_step.py --side flyp --profile 5 --steps 6 --threads 1          # torch.profiler table

Sides, each in its own subprocess (peak memory is the process's own), run alternately round by round:

- `open_clip`: `open_clip.create_model` (ViT-B-16 with QuickGELU, as OpenAI's and HF's CLIP; or the tiny config
  as `open_clip.CLIP(...)`), `open_clip.ClipLoss`, the AdamW + cosine schedule of `open_clip_train.main` (no
  weight decay on gains/biases/logit_scale), and one epoch of open_clip's own `train_one_epoch` (its autocast,
  gradient clipping, logit-scale clamp and logging).
- `flyp` / `arf`: `AnchorCLIPTrainer.train()` (Hugging Face Trainer) with `method="flyp"`, or ARF with caption
  anchors and one retrieved pair per image (λ1 = λ2 = 1), on the `AnchorCLIPModel` of benchmarks/common.py.

Data, identical work on both sides: a map-style dataset over pre-made tensors (random images already at the
model's resolution and normalised; token ids already at their padded width), a `DataLoader` with 0 workers,
random order, collation = stacking (open_clip: `default_collate` of (image, tokens); anchorclip: its own
`AnchorCollator`, which also pads texts and computes text keys / text groups). Each FLYP text is the class prompt
of the image's label; open_clip's text tower is built with `context_length` = that width (its tokenizer pads
every text to 77; `--open_clip_context 77` measures that too), so both towers encode the same tokens.

Step time: the interval between consecutive batch fetches (the collate call), i.e. everything one step does:
fetch, forward, loss, backward, clipping, optimizer and scheduler step, callbacks, logging (on a GPU the timer
synchronises the device at each fetch, on both sides). Median over `--steps` steps after `--warmup`.
Peak memory: the subprocess's peak RSS on CPU (`ru_maxrss`, so it includes the imports and the model), and
`torch.cuda.max_memory_allocated` on a GPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import types

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import CONFIGS, build_model, markdown_table, run_info, write_json  # noqa: E402

SIDES = ("open_clip", "flyp", "arf")
NUM_CLASSES = 1000
# One optimizer for both sides: torch.optim.AdamW (open_clip_train's; anchorclip via `--optim adamw_torch`).
LR, WEIGHT_DECAY, BETAS, EPS, CLIP_NORM, WARMUP_LR_STEPS = 1e-5, 0.1, (0.9, 0.999), 1e-8, 1.0, 2


# ---------------------------------------------------------------------------------------------- open_clip import


def _raises(name: str):
    def stand_in(*args, **kwargs):
        raise RuntimeError(f"{name} is an import-time stand-in (benchmarks/peer_step.py): install the real package.")

    return stand_in


class _StandInType(type):
    """Class attributes of a stand-in (e.g. `InterpolationMode.BICUBIC`) are stand-ins too."""

    def __getattr__(cls, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _stand_in(f"{cls.__qualname__}.{name}")


def _stand_in(name: str) -> type:
    """A class (open_clip subclasses some, e.g. `ToTensor`) that raises when instantiated."""
    return _StandInType(name, (), {"__init__": _raises(name)})


class _StandInModule(types.ModuleType):
    """A module whose every attribute is a stand-in class (open_clip only imports these names at load)."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _stand_in(f"{self.__name__}.{name}")


def install_import_standins() -> list[str]:
    """Register stand-ins for the load-time imports of open_clip that a tensor-fed step never runs."""
    installed = []
    try:
        import torchvision  # noqa: F401
    except Exception:  # missing, or the wheel does not match torch ("operator torchvision::nms does not exist")
        for name in list(sys.modules):
            if name == "torchvision" or name.startswith("torchvision."):
                del sys.modules[name]
        for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional",
                     "torchvision.ops", "torchvision.ops.misc"):  # fmt: skip
            sys.modules[name] = _StandInModule(name)
            parent, _, child = name.rpartition(".")
            if parent:  # `import torchvision.transforms.functional as F` reads it as the parent's attribute
                setattr(sys.modules[parent], child, sys.modules[name])
        installed.append("torchvision")
    if importlib.util.find_spec("ftfy") is None:
        ftfy = types.ModuleType("ftfy")
        ftfy.fix_text = _raises("ftfy.fix_text")
        sys.modules["ftfy"] = ftfy
        installed.append("ftfy")
    return installed


def open_clip_available() -> bool:
    return (
        importlib.util.find_spec("open_clip") is not None and importlib.util.find_spec("open_clip_train") is not None
    )


# ---------------------------------------------------------------------------------------------- data


class PremadeData(Dataset):
    """`rows` training items over a small pool of pre-made tensors (indexing only: no decode, no transform)."""

    def __init__(self, spec: dict, rows: int, width: int, caption_width: int, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        size, vocab = spec["vision"]["image_size"], spec["text"]["vocab_size"]
        self.rows, self.pool = rows, 64
        self.images = torch.randn(self.pool, 3, size, size, generator=generator)
        self.pair_images = torch.randn(self.pool, 3, size, size, generator=generator)
        self.labels = torch.randint(0, NUM_CLASSES, (rows,), generator=generator).tolist()
        self.prompts = torch.randint(4, vocab, (NUM_CLASSES, width), generator=generator)
        self.prompts[:, -1] = 2 if vocab > 10_000 else 3  # EOS last, as benchmarks/common.py's batches
        self.captions = torch.randint(4, vocab - 1, (self.pool, caption_width), generator=generator).tolist()
        self.pair_captions = torch.randint(4, vocab - 1, (self.pool, caption_width), generator=generator).tolist()

    def __len__(self) -> int:
        return self.rows


class OpenCLIPData(PremadeData):
    def __getitem__(self, index: int):
        return self.images[index % self.pool], self.prompts[self.labels[index]]


class AnchorData(PremadeData):
    """Items as `AnchoredDataset` hands them to `AnchorCollator` (pixels already transformed, texts tokenized)."""

    anchors = False

    def __getitem__(self, index: int) -> dict:
        slot = index % self.pool
        item = {"pixel_values": self.images[slot], "label": self.labels[index], "template": 0, "skipped": 0}
        if self.anchors:
            item["caption_ids"] = self.captions[slot]
            item["pair_pixel_values"] = [self.pair_images[slot]]
            item["pair_caption_ids"] = [self.pair_captions[slot]]
        return item


class FetchTimer:
    """Wraps a collate function; the interval between two calls is one whole training step."""

    def __init__(self, collate, device: torch.device):
        self.collate, self.device, self.stamps = collate, device, []

    profile: tuple[int, int] | None = None  # (first, last) fetch between which torch.profiler records
    profiler = None

    def __call__(self, items):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.stamps.append(time.perf_counter())
        if self.profile and len(self.stamps) - 1 == self.profile[0]:
            self.profiler = torch.profiler.profile(record_shapes=False)
            self.profiler.start()
        elif self.profile and len(self.stamps) - 1 == self.profile[1] and self.profiler is not None:
            self.profiler.stop()
            table = self.profiler.key_averages().table(
                sort_by="cpu_time_total", row_limit=40, max_name_column_width=70
            )
            print(f"profile of {self.profile[1] - self.profile[0]} steps\n{table}", file=sys.stderr, flush=True)
        return self.collate(items)

    def step_times(self, warmup: int, steps: int) -> list[float]:
        stamps = self.stamps[warmup : warmup + steps + 1]
        return [end - start for start, end in zip(stamps, stamps[1:])]


# ---------------------------------------------------------------------------------------------- the two sides


def open_clip_model(config: str, context_length: int):
    import open_clip

    if config == "vit-b-16":  # OpenAI's ViT-B/16 (QuickGELU, as transformers' CLIPConfig default)
        return open_clip.create_model(
            "ViT-B-16", force_quick_gelu=True, force_context_length=context_length, output_dict=True
        )
    spec = CONFIGS[config]
    vision, text = spec["vision"], spec["text"]
    vision_cfg = dict(
        layers=vision["num_hidden_layers"], width=vision["hidden_size"], patch_size=vision["patch_size"],
        image_size=vision["image_size"], head_width=vision["hidden_size"] // vision["num_attention_heads"],
        mlp_ratio=vision["intermediate_size"] / vision["hidden_size"],
    )  # fmt: skip
    text_cfg = dict(
        context_length=context_length, vocab_size=text["vocab_size"], width=text["hidden_size"],
        heads=text["num_attention_heads"], layers=text["num_hidden_layers"],
        mlp_ratio=text["intermediate_size"] / text["hidden_size"],
    )  # fmt: skip
    return open_clip.CLIP(spec["projection_dim"], vision_cfg, text_cfg, quick_gelu=True, output_dict=True)


def run_open_clip(args, device: torch.device) -> dict:
    standins = install_import_standins()
    import open_clip
    from open_clip_train.scheduler import cosine_lr
    from open_clip_train.train import train_one_epoch

    spec = CONFIGS[args.config]
    width = args.open_clip_context or spec["prompt_tokens"]
    torch.manual_seed(0)
    model = open_clip_model(args.config, width).to(device)
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    # open_clip_train.main's optimizer: no weight decay on gains, biases and the temperature.
    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
         {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": WEIGHT_DECAY}],
        lr=LR, betas=BETAS, eps=EPS,
    )  # fmt: skip
    total = args.warmup + args.steps + 1
    scheduler = cosine_lr(optimizer, LR, WARMUP_LR_STEPS, total)
    loss = open_clip.ClipLoss(cache_labels=True)  # open_clip_train.main's create_loss, one process
    data = OpenCLIPData(spec, total * args.batch, width, spec["caption_tokens"])
    timer = FetchTimer(default_collate, device)
    timer.profile = _profile_window(args)
    pin = device.type == "cuda"  # open_clip_train's loaders pin memory, as the Trainer's do by default
    loader = DataLoader(data, batch_size=args.batch, shuffle=True, drop_last=True, collate_fn=timer, pin_memory=pin)
    loader.num_batches, loader.num_samples = len(loader), len(data)  # as open_clip_train.data sets them
    train_data = types.SimpleNamespace(dataloader=loader, set_epoch=lambda epoch: None)
    if args.compile:
        model = torch.compile(model)  # open_clip_train.main --torchcompile
    oc_args = types.SimpleNamespace(
        device=str(device), precision="amp_bf16" if args.bf16 else "fp32", distill=False, accum_freq=1,
        skip_scheduler=False, horovod=False, grad_clip_norm=CLIP_NORM, log_every_n_steps=args.log_every,
        rank=0, local_rank=0, world_size=1, batch_size=args.batch, wandb=False,
    )  # fmt: skip
    rss_before = _rss_mib()
    train_one_epoch(model, {"train": train_data}, loss, 0, optimizer, None, scheduler, None, oc_args)
    return _result(timer, args, device, rss_before, model, standins=standins, context_length=width)


def run_anchorclip(args, device: torch.device, method: str) -> dict:
    from tokenizers import Tokenizer, models
    from transformers import CLIPImageProcessor, CLIPProcessor, PreTrainedTokenizerFast

    from anchorclip import AnchorCLIPTrainer, AnchorTrainingArguments
    from anchorclip.collate import AnchorCollator

    spec = CONFIGS[args.config]
    model, _ = build_model(args.config)
    arf = method == "arf"
    total = args.warmup + args.steps + 1
    training_args = AnchorTrainingArguments(
        output_dir=os.path.join(args.workdir or tempfile.mkdtemp(), method), method=method,
        lambda_caption=1.0 if arf else 0.0, lambda_pairs=1.0 if arf else 0.0, pair_anchors_per_image=1,
        per_device_train_batch_size=args.batch,
        max_steps=total, learning_rate=LR, weight_decay=WEIGHT_DECAY, adam_beta1=BETAS[0], adam_beta2=BETAS[1],
        adam_epsilon=EPS, optim=args.anchorclip_optim, max_grad_norm=CLIP_NORM, lr_scheduler_type="cosine",
        warmup_steps=WARMUP_LR_STEPS, logging_steps=args.log_every, save_strategy="no", report_to="none",
        dataloader_num_workers=0, use_cpu=device.type == "cpu", bf16=args.bf16, torch_compile=args.compile,
        gradient_checkpointing=args.grad_checkpointing, disable_tqdm=False, seed=0,
    )  # fmt: skip
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0}, "[UNK]")))
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tokenizer)
    trainer = AnchorCLIPTrainer(model=model, args=training_args, processing_class=processor)
    data = AnchorData(spec, total * args.batch, spec["prompt_tokens"], spec["caption_tokens"])
    data.anchors = arf
    collator = AnchorCollator(prompt_ids=data.prompts.tolist(), num_templates=1, pad_token_id=1)
    timer = FetchTimer(collator, device)
    timer.profile = _profile_window(args)
    trainer.train_dataset, trainer.data_collator = data, timer  # what build_train_data returns, pre-made
    for patch in args.patch:
        PATCHES[patch](trainer)
    rss_before = _rss_mib()
    trainer.train()
    return _result(timer, args, device, rss_before, trainer.model)


# Experiments on anchorclip's side (applied to the trainer before `train()`), to measure a candidate fix.
PATCHES: dict = {}


def _profile_window(args) -> tuple[int, int] | None:
    return (args.warmup, args.warmup + args.profile) if args.profile else None


def _rss_mib() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _result(timer: FetchTimer, args, device: torch.device, rss_before: float, model, **extra) -> dict:
    times = timer.step_times(args.warmup, args.steps)
    if len(times) < args.steps:
        raise RuntimeError(f"Only {len(times)} timed steps (wanted {args.steps}): the run ended early.")
    result = {
        "step_times_s": times,
        "median_step_s": statistics.median(times),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_training_mib": rss_before,
        "parameters": sum(p.numel() for p in model.parameters()),
        **extra,
    }
    if device.type == "cuda":
        result["peak_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


# ---------------------------------------------------------------------------------------------- driver


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny", choices=sorted(CONFIGS))
    parser.add_argument("--batch", type=int, default=16, help="Finetune images per step (both sides).")
    parser.add_argument("--steps", type=int, default=30, help="Timed steps per run.")
    parser.add_argument("--warmup", type=int, default=3, help="Untimed steps first (each run).")
    parser.add_argument("--rounds", type=int, default=5, help="Runs per side, alternating the sides.")
    parser.add_argument("--sides", nargs="+", default=list(SIDES), choices=SIDES)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast on both sides (a GPU).")
    parser.add_argument("--compile", action="store_true", help="torch.compile on both sides.")
    parser.add_argument("--grad_checkpointing", action="store_true")
    parser.add_argument("--log_every", type=int, default=10, help="Both sides log (with a host sync) every N steps.")
    parser.add_argument("--anchorclip_optim", default="adamw_torch", help="adamw_torch = open_clip's AdamW.")
    parser.add_argument("--open_clip_context", type=int, default=None, help="Default: anchorclip's prompt width.")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per side (default: torch's).")
    parser.add_argument("--patch", nargs="*", default=[], help="anchorclip-side experiments (see PATCHES).")
    parser.add_argument("--profile", type=int, default=0, help="With --side: torch.profiler over N steps (stderr).")
    parser.add_argument("--side", choices=SIDES, help="Run only this side, in this process; print its JSON.")
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--output", default=None, help="Default: docs/results/peer_step_{cpu|gpu}.json")
    return parser.parse_args(argv)


def child(args: argparse.Namespace) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.side == "open_clip":
        result = run_open_clip(args, device)
    else:
        result = run_anchorclip(args, device, args.side)
    print("PEER_STEP_RESULT " + json.dumps(result), flush=True)


def run_side(side: str, argv: list[str], workdir: str) -> dict:
    command = [sys.executable, os.path.abspath(__file__), *argv, "--side", side, "--workdir", workdir]
    done = subprocess.run(command, capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith("PEER_STEP_RESULT "):
            return json.loads(line.removeprefix("PEER_STEP_RESULT "))
    raise RuntimeError(f"{side} failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def summarize(runs: dict[str, list[dict]], batch: int) -> dict:
    summary = {}
    for side, results in runs.items():
        medians = [r["median_step_s"] for r in results]
        rss = [r["peak_rss_mib"] for r in results]
        entry = {
            "median_step_s": statistics.median(medians),
            "step_s_min_max": [min(medians), max(medians)],
            "images_per_s": batch / statistics.median(medians),
            "peak_rss_mib": statistics.median(rss),
            "peak_rss_mib_min_max": [min(rss), max(rss)],
            "rss_growth_in_training_mib": statistics.median(
                r["peak_rss_mib"] - r["rss_before_training_mib"] for r in results
            ),  # fmt: skip
            "parameters": results[0]["parameters"],
        }
        if "peak_allocated_mib" in results[0]:
            entry["peak_allocated_mib"] = statistics.median(r["peak_allocated_mib"] for r in results)
        summary[side] = entry
    if "open_clip" in runs:  # per round: the two sides ran back to back, so the ratio is the fairer figure
        for side in runs:
            if side == "open_clip":
                continue
            speed = [o["median_step_s"] / r["median_step_s"] for o, r in zip(runs["open_clip"], runs[side])]
            memory = [r["peak_rss_mib"] / o["peak_rss_mib"] for o, r in zip(runs["open_clip"], runs[side])]
            summary[side]["images_per_s_vs_open_clip"] = statistics.median(speed)
            summary[side]["images_per_s_vs_open_clip_min_max"] = [min(speed), max(speed)]
            summary[side]["peak_rss_vs_open_clip"] = statistics.median(memory)
    return summary


def write_markdown(path: str, report: dict) -> None:
    rows = []
    for side, entry in report["summary"].items():
        low, high = entry["step_s_min_max"]
        ratio = entry.get("images_per_s_vs_open_clip")
        ratio_text = "1 (reference)" if side == "open_clip" else "n/a" if ratio is None else (
            f"{ratio:.3f} ({entry['images_per_s_vs_open_clip_min_max'][0]:.3f}–"
            f"{entry['images_per_s_vs_open_clip_min_max'][1]:.3f})"
        )  # fmt: skip
        memory = entry.get("peak_rss_vs_open_clip")
        rows.append([
            side, f"{entry['parameters'] / 1e6:.2f} M",
            f"{entry['median_step_s'] * 1000:.1f} ({low * 1000:.1f}–{high * 1000:.1f})",
            f"{entry['images_per_s']:.1f}", ratio_text, f"{entry['peak_rss_mib']:.0f}",
            f"{entry['rss_growth_in_training_mib']:.0f}", "1 (reference)" if side == "open_clip" else
            ("n/a" if memory is None else f"{memory:.3f}"),
        ])  # fmt: skip
    header = ["side", "params", "median step ms (min–max of runs)", "finetune images/s",
              "images/s ÷ open_clip's (min–max)", "peak RSS MiB", "RSS growth in training MiB",
              "peak RSS ÷ open_clip's"]  # fmt: skip
    info = report["run"]
    with open(path, "w") as handle:
        handle.write(
            f"## {report['config']}, batch {report['batch']}, {'bf16' if report['bf16'] else 'fp32'}"
            f"{', compiled' if report['compile'] else ''}\n\n"
            f"Command: `{info['command']}`  \nMachine: {info['machine']} ({info['cpu_count']} CPUs), torch "
            f"{info['torch']}, transformers {info['transformers']}, open_clip {report.get('open_clip')}, "
            f"{info['date']}, {report['threads']} torch thread(s) per side. {report['rounds']} rounds, each side "
            "in its own process, sides alternated "
            f"({' / '.join(report['orders'][:2])} ...); per run the median of {report['steps']} steps after "
            f"{report['warmup']} warm-up steps; the table gives the median over runs.\n\n"
            + markdown_table(header, rows)
            + "\n"
        )


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.side:
        child(args)
        return None
    argv = list(sys.argv[1:] if argv is None else argv)
    if "open_clip" in args.sides and not open_clip_available():
        raise SystemExit("open_clip is not installed: pip install --no-deps open_clip_torch==3.3.0 (see the header).")
    workdir = tempfile.mkdtemp(prefix="peer_step_")  # anchorclip's output_dir (nothing is saved: save_strategy=no)
    runs: dict[str, list[dict]] = {side: [] for side in args.sides}
    orders = []
    for round_ in range(args.rounds):
        order = args.sides if round_ % 2 == 0 else args.sides[::-1]  # A B C, C B A, ...
        orders.append(" ".join(order))
        for side in order:
            result = run_side(side, argv, workdir)
            runs[side].append(result)
            print(f"round {round_ + 1} {side:<10} median step {result['median_step_s'] * 1000:9.1f} ms   "
                  f"peak RSS {result['peak_rss_mib']:7.0f} MiB", flush=True)  # fmt: skip
    summary = summarize(runs, args.batch)
    report = {
        "run": run_info(),
        "config": args.config, "batch": args.batch, "steps": args.steps, "warmup": args.warmup,
        "rounds": args.rounds, "bf16": args.bf16, "compile": args.compile,
        "grad_checkpointing": args.grad_checkpointing, "attention": "sdpa (both)",
        "threads": args.threads or torch.get_num_threads(),
        "optimizer": {"impl": f"torch.optim.AdamW (anchorclip --optim {args.anchorclip_optim})", "lr": LR,
                      "weight_decay": WEIGHT_DECAY, "betas": BETAS, "eps": EPS, "max_grad_norm": CLIP_NORM},
        "orders": orders, "patches": args.patch, "summary": summary, "runs": runs,
    }  # fmt: skip
    if "open_clip" in runs:
        report["open_clip"] = _open_clip_version()
    for side, entry in summary.items():
        extra = ""
        if "images_per_s_vs_open_clip" in entry:
            extra = (f"  ×{entry['images_per_s_vs_open_clip']:.3f} open_clip's images/s, "
                     f"×{entry['peak_rss_vs_open_clip']:.3f} its peak RSS")  # fmt: skip
        print(f"{side:<10} {entry['images_per_s']:8.2f} images/s  peak RSS {entry['peak_rss_mib']:7.0f} MiB{extra}")
    output = args.output or f"docs/results/peer_step_{'gpu' if torch.cuda.is_available() else 'cpu'}.json"
    write_json(output, report)
    write_markdown(output.removesuffix(".json") + ".md", report)
    return report


def _open_clip_version() -> str:
    from importlib.metadata import version

    return version("open_clip_torch")


if __name__ == "__main__":
    main()
