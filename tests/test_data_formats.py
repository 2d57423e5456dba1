"""Data as people bring it (CSV / JSON Lines with image paths, parquet with image bytes in Hugging Face's and
img2dataset's form, webdataset tar folders as img2dataset writes them, ImageFolder with metadata.jsonl), read at
every door: `load_dataset_any`, `anchorclip train`, `caption`, `retrieve` (pool, --streaming, --leakage_sets,
2 processes) and `eval`; and the errors that name the file and row."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
import tarfile
import time

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import CLASS_NAMES, make_model, make_processor
from PIL import Image

from anchorclip.cli import main as cli
from anchorclip.data import CAPTION_COLUMNS, IMAGE_COLUMNS, LABEL_COLUMNS, ColumnError, find_column, load_dataset_any

ROWS = 8


def _jpg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (20, 24, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def _label(i: int) -> str:
    return CLASS_NAMES[i % len(CLASS_NAMES)]


def _caption(i: int) -> str:
    return f"a photo of a {_label(i)}"


def write_csv(root):
    """run_clip.py's --train_file: image paths relative to the CSV, class names as labels."""
    (root / "images").mkdir(parents=True)
    lines = ["image_path,label"]
    for i in range(ROWS):
        (root / "images" / f"{i}.jpg").write_bytes(_jpg(i))
        lines.append(f"images/{i}.jpg,{_label(i)}")
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    return root / "train.csv"


def write_jsonl(root):
    """An image-text set as JSON Lines, the images in a folder beside it under a non-standard column name."""
    (root / "pics").mkdir(parents=True)
    with open(root / "pairs.jsonl", "w") as file:
        for i in range(ROWS):
            (root / "pics" / f"{i}.jpg").write_bytes(_jpg(100 + i))
            file.write(json.dumps({"filepath": f"pics/{i}.jpg", "caption": _caption(i)}) + "\n")
    return root / "pairs.jsonl"


def write_hf_parquet(root):
    """Hugging Face's parquet export: data/train-0000N-of-00002.parquet, image as a {bytes, path} struct."""
    (root / "data").mkdir(parents=True)
    table = pa.table(
        {
            "image": [{"bytes": _jpg(200 + i), "path": f"{i}.jpg"} for i in range(ROWS)],
            "label": [i % len(CLASS_NAMES) for i in range(ROWS)],
            "caption": [_caption(i) for i in range(ROWS)],
        }
    )
    for shard in range(2):
        part = table.slice(shard * ROWS // 2, ROWS // 2)
        pq.write_table(part, root / "data" / f"train-{shard:05d}-of-00002.parquet")
    (root / "classnames.txt").write_text("\n".join(CLASS_NAMES) + "\n")  # integer labels' names, in label order
    return root


def write_img2dataset_parquet(root):
    """img2dataset --output_format parquet: jpg bytes (null where the download failed), caption, url, stats."""
    root.mkdir(parents=True)
    for shard in range(2):
        rows = range(shard * ROWS // 2, (shard + 1) * ROWS // 2)
        table = pa.table(
            {
                "url": [f"http://example.com/{i}.jpg" for i in rows],
                "key": [f"{shard:05d}{i:04d}" for i in rows],
                "caption": [_caption(i) for i in rows],
                "jpg": [_jpg(300 + i) for i in rows],
                "status": ["success"] * len(rows),
            }
        )
        pq.write_table(table, root / f"{shard:05d}.parquet")
        (root / f"{shard:05d}_stats.json").write_text(json.dumps({"count": len(rows)}))
    return root


def write_webdataset(root, shards: int = 2):
    """img2dataset's default output: NNNNN.tar of KEY.jpg + KEY.txt + KEY.json, a .parquet and _stats.json beside."""
    root.mkdir(parents=True)
    for shard in range(shards):
        rows = range(shard * ROWS // shards, (shard + 1) * ROWS // shards)
        with tarfile.open(root / f"{shard:05d}.tar", "w") as tar:
            for i in rows:
                key = f"{shard:05d}{i:04d}"
                members = (("jpg", _jpg(400 + i)), ("txt", _caption(i).encode()), ("json", b'{"status": "ok"}'))
                for extension, data in members:
                    info = tarfile.TarInfo(f"{key}.{extension}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        pq.write_table(pa.table({"key": [f"{shard:05d}{i:04d}" for i in rows]}), root / f"{shard:05d}.parquet")
        (root / f"{shard:05d}_stats.json").write_text("{}")
    return root


def write_imagefolder(root):
    """A folder of class folders with a metadata.jsonl of captions (and labels: with a metadata file, `datasets`
    reads labels from it rather than from the folder names)."""
    with_captions = []
    for i in range(ROWS):
        folder = root / "train" / _label(i)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}.jpg").write_bytes(_jpg(500 + i))
        with_captions.append({"file_name": f"{_label(i)}/{i}.jpg", "caption": _caption(i), "label": _label(i)})
    (root / "train" / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in with_captions))
    return root


WRITERS = {
    "csv": write_csv,
    "jsonl": write_jsonl,
    "hf_parquet": write_hf_parquet,
    "img2dataset_parquet": write_img2dataset_parquet,
    "webdataset": write_webdataset,
    "imagefolder": write_imagefolder,
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return {name: str(write(root / name)) for name, write in WRITERS.items()}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt") / "tiny-clip"
    make_model().save_pretrained(folder)
    make_processor().save_pretrained(folder)
    return str(folder)


# ---------------------------------------------------------------- the loader


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("name", list(WRITERS))
def test_every_format_loads_with_images_and_text(name, streaming, data):
    dataset = load_dataset_any(data[name], streaming=streaming)
    image_column = find_column(dataset, None, IMAGE_COLUMNS, "image")
    rows = list(dataset)
    assert len(rows) == ROWS
    assert all(isinstance(row[image_column], Image.Image) for row in rows)
    if name in ("csv", "hf_parquet", "imagefolder"):
        label_column = find_column(dataset, None, LABEL_COLUMNS, "label")
        labels = [row[label_column] for row in rows]
        if streaming and name == "imagefolder":  # a stream is not read ahead to list its class names
            labels = [sorted(CLASS_NAMES).index(label) for label in labels]
        assert sorted(set(labels)) == list(range(len(CLASS_NAMES)))
    if name == "csv":  # class names as labels become a ClassLabel, names sorted as ImageFolder sorts its folders
        assert dataset.features["label"].names == sorted(CLASS_NAMES)
        assert [dataset.features["label"].names[label] for label in labels] == [_label(i) for i in range(ROWS)]
    if name != "csv":
        caption_column = find_column(dataset, None, CAPTION_COLUMNS, "caption")
        assert sorted(row[caption_column] for row in rows) == sorted(_caption(i) for i in range(ROWS))
    if streaming and name in ("hf_parquet", "img2dataset_parquet", "webdataset"):
        assert dataset.num_shards == 2  # one per file: a streamed pool is dealt to processes by file


def test_relative_paths_resolve_against_the_file_not_the_working_directory(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dataset = load_dataset_any(os.path.relpath(data["csv"]))
    assert os.path.isabs(dataset.cast_column("image_path", datasets.Image(decode=False))[0]["image_path"]["path"])


def test_a_local_spec_that_does_not_exist_fails_at_once_naming_it(tmp_path):
    for spec in ["./train.csv", "my/data/train.parquet", "shards.tar", str(tmp_path / "missing")]:
        start = time.monotonic()
        with pytest.raises(FileNotFoundError, match=re.escape(spec)):
            load_dataset_any(spec)
        assert time.monotonic() - start < 1.0  # no Hub lookup, no retries


def test_unresolvable_image_path_names_file_and_row(tmp_path):
    (tmp_path / "a.jpg").write_bytes(_jpg(0))
    (tmp_path / "train.csv").write_text("image,label\na.jpg,circle\nmissing.jpg,square\n")
    with pytest.raises(FileNotFoundError, match=r"train\.csv, row 1 \(line 3\).*missing\.jpg"):
        load_dataset_any(str(tmp_path / "train.csv"))


def test_missing_column_and_label_outside_the_class_list(tmp_path):
    (tmp_path / "a.jpg").write_bytes(_jpg(0))
    (tmp_path / "train.csv").write_text("image,label\na.jpg,circle\na.jpg,hexagon\n")
    with pytest.raises(KeyError, match="'picture' is missing"):
        load_dataset_any(str(tmp_path / "train.csv"), image_column="picture")
    with pytest.raises(ValueError, match=r"train\.csv, row 1: label 'hexagon' is not in the class list"):
        load_dataset_any(str(tmp_path / "train.csv"), class_names=CLASS_NAMES)
    encoded = load_dataset_any(str(tmp_path / "train.csv"))
    assert encoded.features["label"].names == ["circle", "hexagon"]


@pytest.mark.parametrize("streaming", [False, True])
def test_truncated_shard_or_parquet_or_csv_is_an_error_naming_it(streaming, tmp_path):
    root = write_webdataset(tmp_path / "wds")
    shard = root / "00001.tar"
    shard.write_bytes(shard.read_bytes()[:1500])
    with pytest.raises(ValueError, match=re.escape(str(shard))):
        load_dataset_any(str(root), streaming=streaming)
    root = write_hf_parquet(tmp_path / "parquet")
    (part,) = (root / "data").glob("train-00001-*.parquet")
    part.write_bytes(part.read_bytes()[:100])
    with pytest.raises(ValueError, match=re.escape(str(part))):
        load_dataset_any(str(root), streaming=streaming)
    (tmp_path / "bad.jsonl").write_text('{"image": "a.jpg"}\n{not json\n')
    with pytest.raises(ValueError, match="bad.jsonl"):
        load_dataset_any(str(tmp_path / "bad.jsonl"), streaming=streaming)


# ---------------------------------------------------------------- the doors


def _eval(checkpoint, spec, out, group="zero_shot"):
    args = ["eval", "--model_name_or_path", checkpoint, "--eval_datasets", f"X@{group}={spec}"]
    assert cli([*args, "--output-dir", str(out), "--dataloader_num_workers", "0", "--eval_templates", "simple"]) == 0
    return json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("name", list(WRITERS))
def test_eval_door_reads_every_format(name, data, checkpoint, tmp_path):
    """Labelled sets score top-1; image-text sets (no labels) score image-text retrieval."""
    group = "zero_shot" if name in ("csv", "hf_parquet", "imagefolder") else "retrieval"
    results = _eval(checkpoint, data[name], tmp_path / "out", group)
    (summary,) = results["evaluated"].values()
    assert 0.0 <= summary["sets"]["X"] <= 1.0
    metrics = summary["metrics"]["X"]
    assert "top1" in metrics if group == "zero_shot" else any("recall" in key for key in metrics), metrics


def test_caption_door_reads_every_format(data, tmp_path):
    from test_captioning import save_tiny_captioner

    captioner = save_tiny_captioner(tmp_path / "captioner")
    for name in WRITERS:
        out = tmp_path / name
        args = ["caption", "--dataset_name", data[name], "--captioner", captioner, "--output_dir", str(out)]
        assert cli([*args, "--batch_size", "8", "--max_new_tokens", "4", "--no_progress"]) == 0
        captions = datasets.load_from_disk(str(out))
        assert len(captions) == ROWS and all(isinstance(text, str) for text in captions["caption"])


def _retrieve_args(checkpoint, pool, tmp_path):
    return ["--pool", pool, "--model_name_or_path", checkpoint, "--cache_dir", str(tmp_path / "cache")] + [
        "--shard_size", "4", "--batch_size", "4", "--k_per_class", "1", "--class_names", *CLASS_NAMES,
        "--dedup_threshold", "0",  # the tiny random CLIP sees every noise image as a near-duplicate of the others
    ]  # fmt: skip


@pytest.mark.parametrize("name", ["jsonl", "img2dataset_parquet", "webdataset", "hf_parquet", "imagefolder"])
def test_retrieve_door_reads_pools_streamed_or_not_with_leakage_sets(name, data, checkpoint, tmp_path):
    common = _retrieve_args(checkpoint, data[name], tmp_path)
    assert cli(["retrieve", *common, "--output_dir", str(tmp_path / "out")]) == 0
    anchors = datasets.load_from_disk(str(tmp_path / "out"))
    assert 0 < len(anchors) <= len(CLASS_NAMES)
    # The leakage set is read and embedded (a parquet folder); at a threshold over 1 it removes nothing, since the
    # tiny random CLIP puts every noise image near every other.
    leakage = ["--leakage_sets", data["csv"], data["webdataset"], "--leakage_threshold", "1.01"]
    assert cli(["retrieve", *common, "--streaming", *leakage, "--output_dir", str(tmp_path / "streamed")]) == 0
    streamed = datasets.load_from_disk(str(tmp_path / "streamed"))
    assert streamed["pool_index"] == anchors["pool_index"]


@pytest.mark.parametrize(
    "finetune, pairs", [("csv", "webdataset"), ("hf_parquet", "img2dataset_parquet"), ("imagefolder", "jsonl")]
)
def test_train_door_finetune_sets_and_pair_anchors(finetune, pairs, data, checkpoint, tmp_path):
    out = tmp_path / "out"
    args = [
        "train", "--model_name_or_path", checkpoint, "--dataset_name", data[finetune], "--method", "arf",
        "--lambda_caption", "0", "--pair_anchors", data[pairs], "--eval_datasets", f"X@zero_shot={data[finetune]}",
        "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "4", "--save_strategy",
        "no", "--report_to", "none", "--use_cpu", "--dataloader_num_workers", "0", "--eval_templates", "simple",
    ]  # fmt: skip
    assert cli(args) == 0
    assert (out / "model.safetensors").exists()


def test_streamed_webdataset_pool_split_over_two_processes(data, checkpoint, tmp_path):
    root = write_webdataset(tmp_path / "wds4", shards=4)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
        "-m", "anchorclip", "retrieve", *_retrieve_args(checkpoint, str(root), tmp_path), "--streaming",
        "--output_dir", str(tmp_path / "two"),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    env.pop("ACCELERATE_USE_CPU", None)
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    # 4 tar shards of 2 rows: files 0 and 2 to process 0, 1 and 3 to process 1.
    assert re.search(r"process 0 read 2 of 4 stream files \(4 rows\)", result.stderr), result.stderr[-3000:]
    assert re.search(r"process 1 read 2 of 4 stream files \(4 rows\)", result.stderr), result.stderr[-3000:]
    assert len(datasets.load_from_disk(str(tmp_path / "two"))) > 0


def test_two_path_columns_are_both_images_and_a_named_label_column_is_encoded(tmp_path):
    (tmp_path / "a.jpg").write_bytes(_jpg(0))
    (tmp_path / "m.png").write_bytes(_jpg(1))
    (tmp_path / "train.csv").write_text("photo,mask,species\na.jpg,m.png,owl\na.jpg,m.png,crow\n")
    dataset = load_dataset_any(str(tmp_path / "train.csv"), label_column="species")
    assert isinstance(dataset.features["photo"], datasets.Image) and isinstance(
        dataset.features["mask"], datasets.Image
    )
    assert dataset.features["species"].names == ["crow", "owl"] and dataset["species"] == [1, 0]
    with pytest.raises(ColumnError, match="Name it explicitly"):  # two image columns, neither a known name
        find_column(dataset, None, IMAGE_COLUMNS, "image")
    assert find_column(dataset, "photo", IMAGE_COLUMNS, "image") == "photo"


def test_class_names_number_the_labels_in_their_order(data):
    names = list(reversed(CLASS_NAMES))
    dataset = load_dataset_any(data["csv"], class_names=names)
    assert dataset.features["label"].names == names
    assert [names[label] for label in dataset["label"]] == [_label(i) for i in range(ROWS)]


def test_a_bad_spec_fails_before_anything_is_written(data, checkpoint, tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "train.csv").write_text("image,label\nmissing.jpg,circle\n")
    from test_captioning import save_tiny_captioner

    captioner = save_tiny_captioner(tmp_path / "captioner")
    caption = ["caption", "--dataset_name", str(tmp_path / "bad" / "train.csv"), "--captioner", captioner]
    with pytest.raises(FileNotFoundError, match=r"train\.csv, row 0 \(line 2\)"):
        cli([*caption, "--output_dir", str(tmp_path / "captions")])
    with pytest.raises(FileNotFoundError, match="nope.parquet"):
        cli(["retrieve", *_retrieve_args(checkpoint, "./nope.parquet", tmp_path), "--output_dir", str(tmp_path / "a")])
    assert not (tmp_path / "captions").exists() and not (tmp_path / "a").exists()
