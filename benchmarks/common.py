"""Shared pieces of the benchmarks: model configs built from scratch (no download) and synthetic batches."""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time

import torch
from transformers import CLIPConfig

from anchorclip import AnchorCLIPModel
from anchorclip.collate import text_key

CONFIGS = {
    # CLIP ViT-B/16 as published (openai/clip-vit-base-patch16), random weights.
    "vit-b-16": dict(
        text=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
                  max_position_embeddings=77, vocab_size=49408),
        vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                    image_size=224, patch_size=16),
        projection_dim=512, caption_tokens=32, prompt_tokens=12,
    ),
    # A CPU-sized model with the same structure, for smoke runs.
    "tiny": dict(
        text=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=3, num_attention_heads=4,
                  max_position_embeddings=32, vocab_size=1000),
        vision=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                    image_size=64, patch_size=8),
        projection_dim=128, caption_tokens=24, prompt_tokens=8,
    ),
}  # fmt: skip


def build_model(name: str, attn_implementation: str = "sdpa") -> tuple[AnchorCLIPModel, dict]:
    spec = CONFIGS[name]
    text = dict(spec["text"], bos_token_id=0, eos_token_id=2 if name == "vit-b-16" else 3, pad_token_id=1)
    config = CLIPConfig(text_config=text, vision_config=spec["vision"], projection_dim=spec["projection_dim"])
    config._attn_implementation = attn_implementation
    torch.manual_seed(0)
    return AnchorCLIPModel(config), spec


def synthetic_batch(spec: dict, batch: int, pairs_per_image: float, captions: bool, device) -> dict:
    """An ARF batch as `AnchorCollator` builds it: [images; pair images] and [prompts; captions; pair captions]."""
    size = spec["vision"]["image_size"]
    num_pairs = int(batch * pairs_per_image)  # fractional: one pair for every 1/pairs_per_image images
    num_captions = batch if captions else 0
    length = spec["caption_tokens"] if (captions or num_pairs) else spec["prompt_tokens"]
    num_texts = batch + num_captions + num_pairs
    eos, pad = (2, 1) if spec["text"]["vocab_size"] > 10_000 else (3, 1)
    input_ids = torch.randint(3, spec["text"]["vocab_size"], (num_texts, length))
    input_ids[:, -1] = eos  # EOS last: pooled token
    attention_mask = torch.ones(num_texts, length, dtype=torch.long)
    # The collator pads every text to the batch's longest (a caption): the prompts end early, then padding.
    prompt_end = spec["prompt_tokens"] - 1
    input_ids[:batch, prompt_end], input_ids[:batch, prompt_end + 1 :] = eos, pad
    attention_mask[:batch, prompt_end + 1 :] = 0
    # The text keys the collator adds (`anchorclip.collate.text_key`): the loss masks equal captions.
    keys = torch.tensor([text_key(ids) for ids in input_ids.tolist()])
    # ... and its text groups: the model encodes the prompts and the captions each at its own width.
    groups = [(batch, spec["prompt_tokens"]), (num_captions + num_pairs, length)]
    return {
        "text_groups": [group for group in groups if group[0]],
        "caption_keys": keys[batch : batch + num_captions].to(device),
        "pair_keys": keys[batch + num_captions :].to(device),
        "pixel_values": torch.randn(batch + num_pairs, 3, size, size, device=device),
        "input_ids": input_ids.to(device),
        "attention_mask": attention_mask.to(device),
        "labels": torch.randint(0, 1000, (batch,), device=device),
        "num_captions": num_captions,
        "num_pairs": num_pairs,
    }


def median_time(fn, steps: int, warmup: int, sync) -> tuple[float, list[float]]:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def make_trainer(model, method: str, captions: bool, pairs: int, bf16: bool, **training_args):
    """An `AnchorCLIPTrainer` whose `compute_loss` the benchmarks call directly (no data, no `train()`)."""
    from tokenizers import Tokenizer, models
    from transformers import CLIPImageProcessor, CLIPProcessor, PreTrainedTokenizerFast

    from anchorclip import AnchorCLIPTrainer, AnchorTrainingArguments

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0}, "[UNK]")))
    args = AnchorTrainingArguments(
        output_dir=tempfile.mkdtemp(), method=method, lambda_caption=1.0 if captions else 0.0,
        lambda_pairs=1.0 if pairs else 0.0, pair_anchors_per_image=max(pairs, 1), report_to="none", bf16=bf16,
        use_cpu=not torch.cuda.is_available(), **training_args,
    )  # fmt: skip
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tokenizer)
    return AnchorCLIPTrainer(model=model, args=args, processing_class=processor)


def run_info(argv: list[str] | None = None) -> dict:
    """What a results file must say about how it was made: command, machine, date, library versions."""
    import transformers

    argv = sys.argv if argv is None else argv
    return {
        "command": "python " + shlex.join(argv),
        "machine": machine(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }


def write_json(path: str, report: dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as handle:
        json.dump(report, handle, indent=2)
        handle.write("\n")


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def max_rss_mib() -> float | None:
    """The process's peak resident memory so far (monotonic: it never goes down between variants)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
