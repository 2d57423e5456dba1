"""Tiny CLIP models, tokenizers and image datasets built in-process: no download, seconds to run."""

from __future__ import annotations

import io
import os
import tempfile

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, PreTrainedTokenizerFast

from anchorclip import AnchorCLIPModel

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the Hub: fail fast instead of retrying
# Embedding caches (pools, distillation targets) of this session only, also for the processes tests launch.
os.environ.setdefault("ANCHORCLIP_CACHE", tempfile.mkdtemp(prefix="anchorclip-test-cache-"))
torch.set_num_threads(2)

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")


def import_example():
    """The module `examples/run_anchor_ft.py` (its `main(argv)` runs the recipe in-process)."""
    import sys

    sys.path.insert(0, EXAMPLES)
    try:
        import run_anchor_ft
    finally:
        sys.path.pop(0)
    return run_anchor_ft


CLASS_NAMES = ["circle", "square", "star", "heart"]
COLOURS = ["red", "green", "blue", "yellow"]
WORDS = sorted(
    set(CLASS_NAMES + COLOURS)
    | set("a an the of photo bad sculpture rendering drawing art sketch . small big on background".split())
)
IMAGE_SIZE = 16


def make_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"[PAD]": 0, "[UNK]": 1, "<bos>": 2, "<eos>": 3}
    vocab.update({word: i + 4 for i, word in enumerate(WORDS)})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", 2), ("<eos>", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="[PAD]",
        unk_token="[UNK]",
        model_max_length=16,
    )


def make_processor() -> CLIPProcessor:
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    return CLIPProcessor(image_processor=image_processor, tokenizer=make_tokenizer())


def make_config() -> CLIPConfig:
    text = dict(
        vocab_size=len(WORDS) + 4,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=16,
        bos_token_id=2,
        eos_token_id=3,
        pad_token_id=0,
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=8,
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)


def make_model(seed: int = 0) -> AnchorCLIPModel:
    torch.manual_seed(seed)
    model = AnchorCLIPModel(make_config())
    model.processor = make_processor()
    return model


def make_images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)) for _ in range(n)]


def make_classification_dataset(n: int = 16, seed: int = 0, with_captions: bool = True) -> datasets.Dataset:
    rng = np.random.default_rng(seed)
    labels = [i % len(CLASS_NAMES) for i in range(n)]
    columns = {"image": make_images(n, seed), "label": labels}
    if with_captions:
        columns["caption"] = [
            f"a {'small' if rng.random() < 0.5 else 'big'} {COLOURS[rng.integers(4)]} {CLASS_NAMES[label]}"
            for label in labels
        ]
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASS_NAMES)}
        | ({"caption": datasets.Value("string")} if with_captions else {})
    )
    return datasets.Dataset.from_dict(columns, features=features)


def make_pair_dataset(n: int = 24, seed: int = 1) -> datasets.Dataset:
    rng = np.random.default_rng(seed)
    captions = [f"a sketch of a {COLOURS[rng.integers(4)]} {CLASS_NAMES[rng.integers(4)]}" for _ in range(n)]
    return datasets.Dataset.from_dict(
        {"image": make_images(n, seed), "caption": captions},
        features=datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")}),
    )


def corrupt_bytes() -> dict:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue()[:20], "path": None}  # a truncated PNG


@pytest.fixture
def tiny_model():
    return make_model()


@pytest.fixture
def processor():
    return make_processor()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """`make_model()` saved with its processor: the model the in-process tests build, as a folder."""
    folder = tmp_path_factory.mktemp("ckpt") / "tiny-clip"
    make_model().save_pretrained(folder)
    make_processor().save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny plain-CLIP checkpoint on disk, as `anchorclip retrieve` and `retrieve_anchors` load one."""
    path = str(tmp_path_factory.mktemp("clip"))
    torch.manual_seed(0)
    CLIPModel(make_config()).save_pretrained(path)
    make_processor().save_pretrained(path)
    return path
