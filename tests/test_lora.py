"""LoRA through peft: same ARF losses, fewer trainable weights, adapters save/load, merge to plain CLIP."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import CLASS_NAMES, make_classification_dataset, make_images, make_model, make_processor
from helpers import PLAIN_TRANSFORMERS, make_args, make_trainer

from anchorclip import AnchorCLIPModel, EvalSet, wise_ft
from anchorclip.hub import UPLOAD_DIR, validate_card_locally
from anchorclip.lora import (
    EXTRAS_FILE,
    count_parameters,
    is_lora_model,
    load_lora,
    lora_delta_norm,
    merge_lora,
    save_merged,
)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A base CLIP saved to disk, then 2 ARF steps with LoRA (r=4) on both towers, adapters saved."""
    root = tmp_path_factory.mktemp("lora")
    make_model().save_pretrained(root / "base")
    make_processor().save_pretrained(root / "base")
    base = AnchorCLIPModel.from_pretrained(str(root / "base"))
    trainer = make_trainer(root, model=base, max_steps=2, learning_rate=1e-2, lora_r=4)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    trainer.save_model(str(root / "adapters"))
    return root, trainer, before


def _embeds(model, processor):
    pixels = processor(images=make_images(3), return_tensors="pt")["pixel_values"]
    tokens = processor.tokenizer(["a red star", "a photo of a circle ."], padding=True, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        out = model(pixel_values=pixels, input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
    return out.image_embeds, out.text_embeds


def test_only_adapters_train_on_both_towers(lora_run):
    _, trainer, before = lora_run
    assert is_lora_model(trainer.model)
    trainable, total = count_parameters(trainer.model)
    full_trainable, _ = count_parameters(make_model())
    assert 0 < trainable < full_trainable / 5
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    assert any("vision_model" in n for n in changed) and any("text_model" in n for n in changed)
    assert not trainer.model.logit_scale.requires_grad  # frozen (see anchorclip/lora.py)
    assert lora_delta_norm(trainer.model) > 0
    logged = next(entry for entry in trainer.state.log_history if "loss" in entry)
    assert {"loss_cls", "loss_caption", "loss_pairs"} <= set(logged)  # the same ARF terms


def test_saved_adapters_carry_the_anchorclip_card_not_peft_template(lora_run):
    root, _, _ = lora_run
    text = (root / "adapters" / "README.md").read_text()
    data, _ = validate_card_locally(text)
    assert "More Information Needed" not in text and "Model Card for Model ID" not in text  # peft's template
    assert data.library_name == "peft" and "lora" in data.tags and "LoRA (adapters in this folder) | r=4" in text
    assert str(root) not in text and "- Base model: `base`" in text  # the local base model by its folder name


def test_evaluate_with_a_peft_model(lora_run):
    root, trainer, _ = lora_run
    images = make_classification_dataset(32, seed=3)
    # Labels = the merged model's own predictions: a scorer that uses the adapters scores exactly 1.
    merged = merge_lora(str(root / "adapters"))
    predicted = merged.classify(images=list(images["image"]), class_names=CLASS_NAMES, templates="simple").argmax(-1)
    labelled = images.map(lambda row, i: {"label": int(predicted[i])}, with_indices=True)
    assert trainer.evaluate({"photo": EvalSet(labelled)})["eval_photo_top1"] == 1.0
    with trainer.model.disable_adapter():  # the base model alone predicts otherwise on some images
        assert trainer.evaluate({"photo": EvalSet(labelled)})["eval_photo_top1"] < 1.0


def test_adapters_save_load_and_merge(lora_run):
    root, trainer, _ = lora_run
    folder = root / "adapters"
    files = set(os.listdir(folder))
    assert {"adapter_config.json", "adapter_model.safetensors", EXTRAS_FILE} <= files
    assert "model.safetensors" not in files
    assert json.load(open(folder / EXTRAS_FILE))["class_names"] == CLASS_NAMES
    processor = make_processor()
    expected = _embeds(trainer.model, processor)
    loaded = load_lora(str(folder))
    for got, want in zip(_embeds(loaded, processor), expected):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    merged = merge_lora(str(folder))
    assert type(merged) is AnchorCLIPModel and not is_lora_model(merged)
    assert merged.config.class_names == CLASS_NAMES
    for got, want in zip(_embeds(merged, processor), expected):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert is_lora_model(trainer.model)  # merging a folder or a model never touches the trained model


@pytest.mark.slow
def test_merged_checkpoint_is_plain_clip(lora_run, tmp_path):
    root, trainer, _ = lora_run
    save_merged(trainer.model, tmp_path / "merged", make_processor())
    result = subprocess.run(
        [sys.executable, "-c", PLAIN_TRANSFORMERS, str(tmp_path / "merged")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "CLIPModel ['circle', 'star']" in result.stdout
    model = AnchorCLIPModel.from_pretrained(str(tmp_path / "merged"))
    assert model.classify(make_images(2)).shape == (2, len(CLASS_NAMES))  # class names restored from the config
    for got, want in zip(_embeds(model, make_processor()), _embeds(trainer.model, make_processor())):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_wise_ft_of_a_lora_model(lora_run):
    root, trainer, _ = lora_run
    zero_shot = AnchorCLIPModel.from_pretrained(str(root / "base"))
    at_one = wise_ft(zero_shot, trainer.model, 1.0)
    merged = merge_lora(trainer.model)
    for name, param in merged.named_parameters():
        assert torch.equal(at_one.get_parameter(name), param), name


def test_lora_needs_a_contrastive_method(tmp_path):
    with pytest.raises(ValueError, match="arf and flyp"):
        make_args(tmp_path, method="ft", lora_r=4)
    with pytest.raises(ValueError, match="lora_r"):
        make_args(tmp_path, lora_r=-1)


def test_example_lora_run_pushes_a_merged_checkpoint(tmp_path):
    from huggingface_hub import ModelCard

    make_model().save_pretrained(tmp_path / "clip")
    make_processor().save_pretrained(tmp_path / "clip")
    make_classification_dataset(16, with_captions=False).save_to_disk(str(tmp_path / "train"))
    example = os.path.join(os.path.dirname(__file__), "..", "examples", "run_anchor_ft.py")
    sys.path.insert(0, os.path.dirname(example))
    try:
        import run_anchor_ft
    finally:
        sys.path.pop(0)
    out = tmp_path / "out"
    results = run_anchor_ft.main([
        "--model_name_or_path", str(tmp_path / "clip"), "--dataset_name", str(tmp_path / "train"),
        "--eval_datasets", f"photo@id={tmp_path / 'train'}", "--method", "flyp", "--lora_r", "4",
        "--lora_target_modules", "q_proj", "v_proj", "--output_dir", str(out), "--max_steps", "1",
        "--per_device_train_batch_size", "8", "--report_to", "none", "--use_cpu", "--eval_templates", "simple",
        "--save_strategy", "no", "--push_to_hub", "--hub_model_id", "someone/tiny-lora",
    ])  # fmt: skip
    assert os.path.isfile(out / "adapter_model.safetensors") and os.path.isfile(out / "merged" / "model.safetensors")
    files = set(os.listdir(out / UPLOAD_DIR))
    assert "model.safetensors" in files and "adapter_config.json" not in files
    data, evals = validate_card_locally(ModelCard.load(out / UPLOAD_DIR / "README.md"))
    assert "lora" in data.tags and len(evals) == 1
    assert "r=4" in ModelCard.load(out / UPLOAD_DIR / "README.md").text
    merged = AnchorCLIPModel.from_pretrained(str(out / UPLOAD_DIR))
    assert merged.classify(make_images(1)).shape == (1, len(CLASS_NAMES))
    card = (out / "README.md").read_text()  # the run's own card, beside the adapters, with the results
    _, evals = validate_card_locally(card)
    assert [(e.dataset_type, e.metric_value) for e in evals] == [("photo", results["finetuned"]["sets"]["photo"])]
    assert "More Information Needed" not in card and "merge_lora(" in card
    for text in (card, (out / UPLOAD_DIR / "README.md").read_text()):
        assert str(tmp_path) not in text and "- Base model: `clip`" in text
