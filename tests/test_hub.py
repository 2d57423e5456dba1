"""Push to the Hub: the upload folder (plain CLIP checkpoint + model card), offline dry run, card contents."""

import json
import logging
import os
import subprocess
import sys

import huggingface_hub
import pytest
import yaml
from conftest import (
    CLASS_NAMES,
    import_example,
    make_classification_dataset,
    make_images,
)
from helpers import PLAIN_TRANSFORMERS, build_tiny_world, free_port, make_trainer
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.utils import httpx

from anchorclip import AnchorCLIPModel, EvalSet, LinearHeadCLIP
from anchorclip.hub import UPLOAD_DIR, build_model_card, public_name, validate_card_locally

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "run_anchor_ft.py")
REPO = "someone/tiny-arf"


@pytest.fixture(scope="module")
def pushed_run(tmp_path_factory):
    """The example with --push_to_hub under HF_HUB_OFFLINE=1 (set by conftest): writes hub_upload/."""
    root = build_tiny_world(tmp_path_factory.mktemp("hubworld"))
    out = root / "out"
    args = [
        "--model_name_or_path", str(root / "clip"), "--dataset_name", str(root / "train"),
        "--caption_anchors", str(root / "captions"), "--pair_anchors", str(root / "pairs"),
        "--eval_datasets", f"photo@id={root / 'test'}", f"sketch@domain_shift={root / 'test'}",
        f"unseen@zero_shot={root / 'test'}",
        "--method", "arf", "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "8",
        "--report_to", "none", "--use_cpu", "--eval_templates", "simple", "--save_strategy", "no",
        "--push_to_hub", "--hub_model_id", REPO, "--lambda_caption", "0.5",
    ]  # fmt: skip
    run_anchor_ft = import_example()
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("anchorclip.hub").addHandler(handler)
    try:
        results = run_anchor_ft.main(args)
    finally:
        logging.getLogger("anchorclip.hub").removeHandler(handler)
    return out, results, [record.getMessage() for record in records]


def _world_args(root, out, *extra):
    return [
        "--model_name_or_path", str(root / "clip"), "--dataset_name", str(root / "train"),
        "--eval_datasets", f"photo@id={root / 'test'}", "--method", "flyp", "--output_dir", str(out),
        "--max_steps", "1", "--per_device_train_batch_size", "8", "--report_to", "none", "--use_cpu",
        "--eval_templates", "simple", "--save_strategy", "no", *extra,
    ]  # fmt: skip


def test_every_run_leaves_its_card_without_local_paths(pushed_run):
    """No --push_to_hub: <output_dir>/README.md is still the card, with the results; the local base model and
    data appear by folder name only."""
    root = pushed_run[0].parent
    out = root / "no_push"
    results = import_example().main(_world_args(root, out))
    text = (out / "README.md").read_text()
    data, evals = validate_card_locally(text)
    assert [(e.dataset_type, e.metric_value) for e in evals] == [("photo", results["finetuned"]["sets"]["photo"])]
    assert f"| photo | ID | {100 * results['zeroshot']['sets']['photo']:.1f} |" in text
    assert str(root) not in text and "- Base model: `clip`" in text and data.base_model is None
    assert not (out / UPLOAD_DIR).exists()


def test_offline_push_writes_upload_folder_and_says_so(pushed_run):
    out, _, messages = pushed_run
    folder = out / UPLOAD_DIR
    assert any("nothing was uploaded" in m and str(folder) in m and f"hf upload {REPO}" in m for m in messages)
    files = set(os.listdir(folder))
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "README.md"} <= files
    assert {"preprocessor_config.json", "processor_config.json"} & files  # the image processor
    assert "results.json" in files
    assert not {"training_args.bin", "adapter_config.json", "trainer_state.json", "anchors"} & files
    assert json.load(open(folder / "config.json"))["model_type"] == "clip"


def test_pushed_card_and_results_name_local_paths_by_name_only(pushed_run):
    out, _, _ = pushed_run
    root = str(out.parent)
    for path in (out / "README.md", out / UPLOAD_DIR / "README.md", out / UPLOAD_DIR / "results.json"):
        assert root not in path.read_text(), path
    uploaded = json.load(open(out / UPLOAD_DIR / "results.json"))
    assert uploaded["args"]["model"]["model_name_or_path"] == "clip"
    assert root in (out / "results.json").read_text()  # the local results keep the real paths


def test_public_name_of_a_local_base_model(tmp_path):
    folder = tmp_path / "my-clip"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_name_or_path": "openai/clip-vit-base-patch16"}))
    assert public_name(str(folder)) == "openai/clip-vit-base-patch16"  # the Hub id its config records
    (folder / "config.json").write_text(json.dumps({"_name_or_path": "/home/me/clip"}))
    assert public_name(str(folder)) == "my-clip"
    cached = tmp_path / "hub" / "models--openai--clip-vit-base-patch32" / "snapshots" / "3d74acf9a28c"
    cached.mkdir(parents=True)
    assert public_name(str(cached)) == "openai/clip-vit-base-patch32"
    assert public_name("openai/clip-vit-base-patch16") == "openai/clip-vit-base-patch16"
    card = build_model_card({}, {}, repo_id="me/x", base_model=str(folder), finetune_dataset=str(tmp_path / "data"))
    assert str(tmp_path) not in card.content and "`my-clip` finetuned on `data`" in card.text


def test_card_validates_and_carries_the_run_metrics(pushed_run):
    out, results, _ = pushed_run
    saved = json.load(open(out / "results.json"))
    card = ModelCard.load(out / UPLOAD_DIR / "README.md")
    data, evals = validate_card_locally(card)
    assert data.library_name == "transformers" and data.pipeline_tag == "zero-shot-image-classification"
    assert "anchorclip" in data.tags and data.license
    card_metrics = {e.dataset_type: e.metric_value for e in evals}
    assert card_metrics == saved["finetuned"]["sets"] == results["finetuned"]["sets"]
    groups = {e.dataset_type: e.dataset_args["anchorclip_group"] for e in evals}
    assert groups == {"photo": "id", "sketch": "domain_shift", "unseen": "zero_shot"}
    assert all(e.metric_type == "accuracy" and e.task_type == "zero-shot-image-classification" for e in evals)
    text = card.text
    for name, value in saved["zeroshot"]["sets"].items():  # the zero-shot start beside the finetuned numbers
        assert f"| {name} |" in text and f"{100 * value:.1f}" in text
    assert "λ1 (caption anchors, `lambda_caption`) | 0.5 |" in text
    assert "retrieved pairs per finetune image | 1 |" in text
    assert 'pipeline("zero-shot-image-classification", model="someone/tiny-arf")' in text
    assert "model.classify(" in text and "Training time:" in text and "CPU" in text


def test_upload_folder_restores_class_names_and_classifies(pushed_run):
    model = AnchorCLIPModel.from_pretrained(str(pushed_run[0] / UPLOAD_DIR))
    assert model.config.class_names == CLASS_NAMES and model.config.templates
    assert model.classify(make_images(2)).shape == (2, len(CLASS_NAMES))


@pytest.mark.slow
def test_upload_folder_loads_in_plain_transformers(pushed_run):
    result = subprocess.run(
        [sys.executable, "-c", PLAIN_TRANSFORMERS, str(pushed_run[0] / UPLOAD_DIR)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "CLIPModel ['circle', 'star']" in result.stdout


def _online(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


def test_unreachable_hub_fails_before_training(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE unset: a repository that cannot be created is an error when the trainer is built."""
    _online(monkeypatch)

    def no_network(self, *args, **kwargs):
        raise httpx.ConnectError("[Errno -2] Name or service not known")

    monkeypatch.setattr(HfApi, "create_repo", no_network)
    with pytest.raises(RuntimeError, match=r"cannot create the Hub repository 'someone/tiny-arf' \(ConnectError"):
        make_trainer(tmp_path, push_to_hub=True, hub_model_id=REPO)


def test_failed_upload_raises_and_keeps_the_folder(tmp_path, monkeypatch):
    _online(monkeypatch)
    monkeypatch.setattr(
        HfApi, "create_repo", lambda self, repo_id, **kw: huggingface_hub.RepoUrl(f"https://hf.co/{repo_id}")
    )

    def refused(self, **kwargs):
        raise httpx.ConnectError("[Errno 111] Connection refused")

    monkeypatch.setattr(HfApi, "upload_folder", refused)
    trainer = make_trainer(tmp_path, push_to_hub=True, hub_model_id=REPO, hub_strategy="end")
    folder = os.path.join(trainer.args.output_dir, UPLOAD_DIR)
    with pytest.raises(RuntimeError, match=f"'{REPO}' failed \\(ConnectError.*hf upload {REPO} {folder} ."):
        trainer.push_to_hub()
    validate_card_locally(ModelCard.load(os.path.join(folder, "README.md")))


@pytest.mark.slow
def test_example_exits_nonzero_when_the_hub_is_unreachable(pushed_run, tmp_path):
    """Through the command line, HF_HUB_OFFLINE unset and nothing listening at the Hub endpoint."""
    port = free_port()  # connecting to it is refused
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_TOKEN="hf_test_token_not_real")
    args = _world_args(pushed_run[0].parent, tmp_path / "out", "--push_to_hub", "--hub_model_id", REPO)
    result = subprocess.run([sys.executable, EXAMPLE, *args], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode != 0
    assert f"cannot create the Hub repository '{REPO}'" in result.stderr, result.stderr[-3000:]
    assert not (tmp_path / "out" / "model.safetensors").exists()  # failed before training


def test_hub_strategy_that_does_nothing_warns(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="anchorclip.hub"):
        make_trainer(tmp_path, push_to_hub=True, hub_model_id=REPO, hub_strategy="checkpoint")
    assert "--hub_strategy checkpoint does nothing in anchorclip" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="anchorclip.hub"):
        make_trainer(tmp_path, push_to_hub=True, hub_model_id=REPO, hub_strategy="end")
    assert "hub_strategy" not in caplog.text


def test_online_push_uploads_exactly_the_folder(tmp_path, monkeypatch):
    _online(monkeypatch)
    calls = {}
    monkeypatch.setattr(
        HfApi, "create_repo", lambda self, repo_id, **kw: huggingface_hub.RepoUrl(f"https://hf.co/{repo_id}")
    )
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.update(kw) or "commit")
    trainer = make_trainer(tmp_path, max_steps=1, push_to_hub=True, hub_model_id=REPO)
    trainer.train()
    eval_sets = {"photo": EvalSet(make_classification_dataset(8, seed=3))}
    trainer.evaluate(eval_sets)  # no results.json: the card falls back to the last evaluation in the logs
    assert trainer.push_to_hub(commit_message="ARF run") == "commit"
    assert calls["repo_id"] == REPO and calls["commit_message"] == "ARF run"
    assert calls["folder_path"] == os.path.join(trainer.args.output_dir, UPLOAD_DIR)
    _, evals = validate_card_locally(ModelCard.load(os.path.join(calls["folder_path"], "README.md")))
    assert [e.dataset_type for e in evals] == ["photo"]


def test_linear_head_upload_folder_is_a_plain_checkpoint_with_its_head(tmp_path):
    """FT / LP-FT: the upload folder holds the CLIP checkpoint and `finetune_head.safetensors` beside it."""
    import torch
    from safetensors import safe_open

    trainer = make_trainer(tmp_path, method="ft", max_steps=1)
    trainer.train()
    folder = trainer.push_to_hub()  # offline (conftest): writes the upload folder
    with safe_open(os.path.join(folder, "model.safetensors"), "pt") as weights:
        assert not [key for key in weights.keys() if "head" in key.split(".")[0]]
    assert os.path.isfile(os.path.join(folder, "finetune_head.safetensors"))
    torch.testing.assert_close(LinearHeadCLIP.from_pretrained(folder).finetune_head, trainer.model.finetune_head)
    assert not hasattr(AnchorCLIPModel.from_pretrained(folder), "finetune_head")  # the CLIP model alone


def test_card_records_anchor_provenance_and_lora():
    results = {
        "method": "arf",
        "finetuned": {"groups": {"id": 0.8}, "sets": {"imagenet": 0.8}},
        "zeroshot": {"groups": {"id": 0.68}, "sets": {"imagenet": 0.683}},
        "provenance": {
            "caption_anchors": {"captioner": "Salesforce/blip2-opt-2.7b", "generation": {"num_beams": 3}},
            "pair_anchors": {"pool": "cc3m", "rule": "text2image", "k_per_class": 600, "query_mode": "ensemble"},
        },
        "train_seconds": 3600.0,
        "hardware": {"device": "NVIDIA H100", "num_processes": 8},
    }
    training_args = {"method": "arf", "lambda_caption": 1.0, "lambda_pairs": 1.0, "per_device_train_batch_size": 64}
    card = build_model_card(
        results,
        training_args,
        repo_id="me/clip-arf",
        base_model="openai/clip-vit-base-patch16",
        finetune_dataset="imagenet-1k/x",
        lora={"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
    )
    data, evals = validate_card_locally(card)
    assert data.base_model == "openai/clip-vit-base-patch16" and data.license == "mit"
    assert "lora" in data.tags and evals[0].metric_value == 0.8
    metadata = yaml.safe_load(card.content.split("---")[1])
    assert metadata["model-index"][0]["name"] == "clip-arf"
    for fragment in ("Salesforce/blip2-opt-2.7b", "`cc3m`", "rule `text2image`", "k = 600 per class", "r=16",
                     "60.0 min", "8 × NVIDIA H100", "= 512", "| imagenet | ID | 68.3 | 80.0 | +11.7 |"):  # fmt: skip
        assert fragment in card.text, fragment


def test_local_validation_rejects_a_broken_model_index():
    card = ("---\nlibrary_name: transformers\npipeline_tag: zero-shot-image-classification\n"
            "license: mit\nmodel-index:\n- name: x\n  results:\n  - task: {}\n---\n\n# x\n")  # fmt: skip
    with pytest.raises(ValueError, match=r"Invalid `model_index`.*'type'"):  # the result's task has no type
        validate_card_locally(card)
