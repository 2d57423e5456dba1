"""Evaluation suites as data: the shipped suites parse, their facts hold, data roots and user YAMLs work."""

import json
import os

import pytest
from helpers import TOY_CLASSES, toy_wds

from anchorclip.evaluation import suites
from anchorclip.evaluation.suites import build_eval_set, list_suites, load_suite, load_suite_sets, resolve_dataset_spec
from anchorclip.miniworld import EVAL_SPLITS, SPLITS


def _names(entry):
    return suites._class_names(entry, None, None, None, None)


def _subset(entry):
    return suites._class_subset(entry.class_subset, entry.base_dir)


def _shipped(name):
    with open(os.path.join(suites.CLASSNAMES_DIR, name), encoding="utf-8") as file:
        return json.load(file)


def test_every_shipped_suite_parses_and_resolves_without_data():
    assert {"imagenet-ood", "zeroshot-transfer", "miniworld"} <= set(list_suites())
    for suite in list_suites():
        for entry in load_suite(suite):
            if entry.group == "retrieval":
                assert entry.caption_column
                continue
            if entry.class_names not in suites.FROM_SOURCE:
                assert _names(entry)
            templates = suites._templates(entry.templates, ["a {}."], entry.base_dir)
            assert templates and all(t.count("{}") == 1 for t in templates)
            subset = _subset(entry)
            assert subset is None or all(
                0 <= i < len(_names(entry)) for s in subset for i in ([s] if isinstance(s, int) else s)
            )


def test_shipped_data_files_name_their_source():
    for name in os.listdir(suites.CLASSNAMES_DIR):
        assert "source" in _shipped(name), name
    for name in os.listdir(suites.TEMPLATES_DIR):
        with open(os.path.join(suites.TEMPLATES_DIR, name), encoding="utf-8") as file:
            assert "source" in json.load(file), name


def test_imagenet_ood_subsets():
    entries = {e.name: e for e in load_suite("imagenet-ood")}
    assert list(entries) == ["imagenet", "imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r", "objectnet"]
    names = _names(entries["imagenet"])
    assert len(names) == 1000 and names[0] == "tench" and names[409] == "analog clock"
    wnids = _shipped("imagenet1k.json")["wnids"]
    assert wnids == sorted(wnids) and len(set(wnids)) == 1000  # index = the standard ImageNet-1k label
    for name, first in (("imagenet_a", 6), ("imagenet_r", 1)):
        subset = _subset(entries[name])
        # 200 distinct ImageNet indices, ascending: the wds repos' labels 0..199 are the sorted wnid folders
        assert len(subset) == len(set(subset)) == 200 and subset == sorted(subset) and subset[0] == first
        assert all(0 <= i < 1000 for i in subset)
        assert [wnids[i] for i in subset] == _shipped(f"{name}_subset.json")["wnids"]
        assert "0..199" in _shipped(f"{name}_subset.json")["label_space"]
    objectnet = _subset(entries["objectnet"])
    assert len(objectnet) == 113 and all(isinstance(s, list) and s for s in objectnet)
    flat = [i for s in objectnet for i in s]
    assert len(flat) == len(set(flat)) == 125 and all(0 <= i < 1000 for i in flat)
    folders = _shipped("objectnet_subset.json")["folders"]
    assert folders == sorted(folders) and folders[0] == "alarm_clock"
    assert "0..112" in _shipped("objectnet_subset.json")["label_space"]  # wds_objectnet: sorted-folder labels
    assert [names[i] for i in objectnet[0]] == ["analog clock", "digital clock"]
    assert all(e.dataset.startswith("clip-benchmark/wds_") for e in entries.values())


def test_zeroshot_transfer_has_ten_sets_with_names_and_templates():
    entries = load_suite("zeroshot-transfer")
    sizes = {e.name: len(_names(e)) for e in entries}
    assert sizes == {
        "caltech101": 102,
        "oxford_pets": 37,
        "stanford_cars": 196,
        "flowers102": 102,
        "food101": 101,
        "fgvc_aircraft": 100,
        "sun397": 397,
        "dtd": 47,
        "eurosat": 10,
        "ucf101": 101,
    }
    for entry in entries:
        assert entry.group == "zero_shot" and suites._templates(entry.templates, None, entry.base_dir)


def test_data_root_resolution(tmp_path):
    os.makedirs(tmp_path / "wds_cars")
    assert resolve_dataset_spec("clip-benchmark/wds_cars", str(tmp_path)) == str(tmp_path / "wds_cars")
    assert resolve_dataset_spec("clip-benchmark/wds_cars:test", str(tmp_path)) == f"{tmp_path / 'wds_cars'}:test"
    assert resolve_dataset_spec("clip-benchmark/wds_dtd", str(tmp_path)) == "clip-benchmark/wds_dtd"
    assert resolve_dataset_spec("clip-benchmark/wds_cars", None) == "clip-benchmark/wds_cars"
    assert resolve_dataset_spec("miniworld:test_photo", str(tmp_path)) == "miniworld:test_photo"


def test_user_yaml_suite_end_to_end(tmp_path):
    toy_wds(tmp_path / "data" / "wds_toy")
    (tmp_path / "parent.txt").write_text("# source: a test\nkitten\nhorse\npuppy\nsparrow\n")
    (tmp_path / "suite.yaml").write_text(
        "name: mine\n"
        "sets:\n"
        "  - {name: toy, group: domain_shift, dataset: someone/wds_toy, split: test,\n"
        "     class_names: folder, templates: folder}\n"
        "  - {name: toy_sub, group: zero_shot, dataset: someone/wds_toy:test, class_names: {file: parent.txt},\n"
        "     templates: ['a photo of a {}.'], class_subset: [0, [2, 1], 3]}\n"
    )
    sets = load_suite_sets(
        str(tmp_path / "suite.yaml"), data_root=str(tmp_path / "data"), cache_dir=str(tmp_path / "c")
    )
    toy, sub = sets["toy"], sets["toy_sub"]
    assert toy.group == "domain_shift" and toy.class_names == TOY_CLASSES and toy.class_subset is None
    assert toy.templates == ["a photo of a {}.", "a sketch of a {}."] and toy.dataset["label"] == [0, 1, 2, 0, 2]
    assert (toy.image_column, toy.label_column) == ("image", "label")
    assert sub.class_names == ["kitten", "horse", "puppy", "sparrow"] and sub.class_subset == [[0], [2, 1], [3]]
    assert sub.metadata["suite_set"] == "toy_sub" and sub.metadata["format"] == "webdataset"


def test_subset_or_names_that_disagree_with_the_source_fail(tmp_path):
    toy_wds(tmp_path / "wds_toy")
    entry = suites.SuiteEntry("x", "zero_shot", str(tmp_path / "wds_toy"), class_names=["a", "b"], class_subset=[0, 1])
    with pytest.raises(ValueError, match="has 3 classes, class_subset has 2"):
        build_eval_set(entry, cache_dir=str(tmp_path / "c"))
    entry = suites.SuiteEntry("x", "zero_shot", str(tmp_path / "wds_toy"), class_names=["a", "b"])
    with pytest.raises(ValueError, match="has 3 classes, class_names has 2"):
        build_eval_set(entry, cache_dir=str(tmp_path / "c"))


def test_bad_suite_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="No suite 'nope'"):
        load_suite("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("sets:\n  - {name: a, group: ood, dataset: x}\n")
    with pytest.raises(ValueError, match="group 'ood' is not one of"):
        load_suite(str(bad))
    bad.write_text("sets:\n  - {name: a, group: id, dataset: x, classnames: folder}\n")
    with pytest.raises(ValueError, match=r"unknown keys \['classnames'\]"):
        load_suite(str(bad))


def test_miniworld_suite_builds_from_the_world(tmp_path, monkeypatch):
    monkeypatch.setenv("ANCHORCLIP_CACHE", str(tmp_path))
    sets = load_suite_sets("miniworld", only=["test_sketch", "test_retrieval"], miniworld_size=8)
    sketch, retrieval = sets["test_sketch"], sets["test_retrieval"]
    assert sketch.group == "domain_shift" and len(sketch.dataset) == 8 and sketch.class_names and sketch.templates
    assert retrieval.is_retrieval and (retrieval.image_column, retrieval.caption_column) == ("image", "caption")
    assert retrieval.class_names is None and len(retrieval.dataset) == 8
    entries = load_suite("miniworld")  # the same sets, in the same groups, as miniworld_eval_sets
    assert [(e.name, e.group) for e in entries] == [(name, SPLITS[name].group) for name in EVAL_SPLITS]
