"""`AnchorCLIPTrainer`: ARF and its baselines (FLYP, FT, LP-FT, zero-shot) on one `transformers.Trainer`.

One ARF step is a single image pass over [finetune images; retrieved-pair images] and a single text pass
over [class prompts; captions; pair captions] (see `collate.AnchorCollator`), named as `loss.ARFFeatures` and
scored by `loss.ARFLoss`. The FT / LP-FT baselines train `heads.LinearHeadCLIP` with cross-entropy.

Gradient accumulation. A contrastive loss is not a sum over micro-batches (the negatives change), so
accumulating micro-batch losses is *not* training with the large batch. We follow open_clip's
`--accum-freq`: embed every micro-batch of the accumulation window without gradients, then for each
micro-batch recompute its features with gradients and evaluate the loss of the *whole* window with the
others' cached features. Summing those gradients gives exactly the large-batch gradient, at the cost of
one extra no-grad forward per micro-batch.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sized
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPProcessor, TrainerCallback
from transformers.data.data_collator import DataCollator
from transformers.trainer import TRAINING_ARGS_NAME

from .batching import AnchoredDataset
from .callbacks import ClampLogitScale, SetEpoch
from .checkpoints import save_weights_on_this_node
from .evaluation import GROUPS, EvalSet
from .evaluation.zero_shot import ZeroShotScorer
from .heads import LinearHeadCheckpoints, LinearHeadCLIP, with_saved_head
from .hub.trainer_hooks import HubTrainerMixin
from .lora import apply_lora_from_args, is_lora_model, save_lora_extras
from .loss import ARFFeatures, ARFLoss, FrozenImageTower
from .modeling_anchorclip import AnchorCLIPModel
from .train_data import build_train_data, check_steps_will_train
from .training_args import AnchorTrainingArguments
from .transforms import ImageTransform

if TYPE_CHECKING:
    import datasets
    from torch.utils.data import Dataset
    from transformers.trainer_utils import TrainOutput

    # What evaluate() scores: a set, or sets by name (Trainer's own type included, for the override).
    EvalDataset: TypeAlias = datasets.Dataset | Dataset | EvalSet
    EvalDatasets: TypeAlias = EvalDataset | Mapping[str, EvalDataset]

logger = logging.getLogger(__name__)

LOSS_TERMS = ("loss_cls", "loss_caption", "loss_pairs", "loss_distill", "loss_jsd", "loss_ce")


class NonFiniteLossError(RuntimeError):
    """Training stopped because the loss became NaN or infinite."""


class AnchorCLIPTrainer(HubTrainerMixin, LinearHeadCheckpoints):
    """Finetune a CLIP model with ARF or a baseline (see `AnchorTrainingArguments.method`).

    Args:
        model: an `AnchorCLIPModel` (load any CLIP checkpoint with `AnchorCLIPModel.from_pretrained`); for FT /
            LP-FT it gets a linear head (`heads.LinearHeadCLIP`), or keeps the one saved beside its checkpoint.
        args: `AnchorTrainingArguments`.
        train_dataset: the finetune set: an image column, an integer label column and, for ARF with
            λ1 > 0 and no `caption_anchors`, a caption column.
        eval_dataset: a dataset, an `EvalSet`, or a dict `{name: Dataset | EvalSet}`; each is scored
            zero-shot with a head built from the current text tower.
        processing_class: the model's `CLIPProcessor` (tokenizer + image processor); saved with checkpoints.
        class_names: finetune class names in label-id order (default: the label column's `ClassLabel` names).
        pair_anchors: retrieved image-caption pairs (see `anchorclip retrieve`), used when λ2 > 0.
        caption_anchors: a captions table keyed by row id (see `anchorclip caption`), joined to `train_dataset`
            by id when λ1 > 0; rows whose caption is null (undecodable images) are left out of training.
    """

    # compute_loss returns a loss already scaled for accumulation (see module docstring).
    loss_is_scaled_for_ga = True
    # When to look for a NaN/inf loss: True every micro-step; False at each log and before each checkpoint
    # (no per-step host sync); None (default) every step on CPU, at logs/checkpoints on accelerators.
    check_finite_each_step: bool | None = None
    # Narrower than Trainer's own annotations: the constructor accepts nothing else.
    args: AnchorTrainingArguments
    processing_class: CLIPProcessor

    def __init__(
        self,
        model: AnchorCLIPModel | LinearHeadCLIP,
        args: AnchorTrainingArguments,
        train_dataset: datasets.Dataset | None = None,
        eval_dataset: EvalDatasets | None = None,
        processing_class: CLIPProcessor | None = None,
        class_names: list[str] | None = None,
        pair_anchors: datasets.Dataset | None = None,
        callbacks: list[TrainerCallback] | None = None,
        caption_anchors: datasets.Dataset | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(args, AnchorTrainingArguments):
            raise TypeError("AnchorCLIPTrainer needs AnchorTrainingArguments.")
        if processing_class is None:
            raise ValueError("Pass processing_class=CLIPProcessor (its tokenizer and image processor are needed).")
        self.class_names = class_names
        self.arf_loss = ARFLoss.from_args(args)  # FLYP: L_cls alone
        # Kept on the device and read at logging / checkpoint time: a `.item()` per micro-step would stall the
        # GPU queue every step.
        self._term_sums: dict[str, torch.Tensor] = {}
        self._term_counts: dict[str, int] = defaultdict(int)
        self._all_finite: torch.Tensor | None = None
        self._last_finite_step = 0
        self._skipped_images = 0
        self._window: list[dict] = []
        self._window_cache: list[ARFFeatures] | None = None
        self._micro = 0

        if isinstance(model, LinearHeadCLIP) and train_dataset is not None and args.is_contrastive:
            raise ValueError(f"method={args.method!r} trains the CLIP model: pass model.clip, not its linear head.")
        train_data, collator = None, None
        if train_dataset is not None:
            clip = model.clip if isinstance(model, LinearHeadCLIP) else model
            train_data, collator, self.class_names = build_train_data(
                train_dataset, pair_anchors, args, processing_class, clip, self.class_names, caption_anchors
            )
        callbacks = [ClampLogitScale(), SetEpoch(), *(callbacks or [])]
        if args.method == "lp_ft":
            # Read when Trainer builds its Accelerator (below): the image tower gets no gradient while probing.
            args.ddp_find_unused_parameters = True
        # L_distill's per-step targets, for augmented pair images (un-augmented ones bring theirs in the batch).
        self.distill_tower: FrozenImageTower | None = None
        if args.uses_distillation and is_lora_model(model):
            raise ValueError("lambda_distill > 0: pass the plain AnchorCLIPModel (LoRA is applied from args).")
        if args.uses_distillation and args.augment_pairs:
            self.distill_tower = FrozenImageTower(model.clip if isinstance(model, LinearHeadCLIP) else model)
        # LoRA (anchorclip/lora.py): wrap in a PeftModel before Trainer builds the optimizer.
        if args.lora_r > 0 and not is_lora_model(model):
            model = apply_lora_from_args(model, args)
        if isinstance(model, AnchorCLIPModel) and (args.method in ("ft", "lp_ft") or train_dataset is None):
            model = with_saved_head(model)  # a checkpoint of an FT / LP-FT run brings its head
        new_head: LinearHeadCLIP | None = None
        if args.method in ("ft", "lp_ft") and not isinstance(model, LinearHeadCLIP):
            # FT / LP-FT start from the zero-shot head (init_from_zero_shot, below)
            projection_dim = model.visual_projection.out_features
            model = new_head = LinearHeadCLIP(model, torch.zeros(len(self.class_names or ()), projection_dim))
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_data,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            data_collator=cast("DataCollator", collator),  # ARFBatch is a TypedDict: a dict at runtime
            callbacks=callbacks,
            **kwargs,
        )
        if new_head is not None:  # computed where Trainer placed the model
            new_head.init_from_zero_shot(self.class_names or [], args.eval_templates, processing_class.tokenizer)
        if args.method in ("ft", "lp_ft") and isinstance(model, LinearHeadCLIP):  # it is: a head was added above
            model.freeze_text_tower()

    def _get_train_sampler(self, train_dataset=None):
        """The `AnchoredDataset`'s own epoch order, so that it can deal pairs by global batch (see batching.py).

        A global batch is the contrastive batch of one optimizer step: every process's micro-batches of the
        accumulation window. `train_sampling_strategy="sequential"` keeps the dataset order.
        """
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if not isinstance(dataset, AnchoredDataset):
            return super()._get_train_sampler(train_dataset)
        processes = 1 if self.accelerator.split_batches else self.args.world_size  # split: batch is already global
        batch_items = self._train_batch_size * processes * self.args.gradient_accumulation_steps
        return dataset.sampler(batch_items, shuffle=self.args.train_sampling_strategy != "sequential")

    # ------------------------------------------------------------------ loss

    def get_batch_samples(
        self, epoch_iterator: Iterator, num_batches: int, device: torch.device
    ) -> tuple[list, torch.Tensor | int | None]:
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        self._window, self._window_cache, self._micro = batch_samples, None, 0
        return batch_samples, num_items_in_batch

    def train(self, *args: Any, **kwargs: Any) -> TrainOutput:
        if self.args.method == "zeroshot":
            raise ValueError("method='zeroshot' trains nothing: call evaluate() on the pretrained model instead.")
        # Refuse settings that give zero optimizer steps (Trainer would warn, save and exit 0).
        check_steps_will_train(self.args, len(self.train_dataset) if isinstance(self.train_dataset, Sized) else None)
        output = super().train(*args, **kwargs)
        if self.state.global_step == 0:  # whatever the cause: never report an untouched model as finetuned
            raise RuntimeError("Training ended without a single optimizer step; the model was not finetuned.")
        return output

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """The training loss of one micro-batch: ARF/FLYP contrastive terms, or cross-entropy for FT / LP-FT.

        Each term is accumulated for logging (`loss_cls`, `loss_caption`, `loss_pairs`, `loss_distill`, `loss_jsd`,
        `loss_ce`); a non-finite loss raises `NonFiniteLossError` (see `check_finite_each_step` for when), never
        after a checkpoint of the weights it touched has been written.
        """
        self._skipped_images += int(inputs.pop("num_skipped_images", 0))
        if not model.training:
            raise NotImplementedError("AnchorCLIPTrainer scores evaluation sets with evaluate(), not a loss.")
        window = len(self._window) or 1
        micro, self._micro = self._micro % window, self._micro + 1  # modulo: calls outside a training loop
        if self.args.method in ("ft", "lp_ft"):
            terms = {"loss_ce": self._cross_entropy(model, inputs)}
            loss = terms["loss_ce"] / window
        else:
            loss, terms = self._contrastive_window_loss(model, inputs, micro, window)
        finite = torch.isfinite(loss.detach()).all()
        self._all_finite = finite if self._all_finite is None else self._all_finite & finite
        for name, value in terms.items():
            value = value.detach().float()
            self._term_sums[name] = self._term_sums[name] + value if name in self._term_sums else value
            self._term_counts[name] += 1
        each_step = self.check_finite_each_step
        if each_step or (each_step is None and loss.device.type == "cpu"):
            self._check_finite(terms)  # no device queue to stall: fail at once, before this step's update
        return (loss, None) if return_outputs else loss

    def _cross_entropy(self, model, inputs) -> torch.Tensor:
        probing = self.args.method == "lp_ft" and self.state.global_step < self.args.lp_fraction * self.state.max_steps
        # `model` is the (DDP-wrapped) LinearHeadCLIP: the head runs inside the wrapped forward (see heads.py).
        logits = model(pixel_values=inputs["pixel_values"], train_image_tower=not probing)
        return F.cross_entropy(logits.logits_per_image, inputs["labels"])

    def _features(self, model, inputs) -> ARFFeatures:
        """One image pass and the text passes of `text_groups`, named by role."""
        outputs = model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            pixel_values=inputs["pixel_values"],
            text_groups=inputs.get("text_groups"),
        )
        return ARFFeatures.from_outputs(inputs, outputs.image_embeds, outputs.text_embeds)

    def _contrastive_window_loss(self, model, inputs, micro: int, window: int):
        if window > 1 and self._window_cache is None:
            with torch.no_grad():
                self._window_cache = [self._features(model, self._prepare_inputs(batch)) for batch in self._window]
        local = self._features(model, inputs)
        if self.distill_tower is not None:  # augmented pair images: their targets change every step
            self.distill_tower.to(local.images.device)
            # f₀ of the clean crop: with AugMix or corrupted pairs the student's pixels may be another view.
            first = inputs["labels"].shape[0]  # the pair images follow the finetune images
            clean = (
                inputs["pair_clean_pixel_values"]
                if self.args.augmix > 0 or self.args.corrupt_pairs > 0
                else inputs["pixel_values"][first : first + inputs["num_pairs"]]
            )
            local.distill_targets = self.distill_tower(clean)
        # The whole window's features: this micro-batch's with gradients, the others' cached.
        cache = self._window_cache if self._window_cache is not None else []  # empty when window == 1
        features = ARFFeatures.cat([cache[j] if j != micro else local for j in range(window)])
        logit_scale = self.accelerator.unwrap_model(model).logit_scale
        if micro != window - 1:
            # The loss is evaluated `window` times; let the temperature collect its gradient only once.
            logit_scale = logit_scale.detach()
        output = self.arf_loss(features, logit_scale, local=local)
        # Each of the `window` backward passes must carry the full gradient of its micro-batch's features,
        # while the reported value sums to the window's loss: value loss/window, gradient of loss. A per-image
        # term (distillation) is this micro-batch's own mean: its share of the window's mean is 1/window.
        loss = output.window_loss
        total = loss.detach() / window + (loss - loss.detach())
        if output.local_loss is not None:
            total = total + output.local_loss / window
        return total, output.terms

    # ------------------------------------------------------------------ logs

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._term_counts:
            self._check_finite()
            names = [name for name in LOSS_TERMS if self._term_counts.get(name)]
            local = torch.stack([self._term_sums[n] / self._term_counts[n] for n in names]).to(self.args.device)
            mean = self.accelerator.reduce(local, reduction="mean")
            logs.update({name: round(value, 4) for name, value in zip(names, mean.tolist())})
            logs["logit_scale"] = round(self.accelerator.unwrap_model(self.model).logit_scale.exp().item(), 3)
            skipped = self.accelerator.reduce(torch.tensor(self._skipped_images, device=self.args.device), "sum")
            if skipped.item():
                logs["skipped_images"] = int(skipped.item())
            self._term_sums.clear()
            self._term_counts.clear()
        super().log(logs, start_time)

    def _check_finite(self, terms: dict[str, torch.Tensor] | None = None) -> None:
        """Raise `NonFiniteLossError` if any loss since the last check was NaN/inf (one host sync)."""
        if self._all_finite is None or bool(self._all_finite):
            self._last_finite_step = self.state.global_step
            return
        detail = f" ({', '.join(f'{k}={v.item():.4g}' for k, v in terms.items())})" if terms else ""
        where = (
            f"at step {self.state.global_step}"
            if self._last_finite_step == self.state.global_step
            else f"between steps {self._last_finite_step} and {self.state.global_step}"
        )
        raise NonFiniteLossError(
            f"Loss became non-finite {where}{detail}. Training stopped; the last checkpoint in "
            f"{self.args.output_dir} is intact. Lower the learning rate, use bf16 rather than fp16, or check the "
            "inputs."
        )

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        """Parameters under weight decay, as open_clip chooses them: weight matrices only.

        Exempt: `logit_scale`, biases, norm gains and ViT's class embedding (every parameter with fewer than
        two dimensions), and the token and position embeddings (`nn.Embedding` weights): decay would shrink the
        temperature, the norms' scales and the embeddings toward zero (HF's default decays all but biases and norms).
        The names are the model's own, so a LoRA `PeftModel` works too (its adapter matrices are decayed).
        """
        embeddings = {f"{name}.weight" for name, module in model.named_modules() if isinstance(module, nn.Embedding)}
        return [name for name, parameter in model.named_parameters() if parameter.ndim >= 2 and name not in embeddings]

    def _save_checkpoint(self, model, trial):
        self._check_finite()  # never write a checkpoint of weights a non-finite loss may have updated
        return super()._save_checkpoint(model, trial)

    # ------------------------------------------------------------ evaluation

    def evaluate(
        self,
        eval_dataset: EvalDatasets | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> dict[str, float]:
        """Zero-shot metrics of each named set, plus the mean score of each group (`GROUPS`).

        Classification sets give `top1`, `top5` (more than 5 classes) and `mean_per_class_recall`; retrieval
        sets give `image2text_recall@k`, `text2image_recall@k` (k = 1, 5, 10) and their mean, `mean_recall`.
        A set's score (its table cell, averaged into its group) is its top-1, or its mean recall. Heads are
        rebuilt from the current text tower for every call, so they follow finetuning. For FT / LP-FT, sets
        over the finetune class names use the trained linear head instead.
        """
        eval_dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if eval_dataset is None:
            raise ValueError("No evaluation set: pass eval_dataset to the trainer or to evaluate().")
        if not isinstance(eval_dataset, dict):
            eval_dataset = {metric_key_prefix.removeprefix("eval").strip("_") or "eval": eval_dataset}
        model = self.accelerator.unwrap_model(self.model)
        finetune_head = None
        if isinstance(model, LinearHeadCLIP):
            finetune_head = (list(self.class_names), model.head) if self.class_names else None
            model = model.clip
        scorer = ZeroShotScorer(
            model,
            self.processing_class.tokenizer,
            ImageTransform.from_image_processor(self.processing_class.image_processor),
            self.accelerator,
            batch_size=self.args.per_device_eval_batch_size,
            num_workers=self.args.dataloader_num_workers,
            templates=self.args.eval_templates,
            autocast=self.autocast_smart_context_manager,
            finetune_head=finetune_head,
            progress=self.is_local_process_zero(),
        )
        metrics, by_group = {}, defaultdict(list)
        for name, eval_set in eval_dataset.items():
            eval_set = eval_set if isinstance(eval_set, EvalSet) else EvalSet(eval_set)
            scores = scorer.score(eval_set)
            if eval_set.is_retrieval:
                scores["mean_recall"] = float(np.mean(list(scores.values())))
            metrics.update({f"{metric_key_prefix}_{name}_{key}": value for key, value in scores.items()})
            by_group[eval_set.group].append(scores["mean_recall" if eval_set.is_retrieval else "top1"])
        for group in GROUPS:
            if by_group[group]:
                metrics[f"{metric_key_prefix}_{group}_mean"] = float(np.mean(by_group[group]))
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        model = self.accelerator.unwrap_model(self.model)
        folder = output_dir if output_dir is not None else self.args.output_dir
        assert folder is not None  # TrainingArguments fills in a default
        if isinstance(model, LinearHeadCLIP):  # not a PreTrainedModel: Trainer would write one flat state dict
            if self.args.should_save:
                os.makedirs(folder, exist_ok=True)
                model.save_pretrained(folder, state_dict=state_dict)  # CLIP checkpoint + head file
                self.processing_class.save_pretrained(folder)
                torch.save(self.args, os.path.join(folder, TRAINING_ARGS_NAME))
            return
        super()._save(output_dir, state_dict=state_dict)
        if self.args.should_save and not self.is_world_process_zero():  # save_on_each_node: see the function
            save_weights_on_this_node(model, folder, state_dict)
        if self.args.should_save and is_lora_model(self.model):
            from .hub import logged_results, write_model_card

            save_lora_extras(self.model, folder)  # class names/templates beside the adapters
            # peft just wrote its empty template card as README.md (base model by local path): ours replaces it,
            # from the logs only (a results.json in output_dir may be an earlier run's).
            write_model_card(self, folder, results=logged_results(self))
