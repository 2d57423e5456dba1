import subprocess
import sys

import pytest
import torch
from conftest import (
    CLASS_NAMES,
    make_classification_dataset,
    make_images,
    make_model,
    make_pair_dataset,
    make_processor,
)
from helpers import PLAIN_TRANSFORMERS, assert_moved, make_trainer

from anchorclip import AnchorCLIPModel, LinearHeadCLIP, wise_ft, wise_ft_sweep
from anchorclip.templates import OPENAI_IMAGENET_TEMPLATES, resolve_templates


def test_zero_shot_head_is_normalised_prompt_ensemble(tiny_model, processor):
    templates = ["a photo of a {}.", "a sketch of a {}."]
    head = tiny_model.build_zero_shot_head(CLASS_NAMES, templates, processor.tokenizer, batch_size=3)
    tokens = processor.tokenizer([t.format("star") for t in templates], padding=True, return_tensors="pt")
    with torch.no_grad():
        embeds = tiny_model.get_text_features(**tokens).pooler_output
    expected = torch.nn.functional.normalize(torch.nn.functional.normalize(embeds, dim=-1).mean(0), dim=-1)
    torch.testing.assert_close(head[CLASS_NAMES.index("star")], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(head.norm(dim=-1), torch.ones(len(CLASS_NAMES)))


def test_template_sets():
    assert len(OPENAI_IMAGENET_TEMPLATES) == 80
    assert resolve_templates("photo") == ["a photo of a {}."]
    with pytest.raises(ValueError, match="exactly one"):
        resolve_templates(["no placeholder"])
    with pytest.raises(ValueError, match="Unknown template set"):
        resolve_templates("imagenet")


def test_forward_with_one_tower(tiny_model, processor):
    pixels = processor(images=make_images(2), return_tensors="pt")["pixel_values"]
    tokens = processor.tokenizer(["a red star"], return_tensors="pt")
    assert tiny_model(pixel_values=pixels).text_embeds is None
    assert tiny_model(**tokens).image_embeds is None
    both = tiny_model(pixel_values=pixels, **tokens)
    torch.testing.assert_close(both.image_embeds, tiny_model(pixel_values=pixels).image_embeds)


def test_text_groups_encode_prompts_and_captions_at_their_own_width(tmp_path):
    # Long pair captions beside short prompts: the collator pads every text to the longest, the model trims
    # each group back. Same embeddings and gradients as the padded batch, with less text-tower work.
    pairs = make_pair_dataset(8).map(lambda row: {"caption": row["caption"] + " on a big blue background"})
    trainer = make_trainer(tmp_path, train=make_classification_dataset(8, with_captions=False), pairs=pairs,
                           lambda_caption=0.0, per_device_train_batch_size=8)  # fmt: skip
    batch = next(iter(trainer.get_train_dataloader()))
    widths = batch["attention_mask"].sum(dim=1)
    assert batch["text_groups"] == [(8, int(widths[:8].max())), (8, int(widths[8:].max()))]
    assert batch["text_groups"][0][1] < batch["text_groups"][1][1] == batch["input_ids"].shape[1]

    model = trainer.model
    padded = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   pixel_values=batch["pixel_values"])  # fmt: skip
    grouped = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    pixel_values=batch["pixel_values"], text_groups=batch["text_groups"])  # fmt: skip
    torch.testing.assert_close(grouped.text_embeds, padded.text_embeds, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(grouped.image_embeds, padded.image_embeds)
    positions = torch.arange(batch["input_ids"].shape[1]).expand_as(batch["input_ids"])  # per-row position ids
    with_positions = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           position_ids=positions, text_groups=batch["text_groups"])  # fmt: skip
    torch.testing.assert_close(with_positions.text_embeds, padded.text_embeds, atol=1e-6, rtol=1e-5)
    # CLIPModel.forward's other outputs too (they also keep logit_scale inside the DDP-wrapped forward)
    torch.testing.assert_close(grouped.logits_per_image, padded.logits_per_image, atol=1e-5, rtol=1e-5)
    weight = model.text_model.embeddings.token_embedding.weight
    grads = [torch.autograd.grad((out.text_embeds * out.text_embeds.detach().flip(0)).sum(), weight)[0]
             for out in (padded, grouped)]  # fmt: skip
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="do not cover the text batch's 16 rows"):
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], text_groups=[(8, 4)])


@pytest.fixture(scope="module")
def finetuned_dir(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("finetuned")
    trainer = make_trainer(tmp_path, max_steps=2)
    trainer.train()
    trainer.save_model(str(tmp_path / "model"))
    return tmp_path / "model"


@pytest.mark.slow
def test_checkpoint_loads_in_plain_transformers_and_pipeline(finetuned_dir):
    result = subprocess.run(
        [sys.executable, "-c", PLAIN_TRANSFORMERS, str(finetuned_dir)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "CLIPModel ['circle', 'star']" in result.stdout


def test_checkpoint_restores_class_names_and_classifies(finetuned_dir):
    model = AnchorCLIPModel.from_pretrained(str(finetuned_dir))
    assert model.config.class_names == CLASS_NAMES
    assert model.config.templates
    logits = model.classify(make_images(3))
    assert logits.shape == (3, len(CLASS_NAMES))


def test_ft_head_saved_beside_plain_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path, method="ft", max_steps=1)
    trainer.train()
    trainer.save_model(str(tmp_path / "ft"))
    loaded = LinearHeadCLIP.from_pretrained(str(tmp_path / "ft"))
    torch.testing.assert_close(loaded.finetune_head, trainer.model.finetune_head)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "ft" / "model.safetensors"), "pt") as weights:
        assert not [key for key in weights.keys() if "finetune_head" in key]


def test_wise_ft_endpoints_and_midpoint(tmp_path):
    zero_shot = make_model()
    trainer = make_trainer(tmp_path, model=make_model(), max_steps=2, learning_rate=1e-2)
    trainer.train()
    finetuned = trainer.model
    at_zero, at_one = wise_ft(zero_shot, finetuned, 0.0), wise_ft(zero_shot, finetuned, 1.0)
    middle = wise_ft(zero_shot, finetuned, 0.5)
    for name, param in finetuned.named_parameters():
        assert torch.equal(at_zero.get_parameter(name), zero_shot.get_parameter(name)), name
        assert torch.equal(at_one.get_parameter(name), param), name
        torch.testing.assert_close(middle.get_parameter(name), (zero_shot.get_parameter(name) + param) / 2)
    assert [alpha for alpha, _ in wise_ft_sweep(zero_shot, finetuned, [0.0, 0.5, 1.0])] == [0.0, 0.5, 1.0]
    with pytest.raises(ValueError, match="alpha"):
        wise_ft(zero_shot, finetuned, 1.5)


def test_wise_ft_interpolates_linear_head(tmp_path):
    zero_shot = make_model()
    trainer = make_trainer(tmp_path, model=make_model(), method="ft", max_steps=1, learning_rate=1e-2)
    zero_head = trainer.model.finetune_head.detach().clone()
    trainer.train()
    with pytest.raises(ValueError, match="zero_shot_head"):
        wise_ft(zero_shot, trainer.model, 0.5)
    merged = wise_ft(zero_shot, trainer.model, 0.0, zero_shot_head=zero_head)
    torch.testing.assert_close(merged.finetune_head.data, zero_head)
    # α = 0.5: the head and every CLIP weight are the midpoints (the head moved, so the midpoint is its own point).
    fine_head = trainer.model.finetune_head.detach()
    assert_moved(zero_head, fine_head, "finetune_head")
    middle = wise_ft(zero_shot, trainer.model, 0.5, zero_shot_head=zero_head)
    assert isinstance(middle, LinearHeadCLIP)
    torch.testing.assert_close(middle.finetune_head.data, (zero_head + fine_head) / 2)
    for name, param in trainer.model.clip.named_parameters():
        expected = (zero_shot.get_parameter(name) + param) / 2
        torch.testing.assert_close(middle.clip.get_parameter(name), expected, msg=name)


def test_unused_fixture_datasets_are_well_formed():
    assert make_classification_dataset().features["label"].names == CLASS_NAMES
    assert len(make_pair_dataset()) == 24
    assert make_processor().tokenizer.eos_token_id == 3
