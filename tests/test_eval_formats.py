"""Evaluation-set formats: CLIP_benchmark webdataset folders, ImageFolders, class-name files (all offline)."""

import io
import json
import os

import datasets
import pytest
from helpers import TOY_CLASSES, colour_png, toy_wds, write_tar
from PIL import Image

from anchorclip.evaluation.formats import SourceInfo, class_names_from_file, is_wds_folder, load_eval_dataset


def test_wds_folder_loads_labels_names_templates(tmp_path):
    root = toy_wds(tmp_path / "wds_toy")
    assert is_wds_folder(str(root))
    dataset, info = load_eval_dataset(f"{root}:test", cache_dir=str(tmp_path / "cache"))
    assert dataset["label"] == [0, 1, 2, 0, 2]
    assert dataset["key"] == [f"s{i:07d}" for i in range(5)]
    assert dataset.features["image"].decode is False
    assert Image.open(io.BytesIO(dataset[3]["image"]["bytes"])).getpixel((0, 0)) == (120, 0, 0)
    assert info.kind == "webdataset" and info.class_names == TOY_CLASSES
    assert info.templates == ["a photo of a {}.", "a sketch of a {}."]  # CLIP_benchmark's {c} -> anchorclip's {}
    assert (info.image_column, info.label_column) == ("image", "label")
    assert info.metadata == {"root": str(root), "split": "test"}


def test_wds_shards_in_numeric_order_and_jpg(tmp_path):
    root = toy_wds(tmp_path / "wds", labels=list(range(3)) * 4, shards=11, extension="jpg")
    (root / "test" / "nshards.txt").unlink()
    dataset, _ = load_eval_dataset(str(root), cache_dir=str(tmp_path / "cache"))  # split defaults to test
    assert dataset["key"] == [f"s{i:07d}" for i in range(12)]  # 10.tar after 9.tar, not after 1.tar


def test_wds_missing_classnames_names_the_file(tmp_path):
    root = toy_wds(tmp_path / "wds")
    (root / "classnames.txt").unlink()
    with pytest.raises(FileNotFoundError, match="classnames.txt"):
        load_eval_dataset(str(root), cache_dir=str(tmp_path / "cache"))


def test_wds_label_out_of_range_names_the_shard(tmp_path):
    root = toy_wds(tmp_path / "wds", labels=(0, 1, 2, 3))
    with pytest.raises(ValueError, match=r"1\.tar: s0000003\.cls is '3'"):
        load_eval_dataset(str(root), cache_dir=str(tmp_path / "cache"))


@pytest.mark.parametrize("cut", [100, 700])
def test_wds_truncated_shard_names_the_shard(tmp_path, cut):
    root = toy_wds(tmp_path / "wds")
    shard = root / "test" / "1.tar"
    shard.write_bytes(shard.read_bytes()[:cut])
    with pytest.raises(ValueError, match=r"1\.tar is unreadable or truncated"):
        load_eval_dataset(str(root), cache_dir=str(tmp_path / "cache"))


def test_wds_unpaired_members_name_the_shard(tmp_path):
    root = toy_wds(tmp_path / "wds")
    write_tar(root / "test" / "1.tar", [("s0000009", {"webp": colour_png((0, 0, 0))})])
    with pytest.raises(ValueError, match=r"1\.tar: example 's0000009' has an image but no \.cls"):
        load_eval_dataset(str(root), cache_dir=str(tmp_path / "cache"))
    write_tar(root / "test" / "1.tar", [("s0000009", {"cls": b"1"})])
    with pytest.raises(ValueError, match="a .cls label but no image"):
        load_eval_dataset(str(root), cache_dir=str(tmp_path / "cache"))


def test_wds_missing_split_and_empty_split_and_shard_count(tmp_path):
    root = toy_wds(tmp_path / "wds")
    with pytest.raises(FileNotFoundError, match=r"wds/train does not exist; .* has splits \['test'\]"):
        load_eval_dataset(f"{root}:train", cache_dir=str(tmp_path / "cache"))
    os.makedirs(root / "validation")
    with pytest.raises(FileNotFoundError, match="validation holds no .tar shards"):
        load_eval_dataset(f"{root}:validation")
    (root / "test" / "1.tar").unlink()
    with pytest.raises(ValueError, match=r"nshards.txt says 2 shards; .* holds 1"):
        load_eval_dataset(str(root), cache_dir=str(tmp_path / "cache"))


def _imagefolder(root, folders, split=None):
    base = root / split if split else root
    for index, folder in enumerate(folders):
        os.makedirs(base / folder)
        for j in range(2):
            Image.new("RGB", (4, 4), (index * 50, j, 0)).save(base / folder / f"{j}.png")
    return root


def test_imagefolder_with_only_train_is_the_eval_split(tmp_path):
    root = _imagefolder(tmp_path / "sketch", ["n01440764", "n01443537"])
    dataset, info = load_eval_dataset(str(root))  # asks for test; the folder's only split is train
    assert len(dataset) == 4 and info.kind == "imagefolder" and info.metadata["split"] == "train"
    assert info.class_names == ["n01440764", "n01443537"]


def test_imagefolder_with_several_splits_still_needs_the_right_one(tmp_path):
    root = _imagefolder(tmp_path / "two", ["a", "b"], split="train")
    _imagefolder(root, ["a", "b"], split="validation")
    with pytest.raises(ValueError, match="has splits"):
        load_eval_dataset(str(root))
    dataset, _ = load_eval_dataset(f"{root}:validation")
    assert len(dataset) == 4


def test_wnid_folders_mapped_to_curated_names(tmp_path):
    root = _imagefolder(tmp_path / "inet", ["n01443537", "n01440764"])
    mapping = tmp_path / "wnids.txt"
    mapping.write_text("# source: a test\nn01440764 tench\nn01443537 goldfish\nn09999999 unused\n")
    _, info = load_eval_dataset(str(root), class_names_file=str(mapping))
    assert info.class_names == ["tench", "goldfish"]  # folders sort n01440764 first
    shipped = os.path.join(os.path.dirname(__import__("anchorclip").__file__), "assets/classnames/imagenet1k.json")
    assert class_names_from_file(shipped, ["n01440764", "n01443537"]) == ["tench", "goldfish"]
    assert len(class_names_from_file(shipped)) == 1000  # the same file, read as a list in label order


def test_names_file_in_label_order_and_mismatches(tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("kitty\npuppy\n")
    assert class_names_from_file(str(names), ["cat", "dog"]) == ["kitty", "puppy"]
    with pytest.raises(ValueError, match="lists 2 names; the dataset has 3 labels"):
        class_names_from_file(str(names), TOY_CLASSES)
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"mapping": {"n01440764": "tench"}}))
    with pytest.raises(ValueError, match=r"map.json has no name for 1 labels"):
        class_names_from_file(str(mapping), ["n01440764", "n01443537"])


def test_hub_wds_repo_downloads_only_the_split(tmp_path, monkeypatch):
    import huggingface_hub

    root = toy_wds(tmp_path / "snapshot")
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(root)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    dataset, info = load_eval_dataset("clip-benchmark/wds_imagenet-a:test", cache_dir=str(tmp_path / "cache"))
    assert len(dataset) == 5 and info.class_names == TOY_CLASSES
    assert info.metadata["spec"] == "clip-benchmark/wds_imagenet-a"
    ((repo_id, kwargs),) = calls
    assert repo_id == "clip-benchmark/wds_imagenet-a" and kwargs["repo_type"] == "dataset"
    assert sorted(kwargs["allow_patterns"]) == sorted(
        ["test/*", "classnames.txt", "zeroshot_classification_templates.txt", "dataset_type.txt"]
    )


def test_a_registered_format_reads_its_specs():
    from anchorclip.evaluation.formats import EvalFormat, register_eval_format, scaled_size

    def load(name, size):
        rows = size or 10
        table = datasets.Dataset.from_dict({"label": [i % 2 for i in range(rows)]})
        return table, SourceInfo("toy", ["cat", "dog"], metadata={"split": name})

    register_eval_format("toyworld", EvalFormat(load=load, num_rows=lambda name: 10))
    dataset, info = load_eval_dataset("toyworld:test")
    assert (len(dataset), info.kind, info.class_names, info.metadata) == (10, "toy", ["cat", "dog"], {"split": "test"})
    assert len(load_eval_dataset("toyworld:test", size=4)[0]) == 4
    assert scaled_size("toyworld:test", 0.5) == 8 and scaled_size("toyworld:test", 1.0) is None  # at least 8 rows
    with pytest.raises(ValueError, match="plain name"):
        register_eval_format("a:b", EvalFormat(load=load))


@pytest.mark.slow
def test_the_library_does_not_import_the_miniature_world():
    """`miniworld:` specs are a registered format: nothing below the commands imports anchorclip.miniworld."""
    import subprocess
    import sys

    code = (
        "import sys, anchorclip, anchorclip.anchors.pairs, anchorclip.anchors.captions.job, anchorclip.distributed, "
        "anchorclip.evaluation.suites, anchorclip.cli.eval, anchorclip.cli.retrieve; "
        "print(sorted(m for m in sys.modules if m.startswith('anchorclip.miniworld')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
