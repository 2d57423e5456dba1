"""The miniature world: determinism, disjoint splits, consistent class names, and the shipped models."""

import os

import numpy as np
import pytest

from anchorclip.evaluation import GROUPS, EvalSet
from anchorclip.miniworld import (
    ATTRIBUTES,
    EVAL_SPLITS,
    MINICAPTIONER_PATH,
    MINICLIP_PATH,
    SEEN_SHAPES,
    SPLITS,
    UNSEEN_SHAPES,
    build_tokenizer,
    load_miniworld_split,
    make_example,
    miniworld_eval_sets,
)
from anchorclip.miniworld import splits as miniworld_splits
from anchorclip.miniworld.prompts import EVAL_TEMPLATES
from anchorclip.miniworld.tokenizer import MAX_LENGTH, UNK_ID


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ANCHORCLIP_CACHE", str(tmp_path))
    return tmp_path


def _pixels(image):
    return np.asarray(image).tobytes()


def test_example_is_a_pure_function_of_seed_and_index():
    first, again = make_example(7, 3), make_example(7, 3)
    assert _pixels(first["image"]) == _pixels(again["image"])
    assert first["caption"] == again["caption"]
    assert first["image"].size == (32, 32) and first["image"].mode == "RGB"
    assert _pixels(make_example(7, 4)["image"]) != _pixels(first["image"])
    assert _pixels(make_example(8, 3)["image"]) != _pixels(first["image"])


def test_every_style_renders():
    for style in ATTRIBUTES["style"]:
        example = make_example(0, 0, styles=(style,))
        assert example["style"] == style
        assert np.asarray(example["image"]).std() > 5  # not a blank canvas


def test_split_matches_generator_and_is_cached(cache, monkeypatch):
    dataset = load_miniworld_split("finetune", size=12)
    assert len(dataset) == 12 and dataset.features["label"].names == list(SEEN_SHAPES)
    for row in (0, 11):
        example = make_example(SPLITS["finetune"].seed, row, SEEN_SHAPES, ("photo",))
        assert _pixels(dataset[row]["image"]) == _pixels(example["image"])
        assert dataset[row]["caption"] == example["caption"]
        assert SEEN_SHAPES[dataset[row]["label"]] == example["shape"]
    assert os.listdir(cache / "miniworld")  # written under $ANCHORCLIP_CACHE

    def regenerate(*args, **kwargs):
        raise AssertionError("a cached split was generated again")

    monkeypatch.setattr(miniworld_splits, "_generate_split", regenerate)
    again = load_miniworld_split("finetune", size=12)
    assert again["caption"][:] == dataset["caption"][:]


def test_splits_are_disjoint():
    seeds = [spec.seed for spec in SPLITS.values()]
    assert len(set(seeds)) == len(seeds)
    names = (
        "test_retrieval",
        "test_painting",
        "test_pixel_art",
        "test_unseen_shapes",
        "test_colour",
        "test_background",
    )
    assert set(names) <= set(SPLITS)
    seen = {}
    for name in SPLITS:  # every split, the test sets included: no image of one is in another
        spec = SPLITS[name]
        hashes = {_pixels(make_example(spec.seed, i, spec.shapes, spec.styles)["image"]) for i in range(60)}
        for other, other_hashes in seen.items():
            assert not hashes & other_hashes, f"{name} and {other} share an image"
        seen[name] = hashes


def test_class_names_are_consistent_across_splits():
    for name in ("finetune", "finetune_val", "test_photo", "test_sketch", "test_painting", "test_pixel_art"):
        assert SPLITS[name].classes == SEEN_SHAPES
    assert SPLITS["test_unseen_shapes"].classes == UNSEEN_SHAPES
    assert not set(SEEN_SHAPES) & set(UNSEEN_SHAPES)
    assert set(SPLITS["finetune"].styles) == {"photo"}


def test_eval_sets(cache):
    eval_sets = miniworld_eval_sets(size_per_set=6)
    assert list(eval_sets) == list(EVAL_SPLITS)
    # every group but the corruption ones, which are corrupted copies made on demand (--eval_corruptions)
    assert {eval_set.group for eval_set in eval_sets.values()} == {"id", "domain_shift", "zero_shot", "retrieval"}
    for name, eval_set in eval_sets.items():
        assert isinstance(eval_set, EvalSet) and eval_set.group in GROUPS
        assert len(eval_set.dataset) == 6
        if eval_set.is_retrieval:
            assert eval_set.caption_column == "caption" and all(eval_set.dataset["caption"]), name
            continue
        assert eval_set.class_names and eval_set.templates, name
        assert all(template.count("{}") == 1 for template in eval_set.templates)
        assert eval_set.dataset.features[eval_set.label_column].names == eval_set.class_names
        assert max(eval_set.dataset[eval_set.label_column]) < len(eval_set.class_names)


def test_tokenizer_covers_captions_and_prompts():
    tokenizer = build_tokenizer()
    texts = [make_example(3, i)["caption"] for i in range(300)]
    for templates in EVAL_TEMPLATES.values():
        for names in ATTRIBUTES.values():
            texts += [template.format(name) for template in templates for name in names]
    texts += ["This is a photo of star.", "a sketch of a circle."]  # transformers' pipeline default prompt
    for ids in tokenizer(texts)["input_ids"]:
        assert UNK_ID not in ids and len(ids) <= MAX_LENGTH
        assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id != 2


def _require(path):
    if not os.path.isfile(os.path.join(path, "config.json")):
        pytest.skip(f"shipped model not found at {path} (run the scripts/ that build it)")


def test_shipped_miniclip_loads_through_transformers():
    _require(MINICLIP_PATH)
    import torch
    from transformers import CLIPModel, CLIPProcessor, pipeline

    model = CLIPModel.from_pretrained(MINICLIP_PATH)
    processor = CLIPProcessor.from_pretrained(MINICLIP_PATH)
    assert model.config.text_config.eos_token_id == processor.tokenizer.eos_token_id != 2
    image = make_example(SPLITS["test_photo"].seed, 0, SEEN_SHAPES, ("photo",))["image"]
    inputs = processor(
        text=["a photo of a circle.", "a photo of a star."], images=image, return_tensors="pt", padding=True
    )
    with torch.no_grad():
        logits = model(**inputs).logits_per_image
    assert logits.shape == (1, 2) and torch.isfinite(logits).all()
    classifier = pipeline("zero-shot-image-classification", model=MINICLIP_PATH)
    predictions = classifier(image, candidate_labels=list(SEEN_SHAPES))
    assert {p["label"] for p in predictions} == set(SEEN_SHAPES)


def test_shipped_captioner_generates():
    _require(MINICAPTIONER_PATH)
    from transformers import AutoImageProcessor, AutoTokenizer, VisionEncoderDecoderModel

    model = VisionEncoderDecoderModel.from_pretrained(MINICAPTIONER_PATH)
    tokenizer = AutoTokenizer.from_pretrained(MINICAPTIONER_PATH)
    image_processor = AutoImageProcessor.from_pretrained(MINICAPTIONER_PATH)
    image = make_example(SPLITS["test_photo"].seed, 1, SEEN_SHAPES, ("photo",))["image"]
    pixel_values = image_processor(images=[image], return_tensors="pt").pixel_values
    output = model.generate(pixel_values=pixel_values)  # greedy, up to 24 tokens (generation_config.json)
    caption = tokenizer.batch_decode(output, skip_special_tokens=True)[0]
    assert caption.strip() and "<|" not in caption
