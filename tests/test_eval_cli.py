"""`anchorclip eval` and `anchorclip train --method zeroshot`: checkpoints scored with no finetune set, in every
format an evaluation set comes in (stand-ins built here), class subsets scored over their own logits only."""

import io
import json
import os

import datasets
import numpy as np
import pytest
import torch
from conftest import CLASS_NAMES, make_model, make_processor
from helpers import clip_benchmark_folder, noise_png
from PIL import Image

from anchorclip.cli import main as cli
from anchorclip.evaluation import EvalSet
from anchorclip.evaluation.zero_shot import ZeroShotScorer
from anchorclip.transforms import ImageTransform


def imagefolder(root, per_class=2):
    for c, name in enumerate(CLASS_NAMES):
        os.makedirs(root / "train" / name)
        for i in range(per_class):
            (root / "train" / name / f"{i}.png").write_bytes(noise_png(10 * c + i))
    return root


def saved_dataset(root):
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASS_NAMES)})
    images = [Image.open(io.BytesIO(noise_png(i))) for i in range(8)]
    datasets.Dataset.from_dict({"image": images, "label": [i % 4 for i in range(8)]}, features=features).save_to_disk(
        str(root)
    )
    return root


@pytest.mark.parametrize("kind", ["clip_benchmark", "imagefolder", "save_to_disk"])
def test_eval_writes_top1_without_finetune_set(kind, model_dir, tmp_path):
    make = {"clip_benchmark": clip_benchmark_folder, "imagefolder": imagefolder, "save_to_disk": saved_dataset}
    folder = make[kind](tmp_path / f"wds_{kind}")
    spec = f"{folder}:test" if kind == "clip_benchmark" else str(folder)  # an ImageFolder: its only split
    out = tmp_path / "out"
    assert (
        cli(
            [
                "eval",
                "--model_name_or_path",
                model_dir,
                "--eval_datasets",
                f"X@zero_shot={spec}",
                "--output-dir",
                str(out),
                "--dataloader_num_workers",
                "0",
                "--eval_templates",
                "simple",
            ]
        )
        == 0
    )
    results = json.loads((out / "results.json").read_text())
    (summary,) = results["evaluated"].values()
    assert 0.0 <= summary["sets"]["X"] <= 1.0 and summary["groups"]["zero_shot"] == summary["sets"]["X"]
    assert set(summary["metrics"]["X"]) == {"top1", "mean_per_class_recall"}  # 4 classes: no top-5
    assert results["eval_groups"] == {"X": "zero_shot"}
    assert "| model | zero-shot avg | X |" in (out / "results.md").read_text()


def test_eval_from_yaml_config_and_wise_between(model_dir, tmp_path):
    folder = clip_benchmark_folder(tmp_path / "wds_cars")
    finetuned = tmp_path / "finetuned"
    model = make_model(seed=1)
    model.save_pretrained(finetuned)
    make_processor().save_pretrained(finetuned)
    config = tmp_path / "eval.yaml"
    config.write_text(
        f"wise_between: [{model_dir}, {finetuned}]\nwise_alphas: [0.0, 1.0]\n"
        f"eval_datasets: ['cars@zero_shot={folder}:test']\noutput_dir: {tmp_path / 'out'}\ndataloader_num_workers: 0\n"
    )
    assert cli(["eval", str(config)]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(results) >= {"zeroshot", "finetuned", "wise"}
    # α=0 is the zero-shot model and α=1 the finetuned one, exactly.
    assert results["wise"]["0.0"]["metrics"] == results["zeroshot"]["metrics"]
    assert results["wise"]["1.0"]["metrics"] == results["finetuned"]["metrics"]


def test_train_zeroshot_loads_no_finetune_set(model_dir, tmp_path):
    folder = clip_benchmark_folder(tmp_path / "wds_pets")
    out = tmp_path / "out"
    code = cli(
        [
            "train",
            "--method",
            "zeroshot",
            "--model_name_or_path",
            model_dir,
            "--dataset_name",
            str(tmp_path / "does-not-exist"),  # never read: zero-shot trains nothing
            "--eval_datasets",
            f"pets@zero_shot={folder}:test",
            "--output_dir",
            str(out),
            "--report_to",
            "none",
            "--dataloader_num_workers",
            "0",
        ]
    )
    assert code == 0
    assert "pets" in json.loads((out / "results.json").read_text())["zeroshot"]["sets"]


class _OneProcess:
    """What the scorer asks of an Accelerator, for one process (no global AcceleratorState is created)."""

    def prepare_data_loader(self, loader):
        return loader

    def gather_for_metrics(self, tensors):
        return tensors


def _scorer(model):
    return ZeroShotScorer(
        model,
        make_processor().tokenizer,
        ImageTransform(size=16),
        _OneProcess(),
        batch_size=8,
        templates=["a photo of a {}."],
        progress=False,
    )


def test_class_subset_scores_over_its_own_logits_only():
    """A 200-class set of a 1,000-class label space is scored over its 200 parent classes only: the same
    metrics as a set whose class names are exactly those 200, although every image's best class of all 1,000
    lies outside them (which the subset is drawn to ensure)."""
    model = make_model()
    words = "small big red green blue yellow".split()
    parent = [f"a {words[i % 6]} {words[(i // 6) % 6]} {CLASS_NAMES[(i // 36) % 4]}" for i in range(1000)]
    images = [Image.open(io.BytesIO(noise_png(i))) for i in range(24)]
    head = model.build_zero_shot_head(parent, ["a photo of a {}."], make_processor().tokenizer)
    pixels = torch.stack([ImageTransform(size=16)(image.convert("RGB")) for image in images])
    with torch.no_grad():
        best = set((model(pixel_values=pixels).image_embeds @ head.t()).argmax(-1).tolist())
    outside = [i for i in range(1000) if i not in best]
    subset = sorted(np.random.default_rng(0).choice(outside, 200, replace=False).tolist())
    labels = [i % 200 for i in range(0, 24 * 37, 37)]
    dataset = datasets.Dataset.from_dict({"image": images, "label": labels})
    scorer = _scorer(model)
    scored = scorer.score(EvalSet(dataset, class_names=parent, class_subset=subset))
    assert scored == scorer.score(EvalSet(dataset, class_names=[parent[i] for i in subset]))
    # Scored over all 1,000 logits instead, no image could be right.
    in_parent_space = datasets.Dataset.from_dict({"image": images, "label": [subset[label] for label in labels]})
    assert scorer.score(EvalSet(in_parent_space, class_names=parent))["top1"] == 0.0


def test_class_subset_groups_score_by_their_best_parent():
    """ObjectNet-style: a set class maps to several parent classes and scores the best of them."""
    model = make_model()
    images = [Image.open(io.BytesIO(noise_png(i))) for i in range(8)]
    dataset = datasets.Dataset.from_dict({"image": images, "label": [0, 1] * 4})
    scorer = _scorer(model)
    groups = scorer.score(EvalSet(dataset, class_names=CLASS_NAMES, class_subset=[[0, 1], [2, 3]]))
    head = model.build_zero_shot_head(CLASS_NAMES, ["a photo of a {}."], make_processor().tokenizer)
    pixels = torch.stack([ImageTransform(size=16)(image.convert("RGB")) for image in images])
    with torch.no_grad():
        best_parent = (model(pixel_values=pixels).image_embeds @ head.t()).argmax(-1)
    expected = float(np.mean([(p // 2) == label for p, label in zip(best_parent.tolist(), [0, 1] * 4)]))
    assert groups["top1"] == pytest.approx(expected)


def test_retrieval_set_recalls():
    """Image i's captions are rows 2i, 2i+1 (two captions per image); recall@10 covers every text here."""
    model = make_model()
    images = [Image.open(io.BytesIO(noise_png(i))) for i in range(6)]
    captions = [[f"a photo of a {name}", f"a sketch of a {name}"] for name in CLASS_NAMES + CLASS_NAMES[:2]]
    dataset = datasets.Dataset.from_dict({"image": images, "caption": captions})
    scores = _scorer(model).score(EvalSet(dataset, group="retrieval"))
    assert set(scores) == {f"{d}_recall@{k}" for d in ("image2text", "text2image") for k in (1, 5, 10)}
    assert scores["image2text_recall@10"] == 1.0 and scores["text2image_recall@10"] == 1.0  # 12 texts, 6 images
    for direction in ("image2text", "text2image"):
        assert scores[f"{direction}_recall@1"] <= scores[f"{direction}_recall@5"] <= 1.0


def test_metrics_by_hand():
    from anchorclip.evaluation.metrics import classification_metrics, retrieval_metrics

    metrics = classification_metrics(10)
    metrics.add_batch(predictions=[[1, 2, 3, 4, 5], [0, 1, 2, 3, 4], [9, 8, 7, 6, 5]], references=[[1], [1], [0]])
    assert metrics.compute() == pytest.approx({"top1": 1 / 3, "top5": 2 / 3, "mean_per_class_recall": 0.25})
    recall = retrieval_metrics("image2text", (1, 5))
    recall.add_batch(predictions=[[4, 0, 1, 2, 3], [0, 1, 2, 3, 4]], references=[[0, 3], [9]])
    assert recall.compute() == {"image2text_recall@1": 0.0, "image2text_recall@5": 0.5}


def test_every_command_has_help_and_both_spellings(capsys, tmp_path):
    from anchorclip.cli import eval as eval_cli
    from anchorclip.cli import retrieve as retrieve_cli
    from anchorclip.cli import train as train_cli

    for command in ("train", "eval", "retrieve"):
        with pytest.raises(SystemExit) as exit_info:
            cli([command, "--help"])
        assert exit_info.value.code == 0
        text = capsys.readouterr().out
        assert "--output_dir" in text and "--output-dir" in text
    # Each spelling sets the same field (and overrides the default) in every command's parser.
    parsers = {
        "train": lambda argv: train_cli.parse_args(argv)[2],
        "eval": eval_cli.parse_args,
        "retrieve": lambda argv: retrieve_cli.parse_args(["--pool", "p", "--model_name_or_path", "m", *argv]),
    }
    for command, parse in parsers.items():
        for spelling in ("--output_dir", "--output-dir"):
            target = str(tmp_path / command / spelling.strip("-"))
            assert parse([spelling, target]).output_dir == target, (command, spelling)


def test_sets_with_equal_names_and_templates_share_one_head(monkeypatch):
    model = make_model()
    calls = []
    build = model.build_zero_shot_head
    monkeypatch.setattr(model, "build_zero_shot_head", lambda *a, **k: calls.append(a[0]) or build(*a, **k))
    images = [Image.open(io.BytesIO(noise_png(i))) for i in range(4)]
    dataset = datasets.Dataset.from_dict({"image": images, "label": [0, 1, 2, 3]})
    scorer = _scorer(model)
    first = scorer.score(EvalSet(dataset, class_names=CLASS_NAMES))
    assert scorer.score(EvalSet(dataset, class_names=CLASS_NAMES)) == first
    scorer.score(EvalSet(dataset, class_names=CLASS_NAMES[::-1]))
    assert len(calls) == 2


def test_shipped_class_name_files_by_name():
    from anchorclip.evaluation.formats import class_names_from_file

    names = class_names_from_file("imagenet1k.json")
    assert len(names) == 1000 and names[:2] == ["tench", "goldfish"]
