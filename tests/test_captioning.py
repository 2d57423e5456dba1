"""Tests for `anchorclip caption`: tiny random captioner (ViT + GPT-2 `VisionEncoderDecoderModel`, word-level
tokenizer, the same code path as the shipped mini-captioner) and tiny datasets, all built here, CPU only."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from helpers import CAPTION_WORDS, LAUNCH, free_port, save_tiny_captioner
from PIL import Image

import anchorclip
from anchorclip.anchors.captions.captioner import Captioner
from anchorclip.anchors.captions.job import CaptionArguments, caption_dataset
from anchorclip.anchors.shards import chunks_for_process, plan_chunks
from anchorclip.data import ColumnError, join_captions


@pytest.fixture(scope="session")
def captioner_dir(tmp_path_factory) -> str:
    return save_tiny_captioner(tmp_path_factory.mktemp("captioner"))


def _png(seed: int) -> bytes:
    pixels = np.random.RandomState(seed).randint(0, 256, (24 + seed, 20, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _make_dataset(path: Path, num_rows: int = 10, corrupt_rows: tuple[int, ...] = ()) -> str:
    images = [{"bytes": b"not an image" if i in corrupt_rows else _png(i), "path": None} for i in range(num_rows)]
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.Value("int64"), "name": datasets.Value("string")}
    )
    columns = {"image": images, "label": list(range(num_rows)), "name": [f"img-{i:03d}" for i in range(num_rows)]}
    dataset = datasets.Dataset.from_dict(columns, features=features)
    dataset.save_to_disk(str(path))
    return str(path)


@pytest.fixture(scope="session")
def captioner(captioner_dir) -> Captioner:
    return Captioner.from_pretrained(captioner_dir, max_new_tokens=6, device="cpu")


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory) -> str:
    return _make_dataset(tmp_path_factory.mktemp("data") / "ds")


@pytest.fixture(scope="session")
def reference(captioner, dataset_dir, tmp_path_factory) -> datasets.Dataset:
    out = tmp_path_factory.mktemp("ref")
    return caption_dataset(dataset_dir, captioner, out, batch_size=2, shard_size=4, num_workers=0, progress=False)


def test_one_caption_per_row_in_input_order(captioner, dataset_dir, reference):
    source = datasets.load_from_disk(dataset_dir)
    # A captions-only table keyed by row: no copy of the images.
    assert reference.column_names == ["row_index", "caption"]
    assert reference["row_index"] == list(range(len(source)))
    assert all(isinstance(text, str) for text in reference["caption"])
    # Each caption is the one the model gives that image alone: no row got its neighbour's caption.
    for row in (0, 5, 9):
        assert reference["caption"][row] == captioner([source[row]["image"].convert("RGB")])[0]
    assert len(set(reference["caption"])) > 1, "the random captioner should tell images apart"


def test_interrupted_run_resumes_to_identical_output(captioner, dataset_dir, reference, tmp_path, monkeypatch):
    calls = {"n": 0}
    real_generate = Captioner.generate

    def flaky_generate(self, inputs):
        calls["n"] += 1
        if calls["n"] > 3:  # 2 batches per chunk: the 2nd chunk's second batch dies, so 1 chunk is on disk
            raise KeyboardInterrupt("simulated interruption")
        return real_generate(self, inputs)

    monkeypatch.setattr(Captioner, "generate", flaky_generate)
    with pytest.raises(KeyboardInterrupt):
        caption_dataset(dataset_dir, captioner, tmp_path, batch_size=2, shard_size=4, num_workers=0, progress=False)
    assert sorted(p.name for p in (tmp_path / "_shards").glob("rows-*.json")) == ["rows-0000000000-0000000004.json"]
    assert not (tmp_path / "state.json").exists()

    counted = []
    monkeypatch.setattr(Captioner, "generate", lambda self, inputs: counted.append(1) or real_generate(self, inputs))
    resumed = caption_dataset(
        dataset_dir, captioner, tmp_path, batch_size=2, shard_size=4, num_workers=0, progress=False
    )
    assert len(counted) == 3  # rows 4..9 only: the first chunk was not captioned again
    assert resumed["caption"] == reference["caption"]
    assert datasets.load_from_disk(str(tmp_path))["caption"] == reference["caption"]

    # Resuming with other settings would mix captions: refused, with the differing setting named.
    with pytest.raises(ValueError, match="shard_size"):
        caption_dataset(dataset_dir, captioner, tmp_path, batch_size=2, shard_size=5, num_workers=0, progress=False)


def test_new_weights_under_the_same_path_are_not_resumed(captioner_dir, dataset_dir, tmp_path):
    from transformers import VisionEncoderDecoderModel

    path = tmp_path / "captioner"
    shutil.copytree(captioner_dir, path)
    caption_dataset(dataset_dir, str(path), tmp_path / "out", batch_size=4, num_workers=0, progress=False)
    model = VisionEncoderDecoderModel.from_pretrained(path)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # "retrained": same name, other weights
    model.save_pretrained(path)
    with pytest.raises(ValueError, match="captioner_weights"):
        caption_dataset(dataset_dir, str(path), tmp_path / "out", batch_size=4, num_workers=0, progress=False)


def test_a_moved_captioner_folder_resumes_its_captions(captioner_dir, dataset_dir, tmp_path, monkeypatch):
    # The cache is keyed by the weights, not by where they lie: a moved checkout (or a Hub id against its
    # local download) keeps its captions.
    first = tmp_path / "here" / "captioner"
    shutil.copytree(captioner_dir, first)
    reference = caption_dataset(dataset_dir, str(first), tmp_path / "out", batch_size=4, num_workers=0, progress=False)
    moved = tmp_path / "there" / "captioner"
    shutil.move(str(first.parent), str(moved.parent))
    calls = []
    real_generate = Captioner.generate
    monkeypatch.setattr(Captioner, "generate", lambda self, inputs: calls.append(1) or real_generate(self, inputs))
    again = caption_dataset(dataset_dir, str(moved), tmp_path / "out", batch_size=4, num_workers=0, progress=False)
    assert calls == [] and again["caption"] == reference["caption"]


def test_undecodable_images_are_skipped_and_listed(captioner, tmp_path):
    data = _make_dataset(tmp_path / "ds", num_rows=6, corrupt_rows=(1, 4))
    out = tmp_path / "out"
    result = caption_dataset(data, captioner, out, batch_size=4, shard_size=4, num_workers=0, progress=False)
    assert result["row_index"] == list(range(6))  # every row keeps its entry; a skipped one has no caption
    assert [text is None for text in result["caption"]] == [False, True, False, False, True, False]
    skipped = json.loads((out / "skipped_rows.json").read_text())
    assert skipped == {"count": 2, "rows": [1, 4], "ids": [1, 4]}
    provenance = json.loads((out / "anchorclip_provenance.json").read_text())
    assert provenance["counts"] == {
        "input_rows": 6, "captioned": 4, "skipped": 2, "empty_captions": result["caption"].count(""),
    }  # fmt: skip
    assert provenance["generation"]["max_new_tokens"] == 6 and provenance["dataset"] == data
    assert provenance["id_column"] == "row_index"

    # Joined to the finetune rows by id: the skipped rows stay out, and each image keeps its own caption.
    finetune, captions = join_captions(datasets.load_from_disk(data), result)
    assert finetune["label"] == [0, 2, 3, 5]
    assert captions["caption"] == [result["caption"][row] for row in (0, 2, 3, 5)]


def test_captions_keyed_by_an_id_column_join_in_any_row_order(captioner, tmp_path):
    data = _make_dataset(tmp_path / "ds", num_rows=6, corrupt_rows=(2,))
    table = caption_dataset(
        data, captioner, tmp_path / "out", id_column="name", batch_size=4, shard_size=4, num_workers=0, progress=False
    )
    assert table.column_names == ["name", "caption"] and table["name"][2] == "img-002"
    # The finetune set in another order (as after a re-download or a shuffle): the join follows the ids.
    finetune = datasets.load_from_disk(data).select([5, 4, 3, 2, 1, 0])
    joined, captions = join_captions(finetune, table)
    assert joined["label"] == [5, 4, 3, 1, 0]
    for image, caption in zip(joined["image"], captions["caption"], strict=True):
        assert caption == captioner([image.convert("RGB")])[0]

    # Ids the table does not know: a clear error, not captions shifted onto other images.
    other = datasets.load_from_disk(data).map(lambda row: {"name": row["name"] + "-x"})
    with pytest.raises(ValueError, match="6 of the 6 finetune rows have no entry in the captions table"):
        join_captions(other, table)
    with pytest.raises(ValueError, match="keyed by 'name', which is not a column of the finetune set"):
        join_captions(datasets.load_from_disk(data).remove_columns("name"), table)
    with pytest.raises(ValueError, match="two columns, an id and a caption"):
        join_captions(finetune, datasets.load_from_disk(data).add_column("caption", ["x"] * 6))
    repeated = datasets.load_from_disk(data).map(lambda row: {"name": "same"})
    with pytest.raises(ValueError, match="unique, non-null"):
        caption_dataset(repeated, captioner, tmp_path / "dup", id_column="name", num_workers=0, progress=False)


def test_bad_inputs_give_clear_errors(captioner, tmp_path):
    no_image = datasets.Dataset.from_dict({"picture_bytes": [b"x"], "label": [0]})
    with pytest.raises(ColumnError, match=r"image.*\['picture_bytes', 'label'\]"):
        caption_dataset(no_image, captioner, tmp_path / "a", num_workers=0, progress=False)
    with pytest.raises(ColumnError, match="'photo' is missing"):
        caption_dataset(no_image, captioner, tmp_path / "b", image_column="photo", num_workers=0, progress=False)
    empty = datasets.Dataset.from_dict({"image": []}, features=datasets.Features({"image": datasets.Image()}))
    with pytest.raises(ValueError, match="no rows"):
        caption_dataset(empty, captioner, tmp_path / "c", num_workers=0, progress=False)


def test_work_plan_covers_every_row_once():
    chunks = plan_chunks(10, 3)
    assert [(c.start, c.stop) for c in chunks] == [(0, 3), (3, 6), (6, 9), (9, 10)]
    for sharding in ("strided", "contiguous"):
        shares = [chunks_for_process(chunks, i, 3, sharding) for i in range(3)]
        assert sorted(c.start for share in shares for c in share) == [0, 3, 6, 9]
    assert chunks_for_process(chunks, 0, 3, "contiguous") == chunks[:2]


def test_cli_end_to_end(captioner_dir, dataset_dir, reference, tmp_path):
    from anchorclip.cli import main

    out = tmp_path / "cli"
    args = ["caption", "--dataset_name", dataset_dir, "--captioner", captioner_dir, "--output_dir", str(out)]
    # One DataLoader worker: decoding and preprocessing run in a separate process, as on a real machine.
    args += ["--batch_size", "2", "--shard_size", "4", "--max_new_tokens", "6", "--num_workers", "1", "--no_progress"]
    assert main(args) == 0
    assert datasets.load_from_disk(str(out))["caption"] == reference["caption"]
    provenance = json.loads((out / "anchorclip_provenance.json").read_text())
    assert provenance["captioner"] == captioner_dir and provenance["num_processes"] == 1
    # The job's settings, whole, as the command parsed them.
    assert provenance["arguments"]["dataset_name"] == dataset_dir and provenance["arguments"]["batch_size"] == 2
    assert sum(f.stat().st_size for f in out.glob("*.arrow")) < 5_000  # the captions alone, not the images


def test_kebab_case_flag_spellings_parse():
    """Kebab-case spellings parse as their snake_case flags."""
    from anchorclip.cli.caption import parse_args

    kebab = ["--dataset-name", "d", "--dataset-split", "test", "--captioner", "m", "--output-dir", "o"]
    kebab += [
        "--batch-size",
        "2",
        "--max-new-tokens",
        "6",
        "--chat-template",
        "--generation-kwargs",
        '{"min_new_tokens": 2}',
    ]
    args = parse_args([*kebab, "--no-resume", "--no-progress"])
    new = ["--dataset_name", "d", "--dataset_split", "test", "--captioner", "m", "--output_dir", "o"]
    new += ["--batch_size", "2", "--max_new_tokens", "6", "--chat_template", "--resume", "false"]
    expected = CaptionArguments(
        dataset_name="d", dataset_split="test", captioner="m", output_dir="o", batch_size=2, max_new_tokens=6,
        chat_template=True, generation_kwargs={"min_new_tokens": 2}, resume=False, progress=False,
    )  # fmt: skip
    assert args == expected
    assert parse_args([*new, "--generation_kwargs", '{"min_new_tokens": 2}', "--no_progress"]) == expected


def test_cli_from_a_config_file(captioner_dir, dataset_dir, reference, tmp_path):
    """`anchorclip caption caption.yaml`: the keys are the flags; flags after the file override it."""
    import yaml

    from anchorclip.cli import main

    config = {
        "dataset_name": dataset_dir, "captioner": captioner_dir, "output_dir": str(tmp_path / "from-config"),
        "batch_size": 2, "shard_size": 4, "max_new_tokens": 6, "num_workers": 0, "progress": False,
        "generation_kwargs": {"num_beams": 1},
    }  # fmt: skip
    (tmp_path / "caption.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "overridden"
    assert main(["caption", str(tmp_path / "caption.yaml"), "--output_dir", str(out)]) == 0
    assert datasets.load_from_disk(str(out))["caption"] == reference["caption"]
    arguments = json.loads((out / "anchorclip_provenance.json").read_text())["arguments"]
    assert arguments["generation_kwargs"] == {"num_beams": 1} and arguments["resume"] is True


def test_prompt_starts_the_decoder_and_is_stripped(captioner_dir, dataset_dir):
    """VisionEncoderDecoder path (image processor + tokenizer): the prompt becomes decoder_input_ids."""
    prompted = Captioner.from_pretrained(captioner_dir, prompt="a photo of", max_new_tokens=4, device="cpu")
    image = datasets.load_from_disk(dataset_dir)[0]["image"].convert("RGB")
    inputs = prompted.preprocessor([image])
    assert inputs["decoder_input_ids"].tolist() == [[1, 4, 5, 6]]  # [BOS] a photo of
    continuation = prompted.model.generate(**inputs, max_new_tokens=4)[0, 4:]
    expected = " ".join(prompted.preprocessor.tokenizer.decode(continuation, skip_special_tokens=True).split())
    assert prompted([image]) == [expected]


def test_processor_model_with_echoed_prompt(tmp_path, dataset_dir):
    """A BLIP-style checkpoint (one multimodal processor, AutoModelForImageTextToText) with a text prompt."""
    from transformers import (
        BertTokenizerFast,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", *CAPTION_WORDS]
    (tmp_path / "vocab.txt").write_text("\n".join(words))
    tokenizer = BertTokenizerFast(str(tmp_path / "vocab.txt"), bos_token="[DEC]")
    text = {
        "vocab_size": len(words), "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 37, "encoder_hidden_size": 32, "bos_token_id": 5, "pad_token_id": 0, "sep_token_id": 3,
        "eos_token_id": 3, "max_position_embeddings": 64, "initializer_range": 1.0,
    }  # fmt: skip
    vision = {
        "image_size": 32, "patch_size": 16, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 37, "initializer_range": 1.0,
    }  # fmt: skip
    torch.manual_seed(0)
    BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision)).save_pretrained(tmp_path / "blip")
    BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer).save_pretrained(tmp_path / "blip")

    captioner = Captioner.from_pretrained(str(tmp_path / "blip"), prompt="a photo of", max_new_tokens=4, device="cpu")
    assert captioner.preprocessor.processor is not None
    result = caption_dataset(dataset_dir, captioner, tmp_path / "out", max_rows=3, num_workers=0, progress=False)
    assert len(result) == 3
    # BLIP returns "[DEC] a photo of ..." (not a plain echo of its input ids): the prompt is stripped as text.
    image = datasets.load_from_disk(dataset_dir)[0]["image"].convert("RGB")
    raw = captioner.model.generate(**captioner.preprocessor([image]), max_new_tokens=4)
    echoed = " ".join(captioner.preprocessor.tokenizer.decode(raw[0], skip_special_tokens=True).split())
    assert echoed.startswith("a photo of") and result["caption"][0] == echoed[len("a photo of") :].strip()


@pytest.mark.slow
def test_two_processes_match_one(captioner_dir, dataset_dir, reference, tmp_path):
    out = tmp_path / "two"
    # `--cpu` would use accelerate's single-process launcher; `--multi_gpu` spawns torchrun-style processes, which
    # join a gloo group on a machine without GPUs.
    command = [*LAUNCH, "--multi_gpu", "--num_processes", "2", "--main_process_port", str(free_port())]
    command += ["-m", "anchorclip", "caption", "--dataset_name", dataset_dir]
    command += ["--captioner", captioner_dir, "--output_dir", str(out), "--batch_size", "2", "--shard_size", "4"]
    command += ["--max_new_tokens", "6", "--num_workers", "0", "--no_progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(anchorclip.__file__).parents[1])}
    done = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert datasets.load_from_disk(str(out))["caption"] == reference["caption"]
    assert json.loads((out / "anchorclip_provenance.json").read_text())["num_processes"] == 2


def test_encoder_decoder_captions_are_unchanged_by_the_decoder_mask_and_warn_nothing(captioner_dir):
    # A row that ends early is padded while the others go on; without a decoder mask transformers warns about it.
    import logging

    captioner = Captioner.from_pretrained(captioner_dir, max_new_tokens=12, device="cpu")
    images = [Image.open(io.BytesIO(_png(seed))) for seed in range(10)]
    pixels = captioner.preprocessor(images)["pixel_values"]
    plain = captioner.model.generate(pixel_values=pixels, max_new_tokens=12, max_length=None, do_sample=False)
    eos, pad = captioner.model.config.eos_token_id, captioner.model.config.pad_token_id
    assert any(eos in row[:-1] and row[-1] == pad for row in plain.tolist())  # some caption ended early
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    library = logging.getLogger("transformers")
    library.addHandler(handler)
    logging.Logger.warning_once.cache_clear()  # transformers warns once per process
    try:
        captions = captioner(images)
    finally:
        library.removeHandler(handler)
    assert not [record for record in records if "attention_mask" in record.getMessage()]
    decoded = captioner.preprocessor.tokenizer.batch_decode(plain, skip_special_tokens=True)
    assert captions == [" ".join(text.split()) for text in decoded]
