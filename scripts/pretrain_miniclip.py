"""Pretrain the shipped mini-CLIP on the miniworld `pretrain` split (contrastive, both towers from scratch).

    python scripts/pretrain_miniclip.py                      # writes anchorclip/assets/miniclip/
    python scripts/pretrain_miniclip.py --steps 20 --out /tmp/miniclip-smoke   # a quick smoke run

Fixed seed; CPU; ~0.6 s per step of 256 pairs on 2 cores. Writes the model (safetensors), the word-level
tokenizer and the CLIP image processor (so `CLIPProcessor`/`pipeline` load the folder), plus
`eval_results.json` with zero-shot top-1 accuracy on every miniworld evaluation set.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
import torch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

from anchorclip import AnchorCLIPConfig, AnchorCLIPModel, ImageTransform
from anchorclip.evaluation.zero_shot import ZeroShotScorer
from anchorclip.miniworld import MINICLIP_PATH, build_tokenizer, load_miniworld_split, miniworld_eval_sets
from anchorclip.miniworld.tokenizer import BOS_ID, EOS_ID, MAX_LENGTH, PAD_ID

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def build_model(vocab_size: int) -> CLIPModel:
    config = CLIPConfig(
        text_config={
            "vocab_size": vocab_size, "hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 3,
            "num_attention_heads": 4, "max_position_embeddings": MAX_LENGTH,
            # eos must not be 2, or CLIP pools at the arg-max token id instead of at EOS (see tokenizer.py).
            "bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID,
        },
        vision_config={
            "image_size": 32, "patch_size": 8, "hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 4,
            "num_attention_heads": 4,
        },
        projection_dim=128,
    )  # fmt: skip
    return CLIPModel(config)


def zero_shot_accuracy(model: CLIPModel, processor: CLIPProcessor, eval_set) -> float:
    """Top-1 (%) on an `EvalSet` with its own names and templates, by the library's own zero-shot scorer."""
    from accelerate import Accelerator

    view = AnchorCLIPModel(AnchorCLIPConfig.from_dict(model.config.to_dict()))
    view.load_state_dict(model.state_dict())
    transform = ImageTransform.from_image_processor(processor.image_processor)
    scorer = ZeroShotScorer(
        view, processor.tokenizer, transform, Accelerator(cpu=True), batch_size=500, progress=False
    )
    return 100.0 * scorer.score(eval_set)["top1"]


def build_optimizer(model: CLIPModel, lr: float, weight_decay: float) -> torch.optim.AdamW:
    # As in CLIP: no weight decay on gains, biases, embeddings and the temperature.
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        exempt = parameter.ndim < 2 or "embedding" in name or "logit_scale" in name
        (no_decay if exempt else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6)


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return 0.5 * peak * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=MINICLIP_PATH)
    parser.add_argument("--steps", type=int, default=2400)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--warmup", type=int, default=150)
    parser.add_argument("--pretrain-size", type=int, default=None, help="default: the split's 60,000")
    parser.add_argument("--eval-size", type=int, default=1000, help="images per evaluation set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="use 1 when other jobs share the 2 cores: 3x faster")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    started = time.time()

    tokenizer = build_tokenizer()
    pretrain = load_miniworld_split("pretrain", size=args.pretrain_size)
    # The whole split fits in memory as uint8 (60k x 3 KB): decode once, then batches are just indexing.
    images = torch.from_numpy(np.stack([np.asarray(image, dtype=np.uint8) for image in pretrain["image"]]))
    images = images.permute(0, 3, 1, 2).contiguous()
    tokens = tokenizer(
        list(pretrain["caption"]), padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt"
    )
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    print(f"data ready: {len(pretrain)} pairs in {time.time() - started:.0f}s", flush=True)

    model = build_model(len(tokenizer))
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": 32},
            crop_size={"height": 32, "width": 32},
            image_mean=list(MEAN),
            image_std=list(STD),
        ),
        tokenizer=tokenizer,
    )
    print(f"parameters: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M", flush=True)
    optimizer = build_optimizer(model, args.lr, args.weight_decay)
    probe = miniworld_eval_sets(size_per_set=200)["test_photo"]  # cheap progress signal for the log
    generator = torch.Generator().manual_seed(args.seed)
    order, cursor = torch.randperm(len(pretrain), generator=generator), 0
    model.train()
    for step in range(args.steps):
        if cursor + args.batch_size > len(order):  # a new epoch: reshuffle
            order, cursor = torch.randperm(len(pretrain), generator=generator), 0
        batch = order[cursor : cursor + args.batch_size]
        cursor += args.batch_size
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args.steps, args.warmup, args.lr)
        pixel_values = (images[batch].float() / 255.0 - mean) / std
        output = model(
            input_ids=tokens["input_ids"][batch],
            attention_mask=tokens["attention_mask"][batch],
            pixel_values=pixel_values,
            return_loss=True,
        )
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))  # CLIP's cap on the inverse temperature
        if step % 50 == 0 or step == args.steps - 1:
            print(
                f"step {step} loss {output.loss.item():.3f} scale {model.logit_scale.exp().item():.1f} "
                f"elapsed {time.time() - started:.0f}s",
                flush=True,
            )
        if (step + 1) % 300 == 0:
            shape_accuracy = zero_shot_accuracy(model, processor, probe)
            print(f"step {step + 1} photo shape zero-shot {shape_accuracy:.1f}%", flush=True)
            model.train()
    train_seconds = time.time() - started

    model.eval()
    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(args.out)
    processor.save_pretrained(args.out)

    results = {}
    for name, eval_set in miniworld_eval_sets(size_per_set=args.eval_size).items():
        results[name] = round(zero_shot_accuracy(model, processor, eval_set), 2)
        print(f"zero-shot {name} ({eval_set.group}): {results[name]:.1f}%", flush=True)
    record = {
        "zero_shot_top1": results,
        "eval_size_per_set": args.eval_size,
        "train_seconds": round(train_seconds),
        "args": vars(args) | {"out": None},
        "final_loss": round(output.loss.item(), 4),
    }
    with open(os.path.join(args.out, "eval_results.json"), "w") as file:
        json.dump(record, file, indent=2)
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
