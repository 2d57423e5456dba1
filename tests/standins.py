"""Local stand-ins for the Hub ids and datasets the docs name, built from config with random weights.

`build_world(root)` writes, under `root`, a folder for every model id and dataset id that a documented
command uses (`root/openai/clip-vit-base-patch16`, `root/imagenet-1k`, ...). A command run with `root` as
its working directory then loads these folders instead of the Hub: transformers' `from_pretrained`,
`anchorclip.data.load_dataset_any` and `anchorclip.evaluation.formats.load_eval_dataset` all take an existing
local path before trying a Hub id. Everything is tiny (32x32 images, 32-wide towers) and in the real format:
the same model classes and config keys, the same processor classes, ClassLabel columns with the real number of
classes, ImageNet's train folder of wnid sub-folders, CC3M's webdataset column names, CLIP_benchmark's
webdataset layout (tar shards, classnames.txt with the number of classes the shipped suites expect).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image

IMAGE_SIZE = 32
TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)

# Each CLIP-family id the docs name, with the real checkpoint's patch size.
CLIP_MODELS = {"openai/clip-vit-base-patch16": 16}

# Classification sets: id -> (number of classes as in the real set, {split: rows}).
IMAGENET_CLASSES = 1000
CLASSIFICATION_SETS = {
    "imagenet-1k": (IMAGENET_CLASSES, {"train": 48, "validation": 16}),
    "ILSVRC/imagenet-1k": (IMAGENET_CLASSES, {"train": 48, "validation": 16}),
    "imagenet_sketch": (IMAGENET_CLASSES, {"train": 16}),
    "songweig/imagenet_sketch": (IMAGENET_CLASSES, {"train": 16}),
    "imagenet-sketch": (IMAGENET_CLASSES, {"train": 16}),
    "imagenet-v2": (IMAGENET_CLASSES, {"test": 16}),
    "imagenet_subset": (10, {"train": 24}),
    "ethz/food101": (101, {"validation": 8}),  # the zeroshot-transfer suite's Food101 (its validation = test)
}
# Image-caption pools: id -> (image column, caption column, rows). CC3M's webdataset shards name them jpg/txt.
POOLS = {
    "pixparse/cc3m-wds": ("jpg", "txt", 64),
    "my_pairs": ("image", "caption", 48),
}
# CLIP_benchmark webdatasets (Hub repos `clip-benchmark/wds_*`): id -> number of classes (their classnames.txt
# lines; ImageNet-A/-R and ObjectNet keep their own 200 / 113 labels), as the shipped suites expect them.
WDS_SETS = {
    "clip-benchmark/wds_imagenet1k": IMAGENET_CLASSES,
    "clip-benchmark/wds_imagenetv2": IMAGENET_CLASSES,
    "clip-benchmark/wds_imagenet_sketch": IMAGENET_CLASSES,
    "clip-benchmark/wds_imagenet-a": 200,
    "clip-benchmark/wds_imagenet-r": 200,
    "clip-benchmark/wds_objectnet": 113,
    "clip-benchmark/wds_vtab-caltech101": 102,
    "clip-benchmark/wds_vtab-pets": 37,
    "clip-benchmark/wds_cars": 196,
    "clip-benchmark/wds_vtab-flowers": 102,
    "clip-benchmark/wds_fgvc_aircraft": 100,
    "clip-benchmark/wds_sun397": 397,
    "clip-benchmark/wds_vtab-dtd": 47,
    "clip-benchmark/wds_vtab-eurosat": 10,
}
WDS_ROWS, WDS_SHARDS = 8, 2
# ImageFolders: path -> (class folder names, {split folder: images per class}); "" is a folder of class folders.
IMAGEFOLDERS = {
    "path/to/imagenet_train": ([f"n{1440764 + i:08d}" for i in range(8)], {"": 2}),  # ImageNet's wnid folders
    # UCF101's middle frames, as the zeroshot-transfer suite reads them from --eval_data_root (101 classes).
    "data/ucf101": ([f"class_{i:03d}" for i in range(101)], {"": 1}),
}
# DomainNet, downloaded and unpacked by the user as ImageFolders: real with train/ and test/ (the official split
# lists), each other domain one folder. A few of DomainNet's 345 class names: folder names are the class names.
DOMAINNET_CLASSES = "airplane alarm_clock ambulance angel ant anvil apple arm asparagus axe".split()
IMAGEFOLDERS["data/domainnet/real"] = (DOMAINNET_CLASSES, {"train": 2, "test": 1})
for _domain in ("clipart", "infograph", "painting", "quickdraw", "sketch"):
    IMAGEFOLDERS[f"data/domainnet/{_domain}"] = (DOMAINNET_CLASSES, {"": 1})
# A user's own small set (docs/recipes.md "Small data"): one folder per split, one folder per class inside.
PRODUCT_CLASSES = "espresso_machine kettle desk_lamp office_chair".split()
IMAGEFOLDERS["data/products"] = (PRODUCT_CLASSES, {"train": 4, "validation": 1, "test": 1})
# Finetuned checkpoints that docs evaluate without training them on the page (a CLIP stand-in, other weights).
CHECKPOINTS = {"out/arf-vitb16-imagenet": 16}

WORDS = "a an the of photo sketch painting small big red green blue dog cat car on with in".split()


def class_names(n: int) -> list[str]:
    """`n` distinct class names (real names are not needed, distinct ones are)."""
    syllables = "ka mo lu ri te no sa pi vu de".split()  # distinct tokens, so that queries differ
    return [" ".join(syllables[int(d)] + "x" for d in f"{i:03d}") for i in range(n)]


def images(n: int, seed: int) -> list[Image.Image]:
    """Blocks of random colour with a little noise: pure noise embeds alike, and de-duplication would drop it."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 255, (n, 4, 4, 3)).repeat(IMAGE_SIZE // 4, axis=1).repeat(IMAGE_SIZE // 4, axis=2)
    noisy = np.clip(blocks + rng.integers(-20, 20, blocks.shape), 0, 255).astype(np.uint8)
    return [Image.fromarray(image) for image in noisy]


def captions(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=6)) for _ in range(n)]


# ------------------------------------------------------------------ tokenizers and models


def clip_tokenizer(folder: Path):
    """A real `CLIPTokenizer` (byte-level BPE, `</w>` word ends) whose merges make each known word one token.

    Every byte is in the vocabulary, so unknown words still tokenize (character by character); known words
    (templates, captions, class names) stay short, which keeps 1,000 classes x 80 templates cheap to embed.
    """
    import re

    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    from anchorclip.templates import OPENAI_IMAGENET_TEMPLATES, SIMPLE_TEMPLATES

    symbols = list(bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    text = " ".join([*OPENAI_IMAGENET_TEMPLATES, *SIMPLE_TEMPLATES, *WORDS, "thing"]).lower()
    merges = []
    for word in sorted(set(re.findall(r"[a-z]+", text))):
        pieces = [*word[:-1], word[-1] + "</w>"]
        while len(pieces) > 1:  # merge left to right: "p h", "ph o", ... until the word is one token
            merges.append(f"{pieces[0]} {pieces[1]}")
            pieces[:2] = [pieces[0] + pieces[1]]
            vocab.setdefault(pieces[0], len(vocab))
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("\n".join(["#version: 0.2", *dict.fromkeys(merges)]) + "\n")
    return CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), model_max_length=77)


def save_clip(folder: Path, patch_size: int, seed: int = 0) -> None:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer = clip_tokenizer(folder / "_vocab")
    text = dict(TOWER, vocab_size=len(tokenizer), max_position_embeddings=77)
    text.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=1)
    vision = dict(TOWER, image_size=IMAGE_SIZE, patch_size=patch_size)
    torch.manual_seed(seed)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(folder)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)


def _bert_tokenizer(folder: Path, **kwargs):
    from transformers import BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", *WORDS]))
    return BertTokenizer(str(folder / "vocab.txt"), **kwargs)


def _gpt2_tokenizer(**kwargs):
    """A byte-level BPE tokenizer with the words as whole tokens (OPT / GPT-2 style), `</s>` as BOS/EOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    vocab.update({("Ġ" + w): i + 3 for i, w in enumerate(WORDS)})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="</s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>", **kwargs
    )


def save_blip(folder: Path) -> None:
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    tokenizer = _bert_tokenizer(folder / "_vocab", bos_token="[DEC]")
    text = dict(TOWER, vocab_size=len(tokenizer), encoder_hidden_size=32, bos_token_id=5, pad_token_id=0)
    text.update(sep_token_id=3, eos_token_id=3, max_position_embeddings=64)
    torch.manual_seed(0)
    config = BlipConfig(text_config=text, vision_config=dict(TOWER, image_size=IMAGE_SIZE, patch_size=16))
    BlipForConditionalGeneration(config).save_pretrained(folder)
    image_processor = BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    BlipProcessor(image_processor, tokenizer).save_pretrained(folder)


def save_blip2(folder: Path) -> None:
    """BLIP-2 with an OPT language model (as `Salesforce/blip2-opt-2.7b`), 4 query tokens."""
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        BlipImageProcessor,
        OPTConfig,
    )

    tokenizer = _gpt2_tokenizer(extra_special_tokens={"image_token": "<image>"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    text = OPTConfig(
        vocab_size=len(tokenizer), hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=2,
        word_embed_proj_dim=32, max_position_embeddings=128, bos_token_id=1, eos_token_id=1, pad_token_id=0,
        init_std=1.0,  # random weights that say more than EOS
    )  # fmt: skip
    qformer = dict(TOWER, vocab_size=64, encoder_hidden_size=32, max_position_embeddings=64)
    config = Blip2Config(
        vision_config=dict(TOWER, image_size=IMAGE_SIZE, patch_size=16),
        qformer_config=qformer,
        text_config=text.to_dict(),
        num_query_tokens=4,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    torch.manual_seed(0)
    Blip2ForConditionalGeneration(config).save_pretrained(folder)
    image_processor = BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    Blip2Processor(image_processor, tokenizer, num_query_tokens=4).save_pretrained(folder)


def save_git(folder: Path) -> None:
    from transformers import CLIPImageProcessor, GitConfig, GitForCausalLM, GitProcessor

    tokenizer = _bert_tokenizer(folder / "_vocab")
    config = GitConfig(
        vision_config=dict(TOWER, image_size=IMAGE_SIZE, patch_size=16),
        vocab_size=len(tokenizer), max_position_embeddings=64, bos_token_id=2, eos_token_id=3, pad_token_id=0,
        **TOWER,
    )  # fmt: skip
    torch.manual_seed(0)
    GitForCausalLM(config).save_pretrained(folder)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    GitProcessor(image_processor, tokenizer).save_pretrained(folder)


def save_vision_encoder_decoder(folder: Path) -> None:
    """ViT encoder + GPT-2 decoder (as `nlpconnect/vit-gpt2-image-captioning` and the shipped mini-captioner)."""
    from transformers import (
        GPT2Config,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        ViTConfig,
        ViTImageProcessor,
    )

    tokenizer = _gpt2_tokenizer()
    encoder = ViTConfig(**TOWER, image_size=IMAGE_SIZE, patch_size=16)
    decoder = GPT2Config(
        vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=64, bos_token_id=1, eos_token_id=1,
        pad_token_id=0, add_cross_attention=True, is_decoder=True, initializer_range=1.0,
    )  # fmt: skip
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = 1, 0, 1
    torch.manual_seed(0)
    VisionEncoderDecoderModel(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


# A tiny random captioner per family that docs/captioning.md names; the docs' commands use BLIP-2.
CAPTIONERS = {
    "Salesforce/blip2-opt-2.7b": save_blip2,
    "Salesforce/blip-image-captioning-base": save_blip,
    "microsoft/git-base": save_git,
    "nlpconnect/vit-gpt2-image-captioning": save_vision_encoder_decoder,
}


# ------------------------------------------------------------------ datasets


def save_classification(folder: Path, num_classes: int, splits: dict[str, int], seed: int) -> None:
    label = datasets.ClassLabel(names=class_names(num_classes))
    features = datasets.Features({"image": datasets.Image(), "label": label})
    parts = {}
    for offset, (split, rows) in enumerate(splits.items()):
        labels = [(i * 7) % num_classes for i in range(rows)]  # spread over the label range, not only its start
        parts[split] = datasets.Dataset.from_dict(
            {"image": images(rows, seed + offset), "label": labels}, features=features
        )
    datasets.DatasetDict(parts).save_to_disk(str(folder))


def save_pool(folder: Path, image_column: str, caption_column: str, rows: int, seed: int) -> None:
    features = datasets.Features({image_column: datasets.Image(), caption_column: datasets.Value("string")})
    pool = {image_column: images(rows, seed), caption_column: captions(rows, seed)}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(pool, features=features)}).save_to_disk(str(folder))


def save_imagefolder(folder: Path, classes: list[str], splits: dict[str, int], seed: int) -> None:
    """`folder/<split>/<class>/*.jpg` (`split` "" for a folder of class folders), `per_class` images a class."""
    for offset, (split, per_class) in enumerate(splits.items()):
        for k, image in enumerate(images(per_class * len(classes), seed + offset)):
            name = classes[k // per_class]
            (folder / split / name).mkdir(parents=True, exist_ok=True)
            image.save(folder / split / name / f"{name}_{k}.JPEG", format="JPEG")


def save_wds(folder: Path, num_classes: int, seed: int, split: str = "test") -> None:
    """A CLIP_benchmark webdataset: `<split>/0.tar, 1.tar` of KEY.webp + KEY.cls, `<split>/nshards.txt`, and
    `classnames.txt` (line i names label i) + `zeroshot_classification_templates.txt` (`{c}` for the name)."""
    import io

    from helpers import write_clip_benchmark

    encoded = []
    for image in images(WDS_ROWS, seed):
        buffer = io.BytesIO()
        image.save(buffer, format="WEBP")
        encoded.append(buffer.getvalue())
    labels = [(i * 37) % num_classes for i in range(WDS_ROWS)]  # spread over the label range
    write_clip_benchmark(folder, class_names(num_classes), encoded, labels, WDS_SHARDS, split, extension="webp")


# ------------------------------------------------------------------ anchors that docs use but do not build


# finetune set -> caption anchors, pair anchors (each built once, then copied to the other names).
ANCHORS = [
    ("imagenet-1k", ["anchors/imagenet-blip2"], ["anchors/cc3m-imagenet"]),
    ("data/domainnet/real", ["anchors/domainnet-real-blip2"], ["anchors/cc3m-domainnet"]),
]  # fmt: skip


def build_anchors(root: Path) -> None:
    """Caption and pair anchors named by docs that take them as given, built by anchorclip's own functions."""
    from anchorclip.anchors import RetrievalArguments, retrieve_anchors
    from anchorclip.anchors.captions.job import caption_dataset
    from anchorclip.data import load_dataset_any

    clip = str(root / "openai/clip-vit-base-patch16")
    captioner = str(root / "Salesforce/blip2-opt-2.7b")
    for finetune, captioned, pairs in ANCHORS:
        train = f"{root / finetune}:train"
        caption_dataset(train, captioner, str(root / captioned[0]), max_new_tokens=8, num_workers=0, progress=False)
        names = load_dataset_any(train).features["label"].names
        # Random weights put every pool item nearest to the same few classes: keep all of them, enough pairs
        # for any documented global batch (a pair is used at most once per batch).
        settings = RetrievalArguments(
            model_name_or_path=clip,
            output_dir=str(root / pairs[0]),
            pool=str(root / "pixparse/cc3m-wds"),
            k_per_class=64,
            oversample=1,
            dedup_threshold=None,
            num_workers=0,
        )
        retrieve_anchors(settings, class_names=names)
        for copies in (captioned, pairs):
            for name in copies[1:]:  # the same anchors under another name a doc uses
                shutil.copytree(root / copies[0], root / name)


def build_world(root: str | os.PathLike) -> Path:
    root = Path(root)
    for name, patch in CLIP_MODELS.items():
        save_clip(root / name, patch)
    for name, save in CAPTIONERS.items():
        save(root / name)
    for seed, (name, (num_classes, splits)) in enumerate(CLASSIFICATION_SETS.items()):
        save_classification(root / name, num_classes, splits, seed=100 + seed)
    for seed, (name, (image_column, caption_column, rows)) in enumerate(POOLS.items()):
        save_pool(root / name, image_column, caption_column, rows, seed=200 + seed)
    for seed, (name, (classes, splits)) in enumerate(IMAGEFOLDERS.items()):
        save_imagefolder(root / name, classes, splits, seed=300 + 10 * seed)
    for seed, (name, num_classes) in enumerate(WDS_SETS.items()):
        save_wds(root / name, num_classes, seed=400 + seed)
    for seed, (name, patch) in enumerate(CHECKPOINTS.items()):
        save_clip(root / name, patch, seed=1 + seed)
    build_anchors(root)
    from standins_your_data import build_your_data  # docs/your-data.md's class folders, CSV, JSON Lines, img2dataset

    build_your_data(root)
    return root
