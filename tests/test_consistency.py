"""AugMix's Jensen-Shannon consistency (`--lambda_jsd`): the reference's divergence over the batch's classes, views
that are a pure function of the item and change no other draw, and a term that trains alike however it is split."""

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_accumulation_equals_large_batch, make_args, make_trainer

from anchorclip.batching import _generator
from anchorclip.data import decode_image
from anchorclip.hub.sections import hyperparameter_rows
from anchorclip.loss import ARFFeatures, consistency_loss


def _unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _reference_jsd(logits_clean, logits_views):
    # google-research/augmix's train loop: KL of each distribution from the clamped mixture, 'batchmean', averaged.
    probabilities = [F.softmax(logits, dim=1) for logits in (logits_clean, *logits_views)]
    mixture = torch.clamp(sum(probabilities) / len(probabilities), 1e-7, 1).log()
    return sum(F.kl_div(mixture, p, reduction="batchmean") for p in probabilities) / len(probabilities)


def test_consistency_loss_is_the_references_jsd_over_the_batchs_classes():
    images, views = _unit(6, 16, seed=1), _unit(12, 16, seed=2)
    labels = torch.tensor([2, 0, 2, 1, 0, 2])
    prompts = _unit(6, 16, seed=3)
    scale = torch.tensor(3.0)
    # classes 0, 1, 2: each the normalised mean of its prompt rows
    classes = F.normalize(torch.stack([prompts[labels == c].mean(0) for c in range(3)]), dim=-1)
    per_view = views.view(6, 2, 16)
    expected = _reference_jsd(
        scale.exp() * images @ classes.t(), [scale.exp() * per_view[:, j] @ classes.t() for j in (0, 1)]
    )
    torch.testing.assert_close(consistency_loss(images, views, prompts, labels, scale), expected)
    # one distribution, seen three times: no divergence
    same = images.repeat_interleave(2, dim=0)
    assert consistency_loss(images, same, prompts, labels, scale).abs().item() < 1e-6
    assert consistency_loss(images, views, prompts, labels, scale).item() > 1e-3


def test_consistency_loss_trains_the_image_features_only():
    images, views, prompts = (_unit(4, 8, seed=s).requires_grad_() for s in (4, 5, 6))
    scale = torch.tensor(2.0, requires_grad=True)
    consistency_loss(images, views.repeat(2, 1), prompts, torch.tensor([0, 1, 2, 1]), scale).backward()
    for tensor in (images, views):
        assert tensor.grad is not None and tensor.grad.abs().max() > 0
    assert prompts.grad is None and scale.grad is None  # class weights and temperature: held by L_cls


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, list):
        return len(a) == len(b) and all(map(_same, a, b))
    return a == b


def _items(tmp_path, epoch=0, **overrides):
    dataset = make_trainer(tmp_path, **overrides).train_dataset
    dataset.sampler(4)
    dataset.set_epoch(epoch)
    return dataset, [dataset[index] for index in range(len(dataset))]


def test_views_change_no_other_draw_and_are_a_pure_function_of_the_item(tmp_path):
    _, plain = _items(tmp_path / "plain")
    dataset, viewed = _items(tmp_path / "jsd", lambda_jsd=12.0)
    assert dataset.consistency_views == 2 and all("view_pixel_values" not in item for item in plain)
    for before, after in zip(plain, viewed, strict=True):
        assert set(after) - set(before) == {"view_pixel_values"}
        for key, value in before.items():
            assert _same(value, after[key]), key
        first, second = after["view_pixel_values"]
        assert first.shape == before["pixel_values"].shape
        assert not torch.equal(first, second) and not torch.equal(first, before["pixel_values"])
    _, again = _items(tmp_path / "again", lambda_jsd=12.0)
    for first, second in zip(viewed, again, strict=True):
        assert all(map(torch.equal, first["view_pixel_values"], second["view_pixel_values"]))
    _, later = _items(tmp_path / "later", epoch=1, lambda_jsd=12.0)
    assert not torch.equal(viewed[0]["view_pixel_values"][0], later[0]["view_pixel_values"][0])


def test_views_are_augmix_views_of_the_training_crop(tmp_path):
    from anchorclip.augmix import augment_and_mix

    dataset, items = _items(tmp_path, lambda_jsd=1.0)
    for index in (0, 3):
        crop = dataset.transform.view(
            decode_image(dataset.finetune[index][dataset.image_column]), _generator(0, 0, index)
        )
        generator = _generator(dataset.seed, 0, index, -5)
        for view in items[index]["view_pixel_values"]:
            assert torch.equal(view, dataset.transform.to_tensor(augment_and_mix(crop, generator)))


def test_the_collator_puts_views_last_and_the_features_name_them(tmp_path):
    trainer = make_trainer(tmp_path, lambda_jsd=1.0)
    dataset = trainer.train_dataset
    dataset.sampler(4)
    batch = trainer.data_collator([dataset[i] for i in range(4)])
    pairs = batch["num_pairs"]
    assert pairs > 0 and batch["num_views"] == 8 and batch["pixel_values"].shape[0] == 4 + pairs + 8
    embeds = torch.arange(4 + pairs + 8, dtype=torch.float32)[:, None]
    features = ARFFeatures.from_outputs(batch, embeds, torch.zeros(batch["input_ids"].shape[0], 1))
    assert features.images[:, 0].tolist() == [0, 1, 2, 3]
    assert features.pair_images[:, 0].tolist() == list(range(4, 4 + pairs))
    assert features.views[:, 0].tolist() == list(range(4 + pairs, 12 + pairs))
    torch.testing.assert_close(batch["pixel_values"][4 + pairs], dataset[0]["view_pixel_values"][0])


@pytest.mark.parametrize("method", ["flyp", "arf"])
def test_training_logs_the_term_and_accumulation_equals_the_large_batch(tmp_path, method):
    large, small = assert_accumulation_equals_large_batch(tmp_path, atol=5e-6, method=method, lambda_jsd=12.0)
    logs = {
        name: [e["loss_jsd"] for e in t.state.log_history if "loss" in e] for name, t in (("l", large), ("s", small))
    }
    assert logs["s"] == pytest.approx(logs["l"], abs=1e-4) and logs["l"][0] > 0


def test_lambda_jsd_is_validated(tmp_path):
    with pytest.raises(ValueError, match="lambda_jsd must be >= 0"):
        make_args(tmp_path, lambda_jsd=-1.0)
    for method in ("ft", "lp_ft"):
        with pytest.raises(ValueError, match="lambda_jsd .* method='flyp' or 'arf'"):
            make_args(tmp_path, method=method, lambda_jsd=1.0)
    assert make_args(tmp_path).consistency_views == 0


def test_the_flag_and_the_model_card(tmp_path):
    from anchorclip.cli.train import parse_args

    *_, training_args = parse_args(["--lambda_jsd", "12", "--method", "flyp", "--use_cpu"])
    assert training_args.lambda_jsd == 12.0 and training_args.consistency_views == 2
    rows = dict(hyperparameter_rows({"lambda_jsd": 12.0}, "flyp", {}, None))
    assert rows["AugMix consistency (`lambda_jsd`)"].startswith("12, ")
    assert "AugMix consistency (`lambda_jsd`)" not in dict(hyperparameter_rows({"lambda_jsd": 0.0}, "arf", {}, None))
