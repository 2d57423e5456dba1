"""Analytic FLOP count of one CLIP training step (both towers), for MFU and the expected ARF / FLYP cost.

    python benchmarks/flops.py                          # ViT-B/16, batch 256: FLYP vs ARF table
    python benchmarks/flops.py --config tiny --batch 32

Counted: every matrix product, at 2 FLOPs per multiply-add (elementwise ops, norms, softmax are left
out, as in the usual MFU convention). For a pre-norm transformer layer of width d, MLP width f and
sequence length n, per sequence:

    QKV + output projections   2 * 4 n d^2
    attention scores + mixing  2 * 2 n^2 d        (QK^T and AV; full n x n, also under the causal mask)
    MLP                        2 * 2 n d f

Image tower (ViT, patch p, image s): n = (s/p)^2 + 1 tokens, plus the patch embedding
2 * (s/p)^2 * 3 p^2 * d and the projection of the pooled token 2 * d * proj. Text tower: n = the
config's prompt length for the class prompts and its caption length for captions and pair captions (the
model encodes each text group at its own width, `text_groups`), plus the projection 2 * d * proj.
Loss: each contrastive term over m pairs costs 2 * (2 m^2 proj) (both directions); the model's forward
also forms the (texts x images) logit matrix, 2 * T * I * proj, counted though the trainer ignores it.

A training step is forward + backward = 3 x forward (backward = 2 x forward: grads of inputs and of
weights). Gradient checkpointing re-runs the forward (4 x forward of hardware FLOPs) but MFU counts
model FLOPs, so the 3 x figure is used for MFU either way.
"""

from __future__ import annotations

import argparse

from common import CONFIGS

TRAIN_MULTIPLIER = 3  # forward + backward

# Dense bf16 tensor-core peak (TFLOP/s, no sparsity), by substring of torch.cuda.get_device_name().
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM
    ("H200", 989.0),
    ("GH200", 989.0),
    ("A100", 312.0),
)


def peak_bf16_tflops(device_name: str | None) -> float | None:
    """Datasheet dense bf16 peak of a known GPU, or None (CPU, unknown GPU): MFU is then reported as n/a."""
    if not device_name:
        return None
    for key, peak in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return peak
    return None


def layer_flops(n: int, d: int, f: int) -> float:
    return 2 * (4 * n * d * d + 2 * n * n * d + 2 * n * d * f)


def image_forward_flops(spec: dict) -> float:
    vision = spec["vision"]
    d, f, layers = vision["hidden_size"], vision["intermediate_size"], vision["num_hidden_layers"]
    patches = (vision["image_size"] // vision["patch_size"]) ** 2
    embed = 2 * patches * 3 * vision["patch_size"] ** 2 * d
    return embed + layers * layer_flops(patches + 1, d, f) + 2 * d * spec["projection_dim"]


def text_forward_flops(spec: dict, length: int) -> float:
    text = spec["text"]
    d, f, layers = text["hidden_size"], text["intermediate_size"], text["num_hidden_layers"]
    return layers * layer_flops(length, d, f) + 2 * d * spec["projection_dim"]


def step_flops(spec: dict, batch: int, pairs_per_image: float, captions: bool) -> dict[str, float]:
    """FLOPs of one training step (forward + backward) on the batch `benchmarks.common.synthetic_batch` builds."""
    num_pairs = int(batch * pairs_per_image)  # fractional: one pair for every 1/pairs_per_image images
    num_captions = batch if captions else 0
    num_images, num_texts = batch + num_pairs, batch + num_captions + num_pairs
    proj = spec["projection_dim"]
    image = num_images * image_forward_flops(spec)
    text = batch * text_forward_flops(spec, spec["prompt_tokens"]) + (num_captions + num_pairs) * text_forward_flops(
        spec, spec["caption_tokens"]
    )
    loss_rows = [batch] + ([num_captions] if num_captions else []) + ([num_pairs] if num_pairs else [])
    loss = sum(2 * 2 * m * m * proj for m in loss_rows) + 2 * num_texts * num_images * proj
    forward = image + text + loss
    return {
        "image_forward": image,
        "text_forward": text,
        "loss_forward": loss,
        "forward": forward,
        "train_step": TRAIN_MULTIPLIER * forward,
        "num_images": num_images,
        "num_texts": num_texts,
    }


def arf_flyp_ratio(spec: dict, batch: int, pairs_per_image: float = 1) -> float:
    """Expected ARF / FLYP step cost at equal finetune batch (= FLYP / ARF images/s when compute-bound)."""
    flyp = step_flops(spec, batch, 0, False)["train_step"]
    return step_flops(spec, batch, pairs_per_image, True)["train_step"] / flyp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="vit-b-16", choices=sorted(CONFIGS))
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    spec = CONFIGS[args.config]
    prompt, caption = spec["prompt_tokens"], spec["caption_tokens"]
    print(f"{args.config}: image forward {image_forward_flops(spec) / 1e9:.2f} GFLOP/image; text forward "
          f"{text_forward_flops(spec, prompt) / 1e9:.2f} GFLOP/prompt ({prompt} tokens), "
          f"{text_forward_flops(spec, caption) / 1e9:.2f} GFLOP/caption ({caption} tokens), "
          f"{text_forward_flops(spec, 77) / 1e9:.2f} GFLOP at 77 tokens")  # fmt: skip
    rows = {
        "flyp": step_flops(spec, args.batch, 0, False),
        "arf, captions only": step_flops(spec, args.batch, 0, True),
        "arf, 1 pair/image": step_flops(spec, args.batch, 1, True),
        "arf, 2 pairs/image": step_flops(spec, args.batch, 2, True),
        # Cheaper anchors: one pair for every 2 or 4 finetune images, with and without caption anchors.
        "arf, 0.5 pair/image": step_flops(spec, args.batch, 0.5, True),
        "arf, 0.25 pair/image": step_flops(spec, args.batch, 0.25, True),
        "arf, no captions, 0.25 pair/image": step_flops(spec, args.batch, 0.25, False),
    }
    base = rows["flyp"]["train_step"]
    print(f"\nbatch {args.batch}, train step = 3 x forward")
    print(f"{'variant':<34} {'images':>6} {'texts':>6} {'TFLOP/step':>11} {'image %':>8} {'x FLYP':>7}")
    for name, row in rows.items():
        share = row["image_forward"] / row["forward"] * 100
        print(f"{name:<34} {row['num_images']:>6} {row['num_texts']:>6} "
              f"{row['train_step'] / 1e12:>11.2f} {share:>7.1f}% {row['train_step'] / base:>6.2f}x")  # fmt: skip
    ratio = arf_flyp_ratio(spec, args.batch)
    print(f"\nARF (1 pair/image) / FLYP FLOPs: {ratio:.3f}x -> compute-bound ARF images/s = {1 / ratio:.3f} x FLYP")


if __name__ == "__main__":
    main()
