"""Where corrupted images land in the pretrained mini-CLIP's image space, against what ARF's anchors cover.

    python benchmarks/corruption_diagnosis.py --pairs outputs/robustness/anchors/pairs_mmr

ARF holds the finetuned features near the pretrained ones on its anchors (caption anchors: text; pair anchors:
retrieved pool images in the world's four styles). For each test corruption (severity 3, test_photo images,
32 px, as the corruption suite) this measures with the frozen pretrained image tower f0:
- `clean_cos`: cos(f0(x), f0(c(x))): how far the corruption moves an image's feature;
- `nearest_pair`: mean over images of the max cosine to a pair-anchor image feature (clean: the same for x);
- `zero_shot_top1`: the pretrained model's top-1 on the corrupted images;
and, for reference, the same nearest-pair cosine for test_sketch / test_painting / test_pixel_art images.
Corruptions whose images sit as close to the anchors as clean photos are the ones anchors can constrain.
"""

from __future__ import annotations

import argparse
import json
import os

import datasets
import torch
from transformers import CLIPProcessor

from anchorclip import AnchorCLIPModel
from anchorclip.data import decode_image
from anchorclip.evaluation.corruption_sets import CorruptImage
from anchorclip.evaluation.corruptions import TEST_CORRUPTIONS
from anchorclip.miniworld import MINICLIP_PATH, load_miniworld_split
from anchorclip.miniworld.prompts import SHAPE_TEMPLATES
from anchorclip.transforms import ImageTransform


def embed(model, transform, images) -> torch.Tensor:
    with torch.no_grad():
        pixels = torch.stack([transform(image) for image in images])
        return torch.nn.functional.normalize(model(pixel_values=pixels).image_embeds, dim=-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", required=True, help="a pair-anchor set saved by benchmarks/robustness.py")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--severity", type=int, default=3)
    parser.add_argument("--output", default="docs/results/corruptions_diagnosis")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = AnchorCLIPModel.from_pretrained(MINICLIP_PATH).eval()
    processor = CLIPProcessor.from_pretrained(MINICLIP_PATH)
    transform = ImageTransform.from_image_processor(processor.image_processor)
    pairs = datasets.load_from_disk(args.pairs)
    pairs = pairs.select(range(0, len(pairs), max(1, len(pairs) // 1000)))  # ~1000 anchors
    anchor_features = embed(model, transform, [decode_image(x) for x in pairs["image"]])
    photo = load_miniworld_split("test_photo", size=args.images)
    class_names = photo.features["label"].names
    head = model.build_zero_shot_head(class_names, list(SHAPE_TEMPLATES), processor.tokenizer)
    labels = torch.tensor(photo["label"])
    clean_images = [decode_image(x) for x in photo["image"]]
    clean = embed(model, transform, clean_images)

    def nearest(features):
        return float((features @ anchor_features.t()).max(dim=1).values.mean())

    def top1(features):
        return float(((features @ head.t()).argmax(dim=1) == labels[: len(features)]).float().mean())

    report = {"severity": args.severity, "images": args.images, "anchors": len(pairs)}
    report["clean"] = {"clean_cos": 1.0, "nearest_pair": nearest(clean), "zero_shot_top1": top1(clean)}
    for name in TEST_CORRUPTIONS:
        corrupt = CorruptImage(name, args.severity)
        features = embed(model, transform, [corrupt(image, i, 32) for i, image in enumerate(clean_images)])
        report[name] = {
            "clean_cos": float((features * clean).sum(dim=1).mean()),
            "nearest_pair": nearest(features),
            "zero_shot_top1": top1(features),
        }
    for split in ("test_sketch", "test_painting", "test_pixel_art"):
        images = [decode_image(x) for x in load_miniworld_split(split, size=args.images)["image"]]
        report[split] = {"nearest_pair": nearest(embed(model, transform, images))}
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    with open(args.output + ".json", "w") as handle:
        json.dump(report, handle, indent=2)
    lines = [
        f"# Corrupted images in the pretrained image space (severity {args.severity}, {args.images} test_photo "
        "images, ~1000 MMR pair anchors)",
        "",
        f"Command: `python benchmarks/corruption_diagnosis.py --pairs {args.pairs} --output {args.output}`",
        "",
        "| input | cos(f0(x), f0(c(x))) | nearest pair anchor (cos) | zero-shot top-1 |",
        "|---|---|---|---|",
    ]
    for name, row in report.items():
        if isinstance(row, dict):
            cells = [row.get(k) for k in ("clean_cos", "nearest_pair", "zero_shot_top1")]
            lines.append(f"| {name} | " + " | ".join("" if c is None else f"{c:.3f}" for c in cells) + " |")
    with open(args.output + ".md", "w") as handle:
        handle.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
