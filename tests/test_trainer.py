import math
import warnings

import datasets
import pytest
import torch
from conftest import (
    CLASS_NAMES,
    corrupt_bytes,
    make_classification_dataset,
    make_model,
    make_pair_dataset,
    make_processor,
)
from helpers import assert_accumulation_equals_large_batch, assert_moved, make_args, make_trainer, parameters
from transformers import TrainerCallback

from anchorclip import AnchorCLIPTrainer, EvalSet, NonFiniteLossError
from anchorclip.batching import UndecodableImageError
from anchorclip.data import ColumnError


def test_arf_logs_each_loss_term(tmp_path):
    trainer = make_trainer(tmp_path)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logs, trainer.state.log_history
    for entry in logs:
        for term in ("loss_cls", "loss_caption", "loss_pairs", "logit_scale"):
            assert term in entry and math.isfinite(entry[term])
        # L = L_cls + λ1 L_caption + λ2 L_pairs with λ1 = λ2 = 1
        assert entry["loss"] == pytest.approx(
            entry["loss_cls"] + entry["loss_caption"] + entry["loss_pairs"], abs=2e-3
        )


def test_flyp_uses_only_class_prompts(tmp_path):
    trainer = make_trainer(tmp_path, method="flyp")
    trainer.train()
    entry = next(e for e in trainer.state.log_history if "loss" in e)
    assert "loss_cls" in entry and "loss_caption" not in entry and "loss_pairs" not in entry


def test_step_runs_one_image_pass_and_one_text_pass_per_text_width(tmp_path):
    # Images: finetune and pair images in one pass. Texts: the short prompts in one pass, the long captions
    # and pair captions in another (each at its own width), never one pass per anchor kind.
    model = make_model()
    calls = {"image": 0, "text": 0}
    vision_forward, text_forward = model.vision_model.forward, model.text_model.forward

    def count(kind, forward):
        def wrapped(*args, **kwargs):
            calls[kind] += 1
            return forward(*args, **kwargs)

        return wrapped

    model.vision_model.forward = count("image", vision_forward)
    model.text_model.forward = count("text", text_forward)
    make_trainer(tmp_path, model=model, max_steps=1).train()
    assert calls == {"image": 1, "text": 2}


@pytest.mark.parametrize("method", ["arf", "flyp", "ft"])
def test_gradient_accumulation_equals_large_batch(tmp_path, method):
    large, small = assert_accumulation_equals_large_batch(tmp_path, method=method, max_steps=1)
    large_loss = next(e["loss"] for e in large.state.log_history if "loss" in e)
    small_loss = next(e["loss"] for e in small.state.log_history if "loss" in e)
    assert small_loss == pytest.approx(large_loss, abs=1e-4)


@pytest.mark.parametrize("method", ["arf", "lp_ft"])
def test_resume_from_checkpoint_continues_identically(tmp_path, method):
    # LP-FT: the checkpoint at step 2 ends the probing phase; the trained head must come back with it.
    common = dict(max_steps=4, save_strategy="steps", save_steps=2, per_device_train_batch_size=4, method=method)
    straight = make_trainer(tmp_path / "straight", **common)
    straight.train()

    class Interrupt(TrainerCallback):  # a crash right after the step-2 checkpoint, schedule untouched
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step == 2

    first = make_trainer(tmp_path / "resumed", **common)
    first.add_callback(Interrupt())
    first.train()
    assert first.state.global_step == 2

    class Record(TrainerCallback):  # what the resumed run starts from, and which steps it runs
        start, optimizer_steps, steps = None, None, []

        def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
            Record.start = state.global_step
            Record.optimizer_steps = {int(s["step"]) for s in optimizer.state.values()}  # AdamW's own counts

        def on_step_end(self, args, state, control, **kwargs):
            Record.steps.append(state.global_step)

    resumed = make_trainer(tmp_path / "resumed", **common)
    resumed.add_callback(Record())
    resumed.train(resume_from_checkpoint=str(tmp_path / "resumed" / "out" / "checkpoint-2"))
    # A "resume" that retrained from scratch ends with the same weights: it must start at step 2, with the
    # optimizer's moments of 2 steps, and run only steps 3 and 4.
    assert Record.start == 2 and Record.optimizer_steps == {2} and Record.steps == [3, 4]
    logged = [entry["step"] for entry in resumed.state.log_history if "loss" in entry]
    assert logged == [1, 2, 3, 4]  # the checkpoint's history of steps 1-2, then this run's 3-4
    for name, value in parameters(straight.model).items():
        torch.testing.assert_close(resumed.model.get_parameter(name), value, atol=1e-6, rtol=1e-5, msg=name)


def test_non_finite_loss_stops_with_clear_message_and_keeps_checkpoint(tmp_path):
    class PoisonAfterStep2(TrainerCallback):  # after checkpoint-2 is written
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            if state.global_step == 2:
                with torch.no_grad():
                    model.visual_projection.weight.fill_(float("nan"))

    trainer = make_trainer(tmp_path, max_steps=4, save_strategy="steps", save_steps=2)
    trainer.add_callback(PoisonAfterStep2())
    with pytest.raises(NonFiniteLossError, match="non-finite at step 2"):
        trainer.train()
    _assert_checkpoint_2_is_finite(tmp_path)


def test_deferred_finite_check_still_protects_checkpoints(tmp_path):
    """GPU mode: no per-step host sync, the check runs at logging and before every checkpoint."""

    class PoisonAfterStep2(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            if state.global_step == 2:
                with torch.no_grad():
                    model.visual_projection.weight.fill_(float("nan"))

    trainer = make_trainer(tmp_path, max_steps=6, save_strategy="steps", save_steps=2, logging_steps=5)
    trainer.check_finite_each_step = False
    trainer.add_callback(PoisonAfterStep2())
    with pytest.raises(NonFiniteLossError, match="between steps 2 and 4"):
        trainer.train()
    assert not (tmp_path / "out" / "checkpoint-4").exists()
    _assert_checkpoint_2_is_finite(tmp_path)


def _assert_checkpoint_2_is_finite(tmp_path):
    from anchorclip import AnchorCLIPModel

    saved = AnchorCLIPModel.from_pretrained(str(tmp_path / "out" / "checkpoint-2"))
    assert all(torch.isfinite(p).all() for p in saved.parameters())


# ---------------------------------------------------------------- bad input


def test_missing_caption_column_names_it(tmp_path):
    with pytest.raises(ColumnError, match=r"caption column.*\['image', 'label'\]"):
        make_trainer(tmp_path, train=make_classification_dataset(with_captions=False))


def test_missing_image_column_names_it(tmp_path):
    # One image column under an unknown name is unambiguous and taken; two are not, and the error names them.
    data = make_classification_dataset().rename_column("image", "picture")
    assert make_trainer(tmp_path, train=data).train_dataset is not None
    data = data.add_column("thumbnail", data.cast_column("picture", datasets.Image(decode=False))["picture"])
    data = data.cast_column("thumbnail", datasets.Image())
    with pytest.raises(ColumnError, match=r"No image column.*'picture', .*'thumbnail'"):
        make_trainer(tmp_path, train=data)


def test_explicit_missing_label_column_names_it(tmp_path):
    with pytest.raises(ColumnError, match=r"label column 'target' is missing.*'image', 'label', 'caption'"):
        make_trainer(tmp_path, label_column="target")


def test_labels_outside_class_names(tmp_path):
    data = make_classification_dataset().cast_column("label", make_classification_dataset().features["caption"])
    data = data.map(lambda row, i: {"label": str(i % 6)}, with_indices=True)
    data = data.cast_column("label", __import__("datasets").Value("int64"))
    trainer_kwargs = dict(
        model=make_model(),
        args=make_args(tmp_path),
        train_dataset=data,
        pair_anchors=make_pair_dataset(),
        processing_class=make_processor(),
    )
    with pytest.raises(ValueError, match=r"Label ids \[4, 5\].*outside the 4 class names"):
        AnchorCLIPTrainer(class_names=CLASS_NAMES, **trainer_kwargs)


def test_empty_pair_anchors_with_positive_lambda(tmp_path):
    with pytest.raises(ValueError, match="pair-anchor set is empty"):
        make_trainer(tmp_path, pairs=make_pair_dataset().select([]))
    make_trainer(tmp_path, pairs=None, lambda_pairs=0.0)  # fine when the term is off


def _with_corrupt_image(index: int):
    data = make_classification_dataset()
    data = data.cast_column("image", __import__("datasets").Image(decode=False))
    return data.map(lambda row, i: {"image": corrupt_bytes()} if i == index else {}, with_indices=True)


def test_undecodable_image_is_skipped_and_counted(tmp_path):
    trainer = make_trainer(tmp_path, train=_with_corrupt_image(3), per_device_train_batch_size=16, max_steps=1)
    trainer.train()
    assert next(e for e in trainer.state.log_history if "loss" in e)["skipped_images"] == 1


def test_undecodable_image_strict_raises(tmp_path):
    trainer = make_trainer(
        tmp_path, train=_with_corrupt_image(3), per_device_train_batch_size=16, max_steps=1, strict_images=True
    )
    with pytest.raises(UndecodableImageError, match="Row 3"):
        trainer.train()


# ---------------------------------------------------------------- evaluation


def test_evaluate_named_sets_and_group_means(tmp_path):
    trainer = make_trainer(tmp_path)
    sets = {
        "photo": EvalSet(make_classification_dataset(8, seed=5), group="id"),
        "sketch": EvalSet(make_classification_dataset(8, seed=6), group="domain_shift"),
        "colours": EvalSet(
            make_classification_dataset(8, seed=7),
            group="zero_shot",
            class_names=["red", "green", "blue", "yellow"],
            templates=["a {} shape."],
        ),
    }
    metrics = trainer.evaluate(sets)
    model = trainer.model
    for name, eval_set in sets.items():
        images = [row["image"] for row in eval_set.dataset]
        logits = model.classify(
            images=images, class_names=eval_set.class_names or CLASS_NAMES, templates=eval_set.templates or "simple"
        )
        expected = (logits.argmax(-1) == torch.tensor(eval_set.dataset["label"])).float().mean().item()
        assert metrics[f"eval_{name}_top1"] == pytest.approx(expected)
    assert metrics["eval_id_mean"] == metrics["eval_photo_top1"]
    assert metrics["eval_zero_shot_mean"] == metrics["eval_colours_top1"]


def _top1(model, dataset) -> float:
    """Top-1 of a head built now from `model`'s text tower (the independent reference)."""
    logits = model.classify(images=[row["image"] for row in dataset], class_names=CLASS_NAMES, templates="simple")
    return (logits.argmax(-1) == torch.tensor(dataset["label"])).float().mean().item()


def test_group_mean_averages_every_set_of_the_group(tmp_path):
    # Two sets in each of two groups, with different scores: a group's mean is the mean of its sets' top-1.
    trainer = make_trainer(tmp_path)
    model = trainer.model
    images = make_classification_dataset(16, seed=5)
    predicted = model.classify(images=list(images["image"]), class_names=CLASS_NAMES, templates="simple").argmax(-1)
    perfect = images.map(lambda row, i: {"label": int(predicted[i])}, with_indices=True)  # top-1 exactly 1
    sets = {
        "photo": EvalSet(perfect, group="id"),
        "photo_again": EvalSet(make_classification_dataset(16, seed=6), group="id"),
        "sketch": EvalSet(make_classification_dataset(8, seed=7), group="domain_shift"),
        "painting": EvalSet(perfect.select(range(8)), group="domain_shift"),
    }
    metrics = trainer.evaluate(sets)
    scores = {name: metrics[f"eval_{name}_top1"] for name in sets}
    assert scores["photo"] == 1.0 and scores["photo_again"] == pytest.approx(_top1(model, sets["photo_again"].dataset))
    assert scores["photo_again"] < 1.0 and scores["sketch"] < 1.0  # the means below are not of equal numbers
    assert metrics["eval_id_mean"] == pytest.approx((scores["photo"] + scores["photo_again"]) / 2)
    assert metrics["eval_domain_shift_mean"] == pytest.approx((scores["sketch"] + scores["painting"]) / 2)


def test_temperature_is_clamped_after_every_optimizer_step(tmp_path):
    from anchorclip.loss import LOGIT_SCALE_MAX

    class Overshoot(TrainerCallback):  # every optimizer step drives the temperature past ln(100)
        def on_optimizer_step(self, args, state, control, model=None, **kwargs):
            with torch.no_grad():
                model.logit_scale.fill_(LOGIT_SCALE_MAX + 0.5)

    class Record(TrainerCallback):  # runs after the trainer's own callbacks
        after_steps = []

        def on_step_end(self, args, state, control, model=None, **kwargs):
            Record.after_steps.append(model.logit_scale.item())

    trainer = make_trainer(tmp_path, max_steps=3)
    trainer.add_callback(Overshoot())
    trainer.add_callback(Record())
    trainer.train()
    assert Record.after_steps == [pytest.approx(LOGIT_SCALE_MAX)] * 3
    logged = [entry["logit_scale"] for entry in trainer.state.log_history if "logit_scale" in entry]
    assert logged and max(logged) <= 100.0


def test_evaluate_follows_the_current_text_tower(tmp_path):
    trainer = make_trainer(tmp_path)
    model = trainer.model
    images = make_classification_dataset(16, seed=5)
    # Labels = the current tower's own predictions: a head built before the change scores exactly 1.
    predicted = model.classify(images=list(images["image"]), class_names=CLASS_NAMES, templates="simple").argmax(-1)
    sets = {"photo": images.map(lambda row, i: {"label": int(predicted[i])}, with_indices=True)}
    assert trainer.evaluate(sets)["eval_photo_top1"] == 1.0
    # Swap the token embeddings of the two most-predicted class words: the new head is the old one with those
    # two rows swapped, so every image predicted as either now scores a miss under the current tower.
    first, second = torch.bincount(predicted, minlength=len(CLASS_NAMES)).topk(2).indices.tolist()
    ids = trainer.processing_class.tokenizer.convert_tokens_to_ids([CLASS_NAMES[first], CLASS_NAMES[second]])
    with torch.no_grad():
        table = model.text_model.embeddings.token_embedding.weight
        table[ids] = table[ids[::-1]].clone()
    after = trainer.evaluate(sets)["eval_photo_top1"]
    assert after == pytest.approx(_top1(model, sets["photo"]))
    assert after < 1.0  # a stale head (or one cached from the first call) would still score 1


@pytest.mark.parametrize("method", ["ft", "lp_ft"])
def test_linear_head_baselines_train_and_evaluate(tmp_path, method):
    trainer = make_trainer(tmp_path, method=method, max_steps=4, per_device_train_batch_size=4)
    text_before = trainer.model.clip.text_projection.weight.detach().clone()
    vision_before = trainer.model.clip.visual_projection.weight.detach().clone()
    head_before = trainer.model.finetune_head.detach().clone()
    trainer.train()
    assert torch.equal(trainer.model.clip.text_projection.weight, text_before)  # text tower frozen
    # AdamW moves a weight by about the learning rate (1e-3) a step: a tenth of it is training, not noise.
    assert_moved(head_before, trainer.model.finetune_head, "finetune_head", at_least=1e-4)
    assert_moved(vision_before, trainer.model.clip.visual_projection.weight, "visual_projection.weight", at_least=1e-4)
    metrics = trainer.evaluate({"photo": make_classification_dataset(8, seed=5)})
    assert 0.0 <= metrics["eval_photo_top1"] <= 1.0


def test_lp_ft_probes_before_finetuning(tmp_path):
    trainer = make_trainer(tmp_path, method="lp_ft", max_steps=2, lp_fraction=1.0)
    vision_before = trainer.model.clip.visual_projection.weight.detach().clone()
    trainer.train()
    assert torch.equal(trainer.model.clip.visual_projection.weight, vision_before)


def test_zeroshot_method_refuses_to_train(tmp_path):
    with pytest.raises(ValueError, match="trains nothing"):
        make_trainer(tmp_path, method="zeroshot").train()


def test_bf16_autocast_keeps_loss_in_fp32(tmp_path):
    trainer = make_trainer(tmp_path, bf16=True, max_steps=1)
    seen = []  # the towers' output dtypes in the training forward (the trainer's autocast)
    for projection in (trainer.model.visual_projection, trainer.model.text_projection):
        projection.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    trainer.train()
    assert seen and set(seen) == {torch.bfloat16}, seen
    entry = next(e for e in trainer.state.log_history if "loss" in e)
    assert math.isfinite(entry["loss"]) and math.isfinite(entry["loss_pairs"])
    assert trainer.model.logit_scale.dtype == torch.float32


def test_remove_unused_columns_cannot_drop_image_columns(tmp_path):
    trainer = make_trainer(tmp_path, remove_unused_columns=True, max_steps=1)
    trainer.train()  # anchorclip builds its own batches: nothing for Trainer to drop
    assert any("loss_caption" in e for e in trainer.state.log_history)


def test_epoch_reaches_persistent_workers():
    from torch.utils.data import DataLoader

    from anchorclip.batching import AnchoredDataset
    from anchorclip.data import with_raw_images
    from anchorclip.transforms import ImageTransform

    dataset = AnchoredDataset(
        with_raw_images(make_classification_dataset(8), "image"), ImageTransform(size=16, train=True), "image",
        "label", pairs=with_raw_images(make_pair_dataset(40), "image"), pair_image_column="image",
        pair_caption_ids=[{"input_ids": [2, 3]}] * 40, pairs_per_item=1,
    )  # fmt: skip
    loader = DataLoader(dataset, batch_size=8, num_workers=1, persistent_workers=True, collate_fn=lambda items: items)
    first = [item["pair_pixel_values"][0] for item in next(iter(loader))]
    dataset.set_epoch(1)
    second = [item["pair_pixel_values"][0] for item in next(iter(loader))]
    assert not all(torch.equal(a, b) for a, b in zip(first, second))  # a new epoch, new pairs and crops


@pytest.mark.parametrize(("size", "batch", "accumulation"), [(3, 4, 1), (6, 4, 2)])
def test_finetune_set_smaller_than_one_global_batch_is_refused(tmp_path, size, batch, accumulation):
    # Before: 3 < 4 drew no batch ("not a single sample", exit 0, an untrained model saved as finetuned).
    trainer = make_trainer(
        tmp_path,
        train=make_classification_dataset(size),
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
    )
    global_batch = batch * accumulation
    with pytest.raises(ValueError, match=rf"has {size} examples, fewer than one global batch of {global_batch}"):
        trainer.train()


def test_zero_epochs_and_no_max_steps_is_refused(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=-1, num_train_epochs=0)
    with pytest.raises(ValueError, match="give zero optimizer steps"):
        trainer.train()


def test_multi_process_launch_that_would_not_synchronise_is_refused(tmp_path, monkeypatch):
    # `accelerate launch --multi_gpu --num_processes 2` without --use_cpu on a CPU machine: WORLD_SIZE=2, yet
    # transformers sets up a plain one-process CPU device (checked for real in tests/test_multiprocess.py).
    args = make_args(tmp_path, use_cpu=False)
    assert args.parallel_mode.value == "not_parallel"
    args._check_processes_synchronise()  # one process: fine
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match=r"launched as 2 processes .* add --use_cpu"):
        args._check_processes_synchronise()


def test_weight_decay_spares_temperature_embeddings_biases_and_norms(tmp_path):
    trainer = make_trainer(tmp_path, weight_decay=0.1)
    model = trainer.model
    decayed = set(trainer.get_decay_parameter_names(model))
    exempt = {name for name, _ in model.named_parameters()} - decayed
    for name in (
        "logit_scale",
        "vision_model.embeddings.class_embedding",
        "vision_model.embeddings.position_embedding.weight",
        "text_model.embeddings.token_embedding.weight",
        "text_model.embeddings.position_embedding.weight",
        "vision_model.pre_layrnorm.weight",
        "vision_model.encoder.layers.0.layer_norm1.weight",
        "text_model.final_layer_norm.weight",
        "text_model.encoder.layers.1.mlp.fc2.bias",
    ):
        assert name in exempt, name
    for name in (
        "vision_model.embeddings.patch_embedding.weight",  # a convolution: decayed, like open_clip's conv1
        "vision_model.encoder.layers.0.self_attn.q_proj.weight",
        "text_model.encoder.layers.1.mlp.fc2.weight",
        "visual_projection.weight",
        "text_projection.weight",
    ):
        assert name in decayed, name
    trainer.create_optimizer()
    groups = trainer.optimizer.param_groups
    zero_decay = {id(p) for group in groups if group["weight_decay"] == 0 for p in group["params"]}
    assert id(model.logit_scale) in zero_decay and id(model.visual_projection.weight) not in zero_decay


def test_weight_decay_names_follow_lora(tmp_path):
    trainer = make_trainer(tmp_path, method="flyp", lora_r=4, weight_decay=0.1)
    decayed = trainer.get_decay_parameter_names(trainer.model)
    trainable = [name for name, p in trainer.model.named_parameters() if p.requires_grad]
    assert any("lora_A" in name for name in decayed) and any("lora_B" in name for name in decayed)
    assert set(decayed) & set(trainable) == {name for name in trainable if "lora_" in name}
    spared = ("token_embedding", "position_embedding", "class_embedding", "logit_scale", "norm", "bias")
    assert not [name for name in decayed if any(word in name for word in spared)]


def test_cpu_run_does_not_ask_for_pinned_memory(tmp_path):
    """Pinned memory only helps copies to an accelerator: on CPU torch warns on every loader, so it is off."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = make_trainer(tmp_path, max_steps=1)
        trainer.train()
        trainer.evaluate({"photo": make_classification_dataset(8, seed=5)})
    assert trainer.args.dataloader_pin_memory is False
    assert not [str(w.message) for w in caught if "pin_memory" in str(w.message)]
