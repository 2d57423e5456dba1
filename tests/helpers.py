"""What several test files share: the trainer factory, on-disk fixtures (tiny world, CLIP_benchmark folder,
captioner, pools in LAION's layout), a free port for launched processes and a minimum-movement check. Fixtures
live in conftest.py; the building blocks they use (tiny model, tokenizer, datasets) too."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import sys
import tarfile
from collections.abc import Sequence
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from conftest import (
    CLASS_NAMES,
    COLOURS,
    make_classification_dataset,
    make_images,
    make_model,
    make_pair_dataset,
    make_processor,
)
from PIL import Image
from transformers import CLIPModel

from anchorclip import AnchorCLIPTrainer, AnchorTrainingArguments
from anchorclip.anchors.pool.encoders import TextEncoder, projected_features

# `accelerate launch` through this interpreter: works without the `accelerate` script on PATH.
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision", "no"]
LAUNCH += ["--dynamo_backend", "no"]


def free_port() -> int:
    """A TCP port nobody listens on now (for a launched process group, or a refused connection)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------- the trainer


def make_args(tmp_path, **overrides) -> AnchorTrainingArguments:
    defaults = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        max_steps=2,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        dataloader_num_workers=0,
        use_cpu=True,
        disable_tqdm=True,
        eval_templates="simple",
    )
    defaults.update(overrides)
    return AnchorTrainingArguments(**defaults)


def make_trainer(tmp_path, train=None, pairs="default", model=None, **overrides) -> AnchorCLIPTrainer:
    return AnchorCLIPTrainer(
        model=model or make_model(),
        args=make_args(tmp_path, **overrides),
        train_dataset=make_classification_dataset() if train is None else train,
        pair_anchors=make_pair_dataset() if pairs == "default" else pairs,
        processing_class=make_processor(),
    )


def sampled_dataset(tmp_path, batch_items: int = 4, **overrides):
    """A trainer's training dataset, its pairs dealt for global batches of `batch_items` finetune images."""
    dataset = make_trainer(tmp_path, **overrides).train_dataset
    dataset.sampler(batch_items)
    return dataset


def items_of(dataset, epoch: int = 0) -> list[dict]:
    """Every item of `dataset` as the data loader would draw it in `epoch`."""
    dataset.set_epoch(epoch)
    return [dataset[index] for index in range(len(dataset))]


def parameters(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def assert_moved(before: torch.Tensor, after: torch.Tensor, name: str = "", at_least: float = 1e-3) -> None:
    """Training moved this tensor well beyond any comparison tolerance (a changed last bit proves nothing)."""
    moved = (after.detach().float() - before.detach().float()).abs().max().item()
    assert moved > at_least, f"{name} moved by only {moved:.3g}"


def assert_accumulation_equals_large_batch(tmp_path, atol: float = 2e-6, **overrides):
    """Train batch 8 at once and as 4 micro-batches of 2 (SGD, no clipping); the weights must agree.
    Returns both trainers."""
    common = dict(
        optim="sgd", learning_rate=0.5, weight_decay=0.0, max_grad_norm=0.0, lr_scheduler_type="constant",
        duplicate_classes="mask", **overrides,
    )  # fmt: skip
    large = make_trainer(tmp_path / "large", per_device_train_batch_size=8, gradient_accumulation_steps=1, **common)
    small = make_trainer(tmp_path / "small", per_device_train_batch_size=2, gradient_accumulation_steps=4, **common)
    start = parameters(large.model)
    large.train()
    small.train()
    moved = 0.0
    for name, before in start.items():
        after_large, after_small = large.model.get_parameter(name), small.model.get_parameter(name)
        torch.testing.assert_close(after_small, after_large, atol=atol, rtol=1e-4, msg=name)
        moved = max(moved, (after_large - before).abs().max().item())
    assert moved > 1e-3  # far beyond the comparison's tolerance: the equality is not between untrained weights
    return large, small


# ---------------------------------------------------------------- plain transformers, no anchorclip

# Loads a saved folder as CLIPModel and through the zero-shot pipeline with anchorclip unimportable.
PLAIN_TRANSFORMERS = """
import sys
sys.modules["anchorclip"] = None  # any import of anchorclip now fails
from PIL import Image
from transformers import CLIPModel, pipeline
model = CLIPModel.from_pretrained(sys.argv[1])
classifier = pipeline("zero-shot-image-classification", model=sys.argv[1])
out = classifier(Image.new("RGB", (20, 20), "red"), candidate_labels=["circle", "star"])
print(type(model).__name__, sorted(o["label"] for o in out))
"""


# ---------------------------------------------------------------- on-disk fixtures


def build_tiny_world(root: Path, test_rows: int = 12) -> Path:
    """The example's inputs on disk: `clip/` (model + processor), `train/` (32 rows, no captions), `captions/`
    (the captions table of `anchorclip caption`, keyed by finetune row), `pairs/` (40 pair anchors), `test/`."""
    root = Path(root)
    make_model().save_pretrained(root / "clip")
    make_processor().save_pretrained(root / "clip")
    captioned = make_classification_dataset(32, with_captions=True)
    captioned.remove_columns("caption").save_to_disk(str(root / "train"))
    table = {"row_index": list(range(len(captioned))), "caption": captioned["caption"]}
    datasets.Dataset.from_dict(table).save_to_disk(str(root / "captions"))
    make_pair_dataset(40).save_to_disk(str(root / "pairs"))
    make_classification_dataset(test_rows, seed=9).save_to_disk(str(root / "test"))
    return root


def write_tar(path: Path, examples: Sequence[tuple[str, dict[str, bytes]]]) -> None:
    """examples: (key, {extension: bytes}) in order, as webdataset.ShardWriter writes them."""
    with tarfile.open(path, "w") as tar:
        for key, files in examples:
            for extension, data in files.items():
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def write_clip_benchmark(
    root: Path,
    class_names: Sequence[str],
    images: Sequence[bytes],
    labels: Sequence[int],
    shards: int = 2,
    split: str = "test",
    extension: str = "png",
) -> Path:
    """CLIP_benchmark's webdataset layout: `<split>/0.tar ...` of KEY.<extension> + KEY.cls in contiguous runs,
    `<split>/nshards.txt`, `classnames.txt` (line i names label i) and `zeroshot_classification_templates.txt`."""
    root = Path(root)
    os.makedirs(root / split, exist_ok=True)
    (root / "classnames.txt").write_text("\n".join(class_names) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\na sketch of a {c}.\n")
    examples = [
        (f"s{i:07d}", {extension: image, "cls": str(label).encode()})
        for i, (image, label) in enumerate(zip(images, labels))
    ]
    per = -(-len(examples) // shards)
    for shard in range(shards):
        write_tar(root / split / f"{shard}.tar", examples[shard * per : (shard + 1) * per])
    (root / split / "nshards.txt").write_text(f"{shards}\n")
    return root


def noise_png(seed: int) -> bytes:
    """A 20x24 PNG of seeded noise."""
    pixels = np.random.default_rng(seed).integers(0, 255, (20, 24, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def clip_benchmark_folder(root, labels=(0, 1, 2, 3, 0, 1), shards=2) -> Path:
    """A CLIP_benchmark folder over conftest's 4 class names, noise PNGs."""
    return write_clip_benchmark(root, CLASS_NAMES, [noise_png(i) for i in range(len(labels))], labels, shards=shards)


TOY_CLASSES = ["cat", "dog", "bird"]


def colour_png(colour) -> bytes:
    """A 4x4 PNG of one colour."""
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def toy_wds(root, labels=(0, 1, 2, 0, 2), shards=2, split="test", extension="webp") -> Path:
    """A CLIP_benchmark folder over `TOY_CLASSES`, one shade of red per image."""
    images = [colour_png((i * 40, 0, 0)) for i in range(len(labels))]
    return write_clip_benchmark(root, TOY_CLASSES, images, labels, shards=shards, split=split, extension=extension)


# ---------------------------------------------------------------- a tiny captioner

CAPTION_WORDS = ["a", "photo", "of", "the", "cat", "dog", "on", "red", "blue", "green", "small", "big", "with", "in"]
CAPTIONER_WORDS = ["[PAD]", "[BOS]", "[EOS]", "[UNK]", *CAPTION_WORDS]


def save_tiny_captioner(path: Path) -> str:
    """A random ViT + GPT-2 `VisionEncoderDecoderModel` with a word-level tokenizer, saved at `path`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        GPT2Config,
        PreTrainedTokenizerFast,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        ViTConfig,
        ViTImageProcessor,
    )

    backend = Tokenizer(models.WordLevel({word: i for i, word in enumerate(CAPTIONER_WORDS)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="[BOS]", eos_token="[EOS]", pad_token="[PAD]", unk_token="[UNK]"
    )
    encoder = ViTConfig(
        image_size=32, patch_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=37, initializer_range=1.0,
    )  # fmt: skip
    decoder = GPT2Config(
        vocab_size=len(CAPTIONER_WORDS), n_embd=32, n_layer=1, n_head=2, n_positions=64, add_cross_attention=True,
        is_decoder=True, bos_token_id=1, eos_token_id=2, pad_token_id=0, initializer_range=1.0,
    )  # fmt: skip
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = 1, 0, 2
    torch.manual_seed(0)
    VisionEncoderDecoderModel(config).save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


# ---------------------------------------------------------------- pools in LAION's layout


def write_laion_pool(path, image_shards, text_shards=None, captions=None, model=None):
    """A LAION-layout folder: img_emb/, text_emb/ (optional), metadata/ with url + caption, one file per shard."""
    os.makedirs(path / "img_emb")
    os.makedirs(path / "metadata")
    first = 0
    for s, shard in enumerate(image_shards):
        np.save(path / "img_emb" / f"img_emb_{s:04d}.npy", shard.astype(np.float16))
        rows = range(first, first + len(shard))
        texts = captions[first : first + len(shard)] if captions else [f"caption {i}" for i in rows]
        table = pa.table({"url": [f"https://example.com/{i}.jpg" for i in rows], "caption": texts, "key": list(rows)})
        pq.write_table(table, path / "metadata" / f"metadata_{s:04d}.parquet")
        first += len(shard)
    for s, shard in enumerate(text_shards or []):
        os.makedirs(path / "text_emb", exist_ok=True)
        np.save(path / "text_emb" / f"text_emb_{s:04d}.npy", shard.astype(np.float16))
    if model:
        (path / "anchorclip_pool.json").write_text(json.dumps({"model": model}))
    return path


def embedded_laion_pool(path, checkpoint, n=600, model_name=None):
    """A pool embedded with the tiny CLIP itself, as clip-retrieval would embed LAION with the real one."""
    model, processor = CLIPModel.from_pretrained(checkpoint).eval(), make_processor()
    rng = np.random.default_rng(3)
    captions = [f"a photo of a {COLOURS[rng.integers(4)]} {CLASS_NAMES[rng.integers(4)]}" for _ in range(n)]
    text = TextEncoder(model, processor.tokenizer, torch.device("cpu"), autocast=contextlib.nullcontext).encode(
        captions
    )
    with torch.no_grad():
        pixels = processor.image_processor(make_images(n, seed=4), return_tensors="pt")["pixel_values"]
        images = torch.nn.functional.normalize(
            projected_features(model.get_image_features(pixel_values=pixels)), dim=-1
        ).numpy()
    cut = [0, 250, 450, n]
    return write_laion_pool(
        path,
        [images[a:b] for a, b in zip(cut, cut[1:])],
        [text[a:b] for a, b in zip(cut, cut[1:])],
        captions,
        model=model_name,
    )
