"""Train the shipped mini-captioner: mini-CLIP's image tower + a tiny GPT-2 decoder (cross-attention).

    python scripts/train_minicaptioner.py                    # writes anchorclip/assets/minicaptioner/
    python scripts/train_minicaptioner.py --steps 20 --out /tmp/captioner-smoke   # a quick smoke run
    python scripts/train_minicaptioner.py --encoder scratch  # the first versions' from-scratch ViT encoder

It plays BLIP-2's role for the miniworld: the captions of the text-compensated anchors (ARF's L_tc). Like
BLIP-2, whose image encoder is a pretrained CLIP ViT, the encoder starts from the shipped mini-CLIP's vision
tower (pretrained on the same `pretrain` split, so no other data is seen); a from-scratch ViT learns the
shape, the attribute learned last, far more slowly. Trained with teacher forcing on the `pretrain` split's
captions; the folder is a plain `VisionEncoderDecoderModel` + image processor + the word-level tokenizer, so
captioning is `model.generate(pixel_values=...)` and `tokenizer.batch_decode(..., skip_special_tokens=True)`.
Writes `eval_results.json` with the attribute recall of greedy captions on a held-out sample.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
import torch
from transformers import (
    CLIPImageProcessor,
    CLIPVisionModel,
    GPT2Config,
    GPT2LMHeadModel,
    VisionEncoderDecoderConfig,
    VisionEncoderDecoderModel,
    ViTConfig,
    ViTImageProcessor,
)

from anchorclip.miniworld import MINICAPTIONER_PATH, MINICLIP_PATH, build_tokenizer, load_miniworld_split
from anchorclip.miniworld.attributes import ATTRIBUTES
from anchorclip.miniworld.tokenizer import BOS_ID, EOS_ID, MAX_LENGTH, PAD_ID

HELD_OUT_SEED = 9001  # a fresh sample of the pretrain distribution, for measuring caption quality
CURVE_SEED = 9003  # another one, for the learning curve logged during training (never the reported numbers)

# A caption "names" an attribute value if it contains any of these words (synonyms from the grammar).
ATTRIBUTE_WORDS = {
    "style": {
        "photo": {"photo", "photograph", "photographed"},
        "sketch": {"sketch", "drawing", "drawn", "pencil"},
        "painting": {"painting", "painted", "oil"},
        "pixel art": {"pixel", "pixelated", "sprite"},
    },
    "background": {
        "plain": {"plain"},
        "striped": {"striped", "stripes"},
        "dotted": {"dotted", "dots", "polka"},
        "checkered": {"checkered", "checkerboard"},
    },
}


def build_model(vocab_size: int, encoder_init: str) -> tuple[VisionEncoderDecoderModel, object]:
    """The captioner and the image processor that feeds it: mini-CLIP's vision tower (`encoder_init` "miniclip",
    with CLIP's normalisation) or a from-scratch ViT ("scratch", mean/std 0.5) under a 3-layer GPT-2."""
    decoder = GPT2Config(
        vocab_size=vocab_size, n_positions=MAX_LENGTH, n_embd=128, n_layer=3, n_head=4, n_inner=256,
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID, add_cross_attention=True, is_decoder=True,
    )  # fmt: skip
    if encoder_init == "miniclip":
        encoder = CLIPVisionModel.from_pretrained(MINICLIP_PATH)
        model = VisionEncoderDecoderModel(encoder=encoder, decoder=GPT2LMHeadModel(decoder))
        clip = CLIPImageProcessor.from_pretrained(MINICLIP_PATH)
        processor = CLIPImageProcessor(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
            image_mean=clip.image_mean, image_std=clip.image_std,
        )  # fmt: skip
    else:
        encoder = ViTConfig(
            image_size=32, patch_size=8, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
            intermediate_size=256,
        )  # fmt: skip
        config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
        model = VisionEncoderDecoderModel(config=config)
        processor = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    # The decoder starts from BOS and stops at EOS; padding is never a target (labels -100).
    model.config.decoder_start_token_id, model.config.pad_token_id, model.config.eos_token_id = BOS_ID, PAD_ID, EOS_ID
    generation = model.generation_config
    generation.decoder_start_token_id, generation.bos_token_id = BOS_ID, BOS_ID
    generation.eos_token_id, generation.pad_token_id = EOS_ID, PAD_ID
    generation.max_length, generation.num_beams, generation.do_sample = MAX_LENGTH, 1, False
    return model, processor


def pixel_tensor(images) -> torch.Tensor:
    array = np.stack([np.asarray(image.convert("RGB"), dtype=np.uint8) for image in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def normalise(images_uint8: torch.Tensor, processor) -> torch.Tensor:
    """The processor's rescale + normalise, batched on tensors (the images are already 32x32)."""
    mean = torch.tensor(processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(processor.image_std).view(1, 3, 1, 1)
    return (images_uint8.float() / 255.0 - mean) / std


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return 0.5 * peak * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def names_value(caption_words: set[str], attribute: str, value: str) -> bool:
    words = ATTRIBUTE_WORDS.get(attribute, {}).get(value, {value})
    return bool(words & caption_words)


@torch.no_grad()
def attribute_recall(model, tokenizer, processor, dataset, batch_size: int = 250) -> dict:
    """Per attribute: % of images whose caption names the true value, and % of named values that are right."""
    model.eval()
    captions, seconds = [], 0.0
    for start in range(0, len(dataset), batch_size):
        batch = dataset[start : start + batch_size]
        began = time.time()
        output = model.generate(pixel_values=normalise(pixel_tensor(batch["image"]), processor))
        seconds += time.time() - began
        captions += tokenizer.batch_decode(output, skip_special_tokens=True)
    report = {"ms_per_image_greedy_batched": round(1000 * seconds / len(dataset), 2), "examples": captions[:8]}
    for attribute in ("shape", "colour", "style", "background"):
        names = dataset.features[attribute].names
        recalled = mentioned = correct = 0
        for caption, value_index in zip(captions, dataset[attribute], strict=True):
            words = set(caption.split())
            truth = names[value_index]
            recalled += names_value(words, attribute, truth)
            named = [value for value in ATTRIBUTES[attribute] if names_value(words, attribute, value)]
            mentioned += bool(named)
            correct += bool(named) and truth in named and len(named) == 1
        report[attribute] = {
            "recall": round(100.0 * recalled / len(captions), 2),
            "mentioned": round(100.0 * mentioned / len(captions), 2),
            "precision_when_mentioned": round(100.0 * correct / max(1, mentioned), 2),
        }
    report["mean_recall"] = round(sum(report[a]["recall"] for a in ("shape", "colour", "style", "background")) / 4, 2)
    return report


def measure(model, tokenizer, processor, eval_size: int) -> dict:
    """Caption quality on the held-out pretrain sample (every style, 12 shapes) and on `finetune_val` (the
    finetune distribution: the photos of the 8 classes whose captions ARF's caption anchors are)."""
    held_out = load_miniworld_split("pretrain", size=eval_size, seed=HELD_OUT_SEED)
    finetune_val = load_miniworld_split("finetune_val", size=eval_size)
    return {
        "attribute_recall": attribute_recall(model, tokenizer, processor, held_out),
        "attribute_recall_finetune_val": attribute_recall(model, tokenizer, processor, finetune_val),
        "eval_size": eval_size,
        "held_out": f"pretrain distribution, seed {HELD_OUT_SEED}; finetune_val",
    }


def evaluate_folder(folder: str, eval_size: int) -> None:
    """Measure a saved captioner and merge the numbers into its eval_results.json (greedy: deterministic)."""
    from transformers import AutoImageProcessor, AutoTokenizer

    model, tokenizer = VisionEncoderDecoderModel.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    report = measure(model, tokenizer, AutoImageProcessor.from_pretrained(folder), eval_size)
    path = os.path.join(folder, "eval_results.json")
    record = json.load(open(path)) if os.path.isfile(path) else {}
    with open(path, "w") as file:
        json.dump(record | report, file, indent=2)
    print(json.dumps(report, indent=2))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=MINICAPTIONER_PATH)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--encoder", choices=("miniclip", "scratch"), default="miniclip")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument(
        "--pretrain-size",
        type=int,
        default=120_000,
        help="images of the pretrain distribution; the first 60,000 are the split mini-CLIP saw",
    )
    parser.add_argument("--eval-size", type=int, default=5000, help="images per quality sample (SE ~0.4 pt)")
    parser.add_argument("--curve-every", type=int, default=1000, help="log shape recall on a held-out sample")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="use 1 when other jobs share the 2 cores: 3x faster")
    parser.add_argument("--evaluate", metavar="FOLDER", help="only measure a saved captioner (into its eval_results)")
    args = parser.parse_args()
    if args.evaluate:
        torch.set_num_threads(args.threads)
        return evaluate_folder(args.evaluate, args.eval_size)

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    started = time.time()

    tokenizer = build_tokenizer()
    pretrain = load_miniworld_split("pretrain", size=args.pretrain_size)
    images = pixel_tensor(pretrain["image"])
    # Targets are "words ... EOS": the decoder is fed BOS (decoder_start_token_id) + the targets shifted right.
    ids = tokenizer(list(pretrain["caption"]), padding="max_length", max_length=MAX_LENGTH, return_tensors="pt")
    labels = ids["input_ids"][:, 1:].clone()
    labels[labels == PAD_ID] = -100
    print(f"data ready: {len(pretrain)} pairs in {time.time() - started:.0f}s", flush=True)

    model, processor = build_model(len(tokenizer), args.encoder)
    print(f"parameters: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M", flush=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=args.weight_decay)
    curve_sample = load_miniworld_split("pretrain", size=500, seed=CURVE_SEED) if args.curve_every else None
    curve = {}
    generator = torch.Generator().manual_seed(args.seed)
    order, cursor = torch.randperm(len(pretrain), generator=generator), 0
    model.train()
    for step in range(args.steps):
        if cursor + args.batch_size > len(order):
            order, cursor = torch.randperm(len(pretrain), generator=generator), 0
        batch = order[cursor : cursor + args.batch_size]
        cursor += args.batch_size
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args.steps, args.warmup, args.lr)
        loss = model(pixel_values=normalise(images[batch], processor), labels=labels[batch]).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step} loss {loss.item():.3f} elapsed {time.time() - started:.0f}s", flush=True)
        if args.curve_every and (step + 1) % args.curve_every == 0:
            curve[step + 1] = attribute_recall(model, tokenizer, processor, curve_sample)["shape"]["recall"]
            print(f"step {step + 1} shape recall {curve[step + 1]} (held-out seed {CURVE_SEED})", flush=True)
            model.train()
    train_seconds = time.time() - started

    model.eval()
    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    processor.save_pretrained(args.out)

    record = measure(model, tokenizer, processor, args.eval_size) | {
        "train_seconds": round(train_seconds),
        "final_loss": round(loss.item(), 4),
        "shape_recall_curve": {"sample": f"500 images, seed {CURVE_SEED}", "by_step": curve},
        "args": vars(args) | {"out": None},
    }
    with open(os.path.join(args.out, "eval_results.json"), "w") as file:
        json.dump(record, file, indent=2)
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
