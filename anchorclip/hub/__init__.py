"""Push a finetuned model to the Hugging Face Hub with a model card; offline, write the exact upload folder.

`AnchorCLIPTrainer.push_to_hub()` (and `--push_to_hub` in `examples/run_anchor_ft.py`) call `push_to_hub`
below. It builds one clean folder, by default `<output_dir>/hub_upload/`, holding

* a standard CLIP checkpoint: `model.safetensors`, `config.json` (with the finetune class names and
  templates), tokenizer files and `preprocessor_config.json` -- LoRA runs are merged first, so the Hub
  widget, `pipeline("zero-shot-image-classification")` and plain `CLIPModel` all work;
* `finetune_head.safetensors` for the FT / LP-FT baselines;
* `results.json` of the run (evaluation, anchor provenance, arguments, hardware) when there is one;
* `README.md`: the model card (`huggingface_hub.ModelCard.from_template` with the template
  `anchorclip/assets/model_card_template.md`), with structured evaluation results (`model-index`, one
  `EvalResult` per evaluation set), a Markdown table beside the zero-shot start, hyper-parameters, anchor
  provenance, training time and hardware, and usage snippets.

and uploads that folder with `HfApi.upload_folder`. Only the final model is pushed: the Trainer's
mid-training pushes are not made, since `output_dir` also holds anchor caches and checkpoints; a
`hub_strategy` other than "end" warns once that it does nothing here.

Offline only when declared: `HF_HUB_OFFLINE=1` (or `TRANSFORMERS_OFFLINE=1`). Then nothing is uploaded, the
folder is still written, a log line says where with the `hf upload` command that finishes the job, and
`push_to_hub` returns the folder path instead of a `CommitInfo`. Without that flag, a failure to create the
repository (no network, no token, no permission) raises when the trainer is built, before any training, and
a failed upload raises after the folder is written: a run that was asked to push never ends "successfully"
without pushing.

`write_model_card` writes the same card to `output_dir` on every run (LoRA runs: describing the adapters, in
place of peft's template). Local paths never reach a card or the upload folder: a local base model is named
by the Hub id its config records, else by its folder's name (`public_name`).

Modules: `names` (public names of models, datasets and paths), `sections` (the card's tables and short
texts), `card` (metadata, rendering, local validation), `runs` (the card of a trainer's run), `push`
(repository, upload folder, upload).
"""

from .card import (
    ARF_CITATION,
    GROUP_TITLES,
    METHOD_TITLES,
    TASK,
    TEMPLATE_PATH,
    build_model_card,
    card_data,
    eval_results,
    validate_card_locally,
)
from .names import is_hub_id, public_name, public_values
from .push import UPLOAD_DIR, hub_offline, init_hf_repo, prepare_upload_folder, push_to_hub
from .runs import logged_results, trainer_model_card, write_model_card

__all__ = [
    "ARF_CITATION",
    "GROUP_TITLES",
    "METHOD_TITLES",
    "TASK",
    "TEMPLATE_PATH",
    "UPLOAD_DIR",
    "build_model_card",
    "card_data",
    "eval_results",
    "hub_offline",
    "init_hf_repo",
    "is_hub_id",
    "logged_results",
    "prepare_upload_folder",
    "public_name",
    "public_values",
    "push_to_hub",
    "trainer_model_card",
    "validate_card_locally",
    "write_model_card",
]
