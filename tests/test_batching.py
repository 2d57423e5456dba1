"""Pair anchors dealt by global batch (never twice in one, at most once per epoch) and duplicate-text keys."""

import datasets
import numpy as np
import pytest
import torch
from accelerate.data_loader import BatchSamplerShard
from conftest import CLASS_NAMES, COLOURS, make_classification_dataset, make_images, make_model, make_processor
from torch.utils.data import BatchSampler

from anchorclip import AnchorCLIPTrainer, AnchorTrainingArguments
from anchorclip.batching import AnchoredDataset, pair_schedule
from anchorclip.collate import text_key
from anchorclip.data import with_raw_images
from anchorclip.loss import ContrastiveLoss
from anchorclip.transforms import ImageTransform


def test_text_key_is_equal_for_equal_token_ids_and_stable_across_processes():
    assert text_key([2, 7, 3]) == text_key(np.array([2, 7, 3]))
    assert text_key([2, 7, 3]) != text_key([2, 7, 7, 3])
    # Pinned: a salted or per-process hash would change between runs and make keys incomparable across ranks.
    assert text_key([2, 7, 3]) == 191259909932672759  # blake2b-64 of the little-endian int64 ids, >> 1
    assert all(0 <= text_key([i]) < 2**63 for i in range(100))


def _global_batches(slots, per_item, batch_items):
    per_batch = per_item * batch_items
    return [slots[start : start + per_batch] for start in range(0, len(slots), per_batch)]


# (finetune items, pairs, pairs per item, items per global batch): more pairs than slots, fewer (several
# decks per epoch, decks not aligned with batches), exactly one batch's worth, several pairs per item.
SETTINGS = [(20, 50, 1, 8), (20, 13, 1, 8), (21, 8, 1, 8), (30, 17, 2, 6), (9, 5, 3, 1)]


@pytest.mark.parametrize("items,pairs,per_item,batch_items", SETTINGS)
def test_pair_schedule_never_repeats_a_pair_in_a_global_batch(items, pairs, per_item, batch_items):
    for epoch in range(3):
        slots = pair_schedule(0, epoch, items, pairs, per_item, batch_items)
        assert len(slots) == items * per_item and slots.min() >= 0 and slots.max() < pairs
        for batch in _global_batches(slots, per_item, batch_items):
            assert len(set(batch.tolist())) == len(batch), (epoch, batch)
        # Decks: every pair once before any pair twice.
        for start in range(0, len(slots), pairs):
            deck = slots[start : start + pairs].tolist()
            assert len(set(deck)) == len(deck)
        if pairs >= items * per_item:
            assert len(set(slots.tolist())) == len(slots)  # each pair at most once per epoch
    assert not np.array_equal(pair_schedule(0, 1, items, pairs, per_item, batch_items), slots)  # a new deal
    assert np.array_equal(pair_schedule(0, 2, items, pairs, per_item, batch_items), slots)  # a pure function


def test_too_few_pairs_for_a_global_batch_is_a_clear_error():
    with pytest.raises(ValueError, match=r"8 finetune images x 2 pair anchors each needs 16 distinct pairs.*has 10"):
        pair_schedule(0, 0, 20, 10, 2, 8)


def _pairs(n):
    # Unique captions, so that a pair is recognisable by its caption in a batch.
    captions = [f"a {size} {colour} {name}" for size in ("small", "big") for colour in COLOURS for name in CLASS_NAMES]
    assert n <= len(captions)
    return datasets.Dataset.from_dict(
        {"image": make_images(n, seed=3), "caption": captions[:n]},
        features=datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")}),
    )


def _dataset(items, pairs, per_item=1):
    return AnchoredDataset(
        with_raw_images(make_classification_dataset(items, with_captions=False), "image"),
        ImageTransform(size=16, train=True), "image", "label", pairs=with_raw_images(_pairs(pairs), "image"),
        pair_image_column="image", pair_caption_ids=[{"input_ids": [2, index, 3]} for index in range(pairs)],
        pairs_per_item=per_item, seed=5,
    )  # fmt: skip


def _pair_ids(dataset, indices):
    return [ids[1] for index in indices for ids in dataset[index]["pair_caption_ids"]]


def test_two_processes_get_the_pairs_of_one_process():
    """Accelerate's sharding of the trainer's sampler: global batch j of 2 x 4 is batch j of 1 x 8, pairs too."""
    dataset = _dataset(items=20, pairs=13)
    sampler = dataset.sampler(batch_items=8)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        one = list(BatchSampler(sampler, 8, drop_last=False))
        shards = [
            list(BatchSamplerShard(BatchSampler(sampler, 4, drop_last=False), num_processes=2, process_index=rank))
            for rank in range(2)
        ]
        assert sorted(sum(one, [])) == list(range(20))
        for j, batch in enumerate(one[:-1]):  # the last is partial on one process, padded on two
            assert shards[0][j] + shards[1][j] == batch
            pairs = _pair_ids(dataset, batch)
            assert len(set(pairs)) == 8, (epoch, j, pairs)
        # Another copy of the dataset (a resumed run, a dataloader worker) deals the same pairs.
        copy = _dataset(items=20, pairs=13)
        copy.set_epoch(epoch)
        copy.sampler(batch_items=8)
        assert _pair_ids(copy, range(20)) == _pair_ids(dataset, range(20))


@pytest.mark.parametrize("fraction,stride", [(0.5, 2), (0.25, 4)])
def test_fractional_pairs_ride_with_every_mth_image_of_the_order(fraction, stride):
    """One pair for every m finetune images: the items at positions 0, m, 2m, ... of the epoch order carry one;
    every global batch (and every per-process micro-batch of m-divisible size) holds batch / m distinct pairs,
    on one process as on two."""
    dataset = _dataset(items=24, pairs=7, per_item=fraction)
    sampler = dataset.sampler(batch_items=8)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        order = list(sampler)
        carried = [len(dataset[index]["pair_caption_ids"]) for index in order]
        assert carried == [1 if position % stride == 0 else 0 for position in range(24)]
        for start in range(0, 24, 8):
            pairs = _pair_ids(dataset, order[start : start + 8])
            assert len(pairs) == 8 // stride and len(set(pairs)) == len(pairs)
        shards = [
            list(BatchSamplerShard(BatchSampler(sampler, 4, drop_last=True), num_processes=2, process_index=rank))
            for rank in range(2)
        ]
        for batches in shards:  # every micro-batch of 4 holds 4 / m pairs
            assert {len(_pair_ids(dataset, batch)) for batch in batches} == {4 // stride}


def test_fractional_pairs_must_divide_the_per_device_batch(tmp_path):
    with pytest.raises(ValueError, match="must divide the per-device batch"):
        AnchorTrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=6, pair_anchors_per_image=0.25)
    with pytest.raises(ValueError, match="1/m"):
        AnchorTrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, pair_anchors_per_image=0.3)
    args = AnchorTrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, pair_anchors_per_image=2.0)
    assert args.pair_anchors_per_image == 2 and isinstance(args.pair_anchors_per_image, int)


def test_trainer_trains_with_half_a_pair_per_image(tmp_path):
    args = AnchorTrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, use_cpu=True, report_to="none", lambda_caption=0.0,
        pair_anchors_per_image=0.5, max_steps=2, save_strategy="no",
    )  # fmt: skip
    trainer = AnchorCLIPTrainer(
        model=make_model(), args=args, train_dataset=make_classification_dataset(8, with_captions=False),
        pair_anchors=_pairs(6), processing_class=make_processor(),
    )  # fmt: skip
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["num_pairs"] == 2 and batch["pixel_values"].shape[0] == 6
    trainer.train()
    assert trainer.state.global_step == 2


def test_trainer_dataloader_deals_pairs_by_deck_and_never_twice_in_a_global_batch(tmp_path):
    # 12 finetune images, 2 per process batch x 2 accumulation steps = global batches of 4, and only 10 pairs:
    # the first 10 slots of an epoch are one deck (each pair once), and no window of 4 holds a pair twice.
    # (Before: item i took pair perm[i mod 10] by index, so items 0 and 10 shared one wherever they landed.)
    args = AnchorTrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=2, gradient_accumulation_steps=2, use_cpu=True,
        report_to="none", lambda_caption=0.0, seed=0,
    )  # fmt: skip
    trainer = AnchorCLIPTrainer(
        model=make_model(), args=args, train_dataset=make_classification_dataset(12, with_captions=False),
        pair_anchors=_pairs(10), processing_class=make_processor(),
    )  # fmt: skip
    loader = trainer.get_train_dataloader()
    for epoch in range(4):
        loader.set_epoch(epoch)
        pairs = []
        for batch in loader:
            texts, mask = batch["input_ids"][len(batch["labels"]) :], batch["attention_mask"][len(batch["labels"]) :]
            pairs += [tuple(row[keep.bool()].tolist()) for row, keep in zip(texts, mask)]  # after the prompts
        assert len(pairs) == 12 and len(set(pairs[:10])) == 10, (epoch, pairs)
        for start in range(0, 12, 4):
            assert len(set(pairs[start : start + 4])) == 4, (epoch, pairs)


def test_too_few_pairs_for_the_global_batch_fails_before_training(tmp_path):
    args = AnchorTrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=8, use_cpu=True, report_to="none", lambda_caption=0.0
    )
    trainer = AnchorCLIPTrainer(
        model=make_model(), args=args, train_dataset=make_classification_dataset(16, with_captions=False),
        pair_anchors=_pairs(6), processing_class=make_processor(),
    )  # fmt: skip
    with pytest.raises(ValueError, match="needs 8 distinct pairs, but the pair set has 6"):
        trainer.train()


def test_equal_captions_and_pair_captions_are_masked_not_negatives(tmp_path):
    finetune = make_classification_dataset(8, with_captions=False).add_column(
        "caption", ["a red circle", "a red circle", "a big blue star", "a red circle", "a small heart", "a square",
                    "a big blue star", "a green star"],
    )  # fmt: skip
    pairs = _pairs(8).map(lambda row, i: {"caption": "a sketch" if i % 3 == 0 else row["caption"]}, with_indices=True)
    args = AnchorTrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=8, use_cpu=True, report_to="none"
    )
    trainer = AnchorCLIPTrainer(
        model=make_model(), args=args, train_dataset=finetune, pair_anchors=pairs, processing_class=make_processor()
    )
    batch = next(iter(trainer.get_train_dataloader()))
    _, terms = trainer._contrastive_window_loss(trainer.model, batch, micro=0, window=1)

    features = trainer._features(trainer.model, batch)
    rows = [tuple(row[keep.bool()].tolist()) for row, keep in zip(batch["input_ids"], batch["attention_mask"])]
    text_ids = torch.tensor([rows.index(row) for row in rows])  # equal texts, equal ids (from the tokens alone)
    scale = trainer.model.logit_scale
    for term, images, texts, ids in (
        ("loss_caption", features.images, features.captions, text_ids[8:16]),
        ("loss_pairs", features.pair_images, features.pair_captions, text_ids[16:]),
    ):
        assert len(set(ids.tolist())) < len(ids)  # the batch does hold duplicates
        masked = ContrastiveLoss(duplicates="mask")(images, texts, scale, ids)
        plain = ContrastiveLoss()(images, texts, scale)
        assert terms[term].item() == pytest.approx(masked.item(), rel=1e-6)
        assert terms[term].item() != pytest.approx(plain.item(), rel=1e-3)
