"""Retrieval (`anchorclip.anchors.pool.job` and its steps): search, selection rules, embedding cache and the
`anchorclip retrieve` CLI.

Everything runs on a tiny random CLIP and pools of a few dozen noise images (conftest.py), in seconds.
"""

from __future__ import annotations

import json
import os
import re

import datasets
import numpy as np
import pytest
import torch
from conftest import CLASS_NAMES, corrupt_bytes, make_config, make_images, make_pair_dataset, make_processor
from helpers import free_port, write_clip_benchmark
from transformers import CLIPModel, CLIPProcessor

from anchorclip.anchors import RetrievalArguments, retrieve_anchors
from anchorclip.anchors.pool import faiss_index as pool_index
from anchorclip.anchors.pool.embedding import embed_pool
from anchorclip.anchors.pool.faiss_index import build_index, exact_topk, search
from anchorclip.anchors.pool.selection import Candidates, deduplicate, select_anchors
from anchorclip.anchors.pool.store import EmbeddingStore
from anchorclip.data import ColumnError
from anchorclip.templates import SIMPLE_TEMPLATES

POOL_SIZE = 40


def _normalized(rng, n, d=16):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def pool():
    return make_pair_dataset(POOL_SIZE, seed=1)


def _retrieve(pool, checkpoint, tmp_path, class_names=CLASS_NAMES, finetune=None, leakage_sets=None, **settings):
    """`retrieve_anchors` with `RetrievalArguments(**settings)`; loaded datasets are passed beside the settings."""
    settings = {"cache_dir": str(tmp_path / "cache"), "shard_size": 16, "batch_size": 8, **settings}
    args = RetrievalArguments(model_name_or_path=checkpoint, output_dir=str(tmp_path / "anchors"), **settings)
    return retrieve_anchors(args, pool, class_names, finetune=finetune, leakage_sets=leakage_sets)


# ---------------------------------------------------------------- search


def test_exact_search_equals_numpy_topk():
    rng = np.random.default_rng(0)
    pool, queries = _normalized(rng, 500), _normalized(rng, 7)
    index = build_index(pool)
    scores, ids = search(index, queries, 10)
    brute = queries @ pool.T
    expected = np.argsort(-brute, axis=1)[:, :10]
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(brute, expected, 1), rtol=1e-5, atol=1e-5)
    # The chunked exact search used to measure approximate indexes agrees too.
    chunked = EmbeddingStore(
        path="", shards=[pool[:123], pool[123:]], offsets=np.array([0, 123, 500]), valid=np.ones(500, bool)
    )
    np.testing.assert_array_equal(exact_topk(chunked, queries, 10)[1], expected)


def test_ivf_index_recall_is_measured():
    rng = np.random.default_rng(0)
    store = EmbeddingStore.from_arrays(_normalized(rng, 2000))
    index = build_index(store, "IVF16,Flat", index_params="nprobe=16")  # probing every list: exact
    assert pool_index.measure_recall(index, store, _normalized(rng, 20), 10) == pytest.approx(1.0)


def test_default_large_pool_index_is_reranked_fast_scan():
    factory = pool_index.default_index_factory(4_000_000, 64)
    assert factory == "IVF8192,PQ32x4fs,Refine(SQfp16)"
    assert pool_index.default_index_params(factory) == "nprobe=64,k_factor_rf=32"
    assert pool_index.search_params(factory, "nprobe=256") == "nprobe=256,k_factor_rf=32"  # overrides per key
    # The same kind of index, small: its default parameters reach the base index and the re-ranking.
    rng = np.random.default_rng(0)
    store = EmbeddingStore.from_arrays(_normalized(rng, 4000))
    index = build_index(store, "IVF8,PQ8x4fs,Refine(SQfp16)")  # nprobe 8 probes every list
    assert pool_index.measure_recall(index, store, _normalized(rng, 20), 10) >= 0.95


# ---------------------------------------------------------------- selection rules


def test_per_class_k_and_global_budget():
    rng = np.random.default_rng(0)
    candidates = Candidates(
        label=np.repeat(np.arange(4), 25), row=np.arange(100), score=rng.random(100).astype(np.float32)
    )
    selected = select_anchors(candidates, 4, k_per_class=5, budget=None)
    assert np.bincount(selected.label).tolist() == [5, 5, 5, 5]
    for label in range(4):  # the top 5 of each class, by score
        mine = candidates.score[candidates.label == label]
        assert sorted(selected.score[selected.label == label]) == sorted(np.sort(mine)[-5:])
    budgeted = select_anchors(candidates, 4, k_per_class=5, budget=10)
    assert len(budgeted) == 10
    assert sorted(np.bincount(budgeted.label).tolist()) == [2, 2, 3, 3]  # balanced: round-robin by rank


def test_mmr_prefers_an_unlike_candidate_over_a_near_copy_of_the_best():
    # One class; candidate 1 is a near copy of the best (0), candidate 2 scores lower but looks different.
    embeddings = np.array([[1.0, 0.0], [0.999, 0.045], [0.0, 1.0], [0.7, 0.7]], dtype=np.float32)
    candidates = Candidates(
        label=np.zeros(4, np.int64), row=np.array([10, 11, 12, 13]), score=np.array([0.9, 0.89, 0.5, 0.4])
    )
    plain = select_anchors(candidates, 1, k_per_class=2, budget=None)
    assert sorted(plain.row.tolist()) == [10, 11]  # top 2 by score: the best and its copy
    diverse = select_anchors(candidates, 1, k_per_class=2, budget=None, embeddings=embeddings, diversity=0.5)
    assert sorted(diverse.row.tolist()) == [10, 12]
    # The first pick is always the best-scored; diversity only changes what follows it.
    only = select_anchors(candidates, 1, k_per_class=1, budget=None, embeddings=embeddings, diversity=0.9)
    assert only.row.tolist() == [10]
    with pytest.raises(ValueError, match="diversity"):
        select_anchors(candidates, 1, k_per_class=2, budget=None, embeddings=embeddings, diversity=1.5)
    with pytest.raises(ValueError, match="embeddings"):
        select_anchors(candidates, 1, k_per_class=2, budget=None, diversity=0.5)


def test_mmr_keeps_classes_apart_and_quotas():
    rng = np.random.default_rng(0)
    embeddings = _normalized(rng, 60)
    candidates = Candidates(label=np.repeat(np.arange(3), 20), row=np.arange(60), score=rng.random(60))
    selected = select_anchors(candidates, 3, k_per_class=5, budget=12, embeddings=embeddings, diversity=0.5)
    assert len(selected) == 12 and sorted(np.bincount(selected.label).tolist()) == [4, 4, 4]
    for label, row in zip(selected.label, selected.row):
        assert candidates.label[row] == label  # rows stay with their class


def test_written_anchors_are_by_class_best_first_whatever_the_pool_order(pool, tmp_path):
    from anchorclip.anchors.pool.anchor_report import write_anchors

    # Selected items whose pool order (rows 1, 3, 5, 7) is neither their class order nor their score order.
    selected = Candidates(
        label=np.array([0, 0, 1, 1]), row=np.array([5, 1, 7, 3]), score=np.array([0.9, 0.8, 0.7, 0.6])
    )
    anchors = write_anchors(pool, "image", "caption", selected, CLASS_NAMES, str(tmp_path / "anchors"))
    assert anchors["pool_index"] == [5, 1, 7, 3]
    assert anchors["caption"] == [pool[row]["caption"] for row in [5, 1, 7, 3]]
    assert anchors["class_index"] == [0, 0, 1, 1]


def test_retrieval_with_diversity_spreads_the_anchors(pool, checkpoint, tmp_path):
    settings = dict(k_per_class=3, oversample=10.0, dedup_threshold=None)
    plain = _retrieve(pool, checkpoint, tmp_path / "plain", diversity=0.0, **settings)  # the paper's top k
    diverse = _retrieve(pool, checkpoint, tmp_path / "diverse", diversity=0.8, **settings)
    provenance = json.loads((tmp_path / "diverse" / "anchors" / "anchorclip_provenance.json").read_text())
    assert provenance["diversity"] == 0.8 and provenance["settings"]["diversity"] == 0.8
    assert len(diverse) == len(plain)
    store = _pool_image_embeddings(pool, checkpoint)

    def redundancy(anchors) -> float:  # mean cosine between two anchors of one class
        values = []
        for label in set(anchors["class_index"]):
            rows = [r for r, c in zip(anchors["pool_index"], anchors["class_index"]) if c == label]
            vectors = store[rows]
            sims = vectors @ vectors.T
            values.append((sims.sum() - np.trace(sims)) / max(1, len(rows) * (len(rows) - 1)))
        return float(np.mean(values))

    assert redundancy(diverse) < redundancy(plain)
    with pytest.raises(ValueError, match="diversity"):
        RetrievalArguments(model_name_or_path="m", output_dir="o", diversity=-0.1)


def _pool_image_embeddings(pool, checkpoint) -> np.ndarray:
    model, processor = CLIPModel.from_pretrained(checkpoint), CLIPProcessor.from_pretrained(checkpoint)
    with torch.no_grad():
        pixels = processor(images=[item["image"].convert("RGB") for item in pool], return_tensors="pt")["pixel_values"]
        features = model.get_image_features(pixel_values=pixels)
        features = getattr(features, "pooler_output", features)
    return torch.nn.functional.normalize(features, dim=-1).numpy()


def test_deduplication_collapses_planted_duplicates():
    rng = np.random.default_rng(0)
    embeddings = _normalized(rng, 30)
    embeddings[10] = embeddings[3]  # exact copy
    noisy = embeddings[3] + 0.01 * rng.standard_normal(16).astype(np.float32)
    embeddings[20] = noisy / np.linalg.norm(noisy)  # near copy
    candidates = Candidates(label=np.zeros(30, np.int64), row=np.arange(30), score=np.linspace(1, 0, 30))
    kept = deduplicate(candidates, embeddings, threshold=0.95)
    assert set(range(30)) - set(kept.row.tolist()) == {10, 20}  # the best-scoring copy (row 3) survives


def test_end_to_end_k_budget_one_class_per_item_and_dedup(pool, checkpoint, tmp_path):
    planted = datasets.concatenate_datasets([pool, pool.select([0, 1, 2])])  # rows 40-42 copy rows 0-2
    anchors = _retrieve(planted, checkpoint, tmp_path, k_per_class=100, dedup_threshold=0.999)
    rows = set(anchors["pool_index"])
    assert len(rows) == len(anchors) == POOL_SIZE  # each item once; each planted pair collapsed to one
    assert all(len({r, r + POOL_SIZE} & rows) == 1 for r in range(3))
    provenance = json.loads((tmp_path / "anchors" / "anchorclip_provenance.json").read_text())
    assert provenance["counts"]["near_duplicates_removed"] >= 3

    anchors = _retrieve(pool, checkpoint, tmp_path, k_per_class=4, dedup_threshold=None)
    assert 0 < np.bincount(anchors["class_index"]).max() <= 4
    anchors = _retrieve(pool, checkpoint, tmp_path, k_per_class=20, budget=10, dedup_threshold=None)
    assert len(anchors) == 10 and np.bincount(anchors["class_index"]).max() <= 20
    assert anchors.features["class_index"].names == CLASS_NAMES
    assert set(anchors.column_names) == {"image", "caption", "class_name", "class_index", "score", "pool_index"}
    for item in anchors:  # the original caption travels with its image
        assert item["caption"] == pool[item["pool_index"]]["caption"]
        assert item["class_name"] == CLASS_NAMES[item["class_index"]]


def test_leakage_guard_removes_eval_duplicates(pool, checkpoint, tmp_path):
    evaluation = datasets.Dataset.from_dict(
        {"image": [pool[5]["image"], *make_images(3, seed=99)], "label": [0, 1, 2, 3]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}),
    )
    kwargs = dict(k_per_class=100, dedup_threshold=None, leakage_threshold=0.999)
    clean = _retrieve(pool, checkpoint, tmp_path, leakage_sets=[evaluation], **kwargs)
    assert 5 not in clean["pool_index"] and len(clean) == POOL_SIZE - 1
    provenance = json.loads((tmp_path / "anchors" / "anchorclip_provenance.json").read_text())
    assert provenance["counts"]["leakage_removed_pool_items"] == 1
    assert 5 in _retrieve(pool, checkpoint, tmp_path, **kwargs)["pool_index"]  # without the guard it is there


def test_a_guard_that_removes_every_candidate_is_a_clear_error(pool, checkpoint, tmp_path):
    # At threshold -1 every candidate "leaks": the job must say so, not crash inside the selection.
    evaluation = datasets.Dataset.from_dict(
        {"image": make_images(2, seed=97), "label": [0, 1]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}),
    )
    with pytest.raises(ValueError, match=r"No anchor candidates are left: the leakage guard removed all \d+"):
        _retrieve(pool, checkpoint, tmp_path, leakage_sets=[evaluation], k_per_class=5, leakage_threshold=-1.0)


def test_leakage_guard_removes_resized_and_reencoded_copies(tmp_path):
    """Near-duplicates, not only exact copies: a resized, a JPEG re-encoded and a resized + re-encoded copy of
    three pool images in the evaluation set take those three out at the default threshold, and nothing else.
    The shipped miniworld CLIP tells images apart (a random tiny CLIP puts every noise image at cosine ~0.99)."""
    import io

    from PIL import Image

    from anchorclip.miniworld import MINICLIP_PATH, SEEN_SHAPES, SPLITS, make_example

    def jpeg(image, quality):
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")

    examples = [make_example(SPLITS["pool"].seed, i) for i in range(POOL_SIZE)]
    miniworld_pool = datasets.Dataset.from_dict(
        {"image": [e["image"] for e in examples], "caption": [e["caption"] for e in examples]},
        features=datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")}),
    )
    photo = SPLITS["test_photo"]
    unrelated = [make_example(photo.seed, i, photo.shapes, photo.styles)["image"] for i in range(4)]
    copies = {
        5: examples[5]["image"].resize((64, 64), Image.BICUBIC),
        9: jpeg(examples[9]["image"], quality=75),
        13: jpeg(examples[13]["image"].resize((48, 48), Image.BICUBIC), quality=95),
    }
    evaluation = datasets.Dataset.from_dict(
        {"image": [*copies.values(), *unrelated], "label": [0] * (len(copies) + len(unrelated))},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}),
    )
    kwargs = dict(class_names=list(SEEN_SHAPES), k_per_class=100, dedup_threshold=None)  # every item kept
    everything = _retrieve(miniworld_pool, MINICLIP_PATH, tmp_path / "all", **kwargs)
    assert set(copies) <= set(everything["pool_index"])  # without the guard the copies' originals are anchors
    clean = _retrieve(miniworld_pool, MINICLIP_PATH, tmp_path / "guarded", leakage_sets=[evaluation], **kwargs)
    assert set(everything["pool_index"]) - set(clean["pool_index"]) == set(copies)
    provenance = json.loads((tmp_path / "guarded" / "anchors" / "anchorclip_provenance.json").read_text())
    assert provenance["counts"]["leakage_removed_pool_items"] == len(copies)


def _wds_folder(root, images):
    """A CLIP_benchmark webdataset folder (`test/0.tar` of KEY.png + KEY.cls, `classnames.txt`): what
    `load_dataset_any` cannot read and `anchorclip eval` can."""
    import io

    encoded = []
    for image in images:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    return str(write_clip_benchmark(root, CLASS_NAMES, encoded, [0] * len(images), shards=1))


def test_leakage_guard_reads_evaluation_folders_as_eval_does(pool, checkpoint, tmp_path):
    spec = _wds_folder(tmp_path / "wds_set", [pool[7]["image"], *make_images(2, seed=98)])
    args = RetrievalArguments(
        model_name_or_path=checkpoint,
        output_dir=str(tmp_path / "anchors"),
        leakage_sets=[spec],
        leakage_threshold=0.999,
        k_per_class=100,
        dedup_threshold=0,
        cache_dir=str(tmp_path / "cache"),
        shard_size=16,
        batch_size=8,
    )
    clean = retrieve_anchors(args, pool, CLASS_NAMES)
    assert 7 not in clean["pool_index"] and len(clean) == POOL_SIZE - 1
    provenance = json.loads((tmp_path / "anchors" / "anchorclip_provenance.json").read_text())
    assert provenance["leakage_sets"] == [spec] and provenance["dedup_threshold"] is None  # 0 is "off", as None
    assert provenance["settings"]["leakage_sets"] == [spec] and provenance["settings"]["k_per_class"] == 100


def test_settings_have_one_spelling_for_off_and_for_templates():
    args = RetrievalArguments(model_name_or_path="m", output_dir="o", dedup_threshold=0, templates="photo")
    assert args.dedup_threshold is None and args.templates == ["photo"]
    assert RetrievalArguments(model_name_or_path="m", output_dir="o", dedup_threshold=-1).dedup_threshold is None
    assert RetrievalArguments(model_name_or_path="m", output_dir="o").resolved_templates() == list(SIMPLE_TEMPLATES)
    literal = RetrievalArguments(model_name_or_path="m", output_dir="o", templates=["a {}.", "the {}."])
    assert literal.resolved_templates() == ["a {}.", "the {}."]
    with pytest.raises(ValueError, match="rule"):
        RetrievalArguments(model_name_or_path="m", output_dir="o", rule="image2text")


def _modality_scores(pool, checkpoint, anchors, rule, finetune) -> tuple[np.ndarray, np.ndarray]:
    """`(own, other)`: each anchor's best similarity to its class's queries with the pool item embedded in the
    rule's modality (caption for text2text, image for image2image), and in the other one."""
    model, processor = CLIPModel.from_pretrained(checkpoint).eval(), make_processor()

    def unit(output):  # get_*_features return the projected features as pooler_output
        features = output.pooler_output if hasattr(output, "pooler_output") else output
        return torch.nn.functional.normalize(features, dim=-1)

    with torch.no_grad():
        rows = anchors["pool_index"]
        texts = processor.tokenizer([pool[i]["caption"] for i in rows], padding=True, return_tensors="pt")
        captions = unit(model.get_text_features(**texts))
        images = unit(
            model.get_image_features(**processor(images=[pool[i]["image"] for i in rows], return_tensors="pt"))
        )
        if rule == "text2text":  # query_mode "each": one query per template, the best one counts
            prompts = [template.format(name) for name in CLASS_NAMES for template in SIMPLE_TEMPLATES]
            tokens = processor.tokenizer(prompts, padding=True, return_tensors="pt")
            queries = unit(model.get_text_features(**tokens)).view(len(CLASS_NAMES), len(SIMPLE_TEMPLATES), -1)
            own_items, other_items = captions, images
        else:  # query_mode "ensemble": the normalised mean of the class's finetune images
            pixels = processor(images=list(finetune["image"]), return_tensors="pt")
            embedded, labels = unit(model.get_image_features(**pixels)), torch.tensor(finetune["label"])
            queries = torch.stack([unit(embedded[labels == c].mean(0)) for c in range(len(CLASS_NAMES))])[:, None]
            own_items, other_items = images, captions
        owner = queries[torch.tensor(anchors["class_index"])]  # (anchors, queries per class, dim)
        own = torch.einsum("aqd,ad->aq", owner, own_items).amax(-1)
        other = torch.einsum("aqd,ad->aq", owner, other_items).amax(-1)
    return own.numpy(), other.numpy()


@pytest.mark.parametrize("rule, query_mode", [("text2text", "each"), ("image2image", "ensemble")])
def test_other_rules(pool, checkpoint, tmp_path, rule, query_mode):
    from conftest import make_classification_dataset

    finetune = make_classification_dataset(8) if rule == "image2image" else None
    # An approximate index on the way: its recall against exact search is measured and recorded.
    anchors = _retrieve(
        pool,
        checkpoint,
        tmp_path,
        class_names=None if finetune else CLASS_NAMES,
        rule=rule,
        query_mode=query_mode,
        finetune=finetune,
        k_per_class=3,
        dedup_threshold=None,
        index_factory="IVF2,Flat",
        index_params="nprobe=1",
    )
    assert 0 < len(anchors) <= 3 * len(CLASS_NAMES)
    provenance = json.loads((tmp_path / "anchors" / "anchorclip_provenance.json").read_text())
    assert provenance["rule"] == rule and provenance["index_factory"] == "IVF2,Flat"
    assert 0.0 < provenance["index_recall"] <= 1.0
    # Each anchor's score is its similarity to its class's query in the rule's own modality, recomputed here:
    # the pool caption against the prompts (text2text), the pool image against the finetune images' mean
    # (image2image); the other modality's similarity is far from it.
    own, other = _modality_scores(pool, checkpoint, anchors, rule, finetune)
    np.testing.assert_allclose(anchors["score"], own, atol=2e-3)
    assert np.abs(np.asarray(anchors["score"]) - other).min() > 0.05


# ---------------------------------------------------------------- embedding cache


def test_embedding_cache_resumes_after_interrupt(pool, tmp_path):
    torch.manual_seed(0)
    model, processor = CLIPModel(make_config()).eval(), make_processor()
    original = model.get_image_features
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        if calls["n"] == 1:
            raise KeyboardInterrupt  # dies while embedding the second shard
        calls["n"] += 1
        return original(*args, **kwargs)

    cache = str(tmp_path / "cache")
    kwargs = dict(cache_dir=cache, shard_size=8, batch_size=8, pool_id="pool")
    model.get_image_features = interrupted
    with pytest.raises(KeyboardInterrupt):
        embed_pool(pool, model, processor, **kwargs)
    (folder,) = os.listdir(cache)
    shards = sorted(f for f in os.listdir(os.path.join(cache, folder)) if f.startswith("shard-"))
    assert shards == ["shard-000000.npy"]
    first_shard_mtime = os.path.getmtime(os.path.join(cache, folder, shards[0]))

    def counting(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    calls["n"] = 0
    model.get_image_features = counting
    resumed = embed_pool(pool, model, processor, **kwargs)
    assert calls["n"] == POOL_SIZE // 8 - 1  # every shard but the finished one
    assert os.path.getmtime(os.path.join(cache, folder, shards[0])) == first_shard_mtime

    fresh = embed_pool(pool, model, processor, **{**kwargs, "cache_dir": str(tmp_path / "fresh")})
    np.testing.assert_array_equal(resumed.to_numpy(), fresh.to_numpy())
    calls["n"] = 0
    embed_pool(pool, model, processor, **kwargs)
    assert calls["n"] == 0  # complete: nothing recomputed

    torch.manual_seed(1)
    other = embed_pool(pool, CLIPModel(make_config()).eval(), processor, **kwargs)
    assert other.path != resumed.path  # another model never reads these embeddings


def test_undecodable_images_are_skipped_and_counted(tmp_path):
    pool = make_pair_dataset(6).cast_column("image", datasets.Image(decode=False))
    cells = list(pool["image"])
    cells[2] = corrupt_bytes()
    pool = datasets.Dataset.from_dict(
        {"image": cells, "caption": pool["caption"]},
        features=datasets.Features({"image": datasets.Image(decode=False), "caption": datasets.Value("string")}),
    )
    torch.manual_seed(0)
    store = embed_pool(pool, CLIPModel(make_config()), make_processor(), cache_dir=str(tmp_path), batch_size=4)
    assert store.valid.tolist() == [True, True, False, True, True, True]


# ---------------------------------------------------------------- bad inputs


def test_bad_inputs_give_clear_errors(pool, checkpoint, tmp_path):
    no_image = datasets.Dataset.from_dict({"picture": ["x"], "caption": ["a cat"]})
    with pytest.raises(ColumnError, match=r"image.*\['picture', 'caption'\]"):
        _retrieve(no_image, checkpoint, tmp_path)
    with pytest.raises(ColumnError, match="'photo' is missing"):
        _retrieve(pool, checkpoint, tmp_path, image_column="photo")
    with pytest.raises(ValueError, match="empty"):
        _retrieve(pool.select([]), checkpoint, tmp_path)
    with pytest.raises(ValueError, match="No class names"):
        _retrieve(pool, checkpoint, tmp_path, class_names=[])
    with pytest.raises(ValueError, match="image2image"):
        _retrieve(pool, checkpoint, tmp_path, rule="image2image")


# ---------------------------------------------------------------- CLI


def test_cli_end_to_end_with_streaming(pool, checkpoint, tmp_path):
    from anchorclip.cli import main

    pool.save_to_disk(str(tmp_path / "pool"))
    common = [
        "--pool",
        str(tmp_path / "pool"),
        "--model_name_or_path",
        checkpoint,
        "--cache_dir",
        str(tmp_path / "cache"),
        "--shard_size",
        "16",
        "--batch_size",
        "8",
        "--k_per_class",
        "3",
        "--class_names",
        *CLASS_NAMES,
        "--templates",
        "a photo of a {}.",
        "a sketch of a {}.",
    ]
    assert main(["retrieve", *common, "--output_dir", str(tmp_path / "out")]) == 0
    anchors = datasets.load_from_disk(str(tmp_path / "out"))
    assert 0 < len(anchors) <= 12
    keys = list(zip(anchors["class_index"], [-score for score in anchors["score"]]))
    assert keys == sorted(keys)  # by class, best first
    report = (tmp_path / "out" / "report.html").read_text()
    assert report.count("data:image/png;base64,") == len(anchors)
    provenance = json.loads((tmp_path / "out" / "anchorclip_provenance.json").read_text())
    assert provenance["rule"] == "text2image" and provenance["k_per_class"] == 3
    assert provenance["templates"] == ["a photo of a {}.", "a sketch of a {}."]

    # Streaming the same pool reads the same cache and gives the same anchors.
    assert main(["retrieve", *common, "--streaming", "--output_dir", str(tmp_path / "streamed")]) == 0
    streamed = datasets.load_from_disk(str(tmp_path / "streamed"))
    assert streamed["pool_index"] == anchors["pool_index"]
    assert len(os.listdir(tmp_path / "cache")) == 1


# ---------------------------------------------------------------- streamed pools on several processes

STREAM_FILE_SIZES = [7, 13, 9, 11]  # uneven, so a row's number depends on the lengths of the files before it

# Launched by `test_streamed_pool_on_two_processes_reads_its_files_and_writes_the_same_anchors`.
STREAM_SCRIPT = """
import json, logging, sys
import datasets
from anchorclip.anchors import RetrievalArguments, retrieve_anchors
logging.basicConfig(level=logging.INFO)
files, checkpoint, cache, out, class_names = json.loads(sys.argv[1])
pool = datasets.load_dataset("parquet", data_files=files, split="train", streaming=True)
args = RetrievalArguments(model_name_or_path=checkpoint, output_dir=out, pool_id="stream", cache_dir=cache,
                          shard_size=4, batch_size=4, k_per_class=5, dedup_threshold=None)
retrieve_anchors(args, pool, class_names)
"""


class _Rank:
    """Process `index` of `world`, in this one process (barriers do nothing): what embed_pool uses of one."""

    device = torch.device("cpu")
    mixed_precision = "no"

    def __init__(self, index: int, world: int):
        self.process_index, self.num_processes = index, world
        self.is_main_process = self.is_local_main_process = index == 0

    def wait_for_everyone(self):
        pass

    @staticmethod
    def autocast():
        import contextlib

        return contextlib.nullcontext()


@pytest.fixture(scope="module")
def stream_files(pool, tmp_path_factory):
    """The pool as 4 parquet files of uneven length: a stream of 4 shards."""
    folder, files, start = tmp_path_factory.mktemp("stream"), [], 0
    for index, size in enumerate(STREAM_FILE_SIZES):
        files.append(str(folder / f"part-{index}.parquet"))
        pool.select(range(start, start + size)).to_parquet(files[-1])
        start += size
    return files


def _stream(files):
    return datasets.load_dataset("parquet", data_files=files, split="train", streaming=True)


def test_streamed_pool_each_process_reads_its_files_and_a_run_on_one_process_resumes(
    pool, stream_files, tmp_path, caplog
):
    torch.manual_seed(0)
    model, processor = CLIPModel(make_config()).eval(), make_processor()
    original, embedded = model.get_image_features, []

    def counting(*args, **kwargs):
        embedded.append(len(kwargs["pixel_values"]))
        return original(*args, **kwargs)

    model.get_image_features = counting
    kwargs = dict(cache_dir=str(tmp_path / "cache"), shard_size=4, batch_size=4, pool_id="stream")
    # Process 0 of 2 alone: it reads files 0 and 2 only, then finds that nobody embedded files 1 and 3.
    with (
        caplog.at_level("INFO", logger="anchorclip.anchors.pool.embed_column"),
        pytest.raises(RuntimeError, match=r"Stream files \[1, 3\] of 4 have no complete embeddings"),
    ):
        embed_pool(_stream(stream_files), model, processor, accelerator=_Rank(0, 2), **kwargs)
    assert sum(embedded) == 7 + 9
    assert "process 0 read 2 of 4 stream files (16 rows) and embedded 16 rows" in caplog.text

    # Resumed on one process: only files 1 and 3 are embedded, and row i of the store is row i of the pool.
    embedded.clear()
    resumed = embed_pool(_stream(stream_files), model, processor, **kwargs)
    assert sum(embedded) == 13 + 11
    model.get_image_features = original
    downloaded = embed_pool(pool, model, processor, **{**kwargs, "cache_dir": str(tmp_path / "downloaded")})
    assert resumed.num_rows == POOL_SIZE
    np.testing.assert_allclose(resumed.to_numpy(), downloaded.to_numpy(), atol=2e-3)  # float16 rows, other batches


def test_streams_that_cannot_be_split_are_refused_clearly(stream_files, tmp_path):
    from datasets.distributed import split_dataset_by_node

    torch.manual_seed(0)
    model, processor = CLIPModel(make_config()).eval(), make_processor()
    kwargs = dict(cache_dir=str(tmp_path), accelerator=_Rank(0, 2), pool_id="stream")
    with pytest.raises(ValueError, match="shuffled pool stream cannot be split across 2 processes"):
        embed_pool(_stream(stream_files).shuffle(seed=0), model, processor, **kwargs)
    with pytest.raises(ValueError, match="already split with `split_dataset_by_node`: pass the whole stream"):
        embed_pool(split_dataset_by_node(_stream(stream_files), 0, 2), model, processor, **kwargs)


@pytest.mark.slow
def test_streamed_pool_on_two_processes_reads_its_files_and_writes_the_same_anchors(
    stream_files, checkpoint, tmp_path
):
    import subprocess
    import sys

    port = free_port()
    script = tmp_path / "retrieve_stream.py"
    script.write_text(STREAM_SCRIPT)
    run = [str(tmp_path / "cache2"), str(tmp_path / "two"), CLASS_NAMES]
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(port),
        str(script),
        json.dumps([stream_files, checkpoint, *run]),
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "ACCELERATE_USE_CPU": "true",
    }  # gloo on the CPU, also where a GPU is visible
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    # Each process read only its own files (0 and 2: 7 + 9 rows; 1 and 3: 13 + 11 rows).
    assert "process 0 read 2 of 4 stream files (16 rows) and embedded 16 rows" in result.stderr
    assert "process 1 read 2 of 4 stream files (24 rows) and embedded 24 rows" in result.stderr

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the launched processes, so the two embed with the same arithmetic
    try:
        args = RetrievalArguments(
            model_name_or_path=checkpoint,
            output_dir=str(tmp_path / "one"),
            pool_id="stream",
            cache_dir=str(tmp_path / "cache1"),
            shard_size=4,
            batch_size=4,
            k_per_class=5,
            dedup_threshold=None,
        )
        one = retrieve_anchors(args, _stream(stream_files), CLASS_NAMES)
    finally:
        torch.set_num_threads(threads)
    two = datasets.load_from_disk(str(tmp_path / "two"))
    assert len(one) >= 5  # several anchors (one class per item leaves some classes short of k)
    for column in ("pool_index", "class_index", "score", "caption"):
        assert two[column] == one[column], column
    assert [cell["bytes"] for cell in two.cast_column("image", datasets.Image(decode=False))["image"]] == [
        cell["bytes"] for cell in one.cast_column("image", datasets.Image(decode=False))["image"]
    ]


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the case of a machine without GPUs")
def test_retrieve_command_on_two_processes_without_a_gpu_shares_the_work(pool, checkpoint, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2 -m anchorclip retrieve`, as the docs write it, on a machine
    without GPUs and without a CPU flag: the processes join one gloo group (each embeds its shards, one writes), rather
    than each running the whole job and rewriting the files the other is reading (which died of SIGBUS)."""
    import subprocess
    import sys

    from anchorclip.cli import main

    pool.save_to_disk(str(tmp_path / "pool"))
    common = ["--pool", str(tmp_path / "pool"), "--model_name_or_path", checkpoint, "--shard_size", "8"]
    common += ["--batch_size", "8", "--k_per_class", "3", "--class_names", *CLASS_NAMES]
    port = free_port()
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
        "-m", "anchorclip", "retrieve", *common, "--cache_dir", str(tmp_path / "cache2"),
        "--output_dir", str(tmp_path / "two"),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    env.pop("ACCELERATE_USE_CPU", None)
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    # 40 rows in shards of 8, dealt round-robin: shards 0, 2, 4 to process 0 and 1, 3 to process 1.
    assert re.search(r"embedded 24 rows in .* on process 0", result.stderr), result.stderr[-3000:]
    assert re.search(r"embedded 16 rows in .* on process 1", result.stderr), result.stderr[-3000:]
    assert result.stderr.count("Wrote ") == 1  # one writer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the launched processes
    try:
        assert (
            main(["retrieve", *common, "--cache_dir", str(tmp_path / "cache1"), "--output_dir", str(tmp_path / "one")])
            == 0
        )
    finally:
        torch.set_num_threads(threads)
    one, two = (datasets.load_from_disk(str(tmp_path / name)) for name in ("one", "two"))
    assert len(one) > 0 and two["pool_index"] == one["pool_index"] and two["class_index"] == one["class_index"]
    np.testing.assert_allclose(two["score"], one["score"], atol=1e-3)


def test_processes_that_did_not_join_the_launch_are_refused(pool, checkpoint, tmp_path, monkeypatch):
    # Launched as 2 processes, but the accelerator counts 1: each would embed everything and write the anchors.
    monkeypatch.setenv("WORLD_SIZE", "2")
    model, processor = CLIPModel.from_pretrained(checkpoint), CLIPProcessor.from_pretrained(checkpoint)
    with pytest.raises(
        RuntimeError, match=r"launched as 2 processes \(WORLD_SIZE=2\), but 1 work together: each process would do"
    ):
        embed_pool(pool, model, processor, cache_dir=str(tmp_path), accelerator=_Rank(0, 1))
    args = RetrievalArguments(model_name_or_path=checkpoint, output_dir=str(tmp_path / "anchors"))
    with pytest.raises(RuntimeError, match="launched as 2 processes"):
        retrieve_anchors(args, pool, CLASS_NAMES, accelerator=_Rank(0, 1))
    assert not (tmp_path / "anchors").exists()


def test_train_runs_the_commands_job_and_keeps_the_miniworld_anchors(tmp_path):
    from anchorclip.cli.train import _retrieval_args, parse_args

    # The default (miniworld) job: k 600 picked by MMR from a shortlist 8x as deep, no de-duplication, one template.
    model_args, data_args, _ = parse_args(["--output_dir", str(tmp_path)])
    args = _retrieval_args(model_args, data_args, "out")
    assert (args.k_per_class, args.oversample, args.dedup_threshold, args.templates) == (600, 8.0, None, ["photo"])
    assert args.diversity == 0.9
    # Any other dataset: `anchorclip retrieve`'s defaults, setting for setting.
    argv = ["--dataset_name", "d", "--pair_pool", "p", "--model_name_or_path", "m", "--output_dir", str(tmp_path)]
    model_args, data_args, _ = parse_args(argv)
    assert _retrieval_args(model_args, data_args, "out") == RetrievalArguments(
        model_name_or_path="m", output_dir="out", pool="p"
    )
