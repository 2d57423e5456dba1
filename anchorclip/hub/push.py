"""The Hub side of a run: create the repository when the trainer is built, write the upload folder, upload it.

`prepare_upload_folder` builds one clean folder, by default `<output_dir>/hub_upload/`: a standard CLIP
checkpoint (LoRA runs merged first), the processor, `finetune_head.safetensors` for FT / LP-FT,
`results.json` (local paths by name only) and the `README.md` card. `push_to_hub` uploads it with
`HfApi.upload_folder` -- or, offline (`hub_offline()`), logs where it is and the `hf upload` command.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from concurrent.futures import Future
from typing import TYPE_CHECKING

from huggingface_hub import CommitInfo, HfApi
from transformers.trainer_utils import HubStrategy

from .names import public_values
from .runs import CARD_KWARGS, run_output_dir, trainer_model_card, trainer_results

if TYPE_CHECKING:
    from .trainer_hooks import HubTrainerMixin

logger = logging.getLogger(__package__)  # "anchorclip.hub", as before the split

#: The folder under `output_dir` where `push_to_hub` writes what it uploads.
UPLOAD_DIR = "hub_upload"


def hub_offline() -> bool:
    """True when offline mode is set (`HF_HUB_OFFLINE` / `TRANSFORMERS_OFFLINE`), read at call time."""
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return constants.HF_HUB_OFFLINE or any(str(v).upper() in ("1", "ON", "YES", "TRUE") for v in flags if v)


def init_hf_repo(trainer: HubTrainerMixin, token: str | None = None, private: bool | None = None) -> None:
    """`Trainer.init_hf_repo` (called when the trainer is built): create the repository, or raise at once.

    Only a declared offline mode (`hub_offline()`) skips it; any other failure raises here, before training,
    rather than after hours of training. Warns when `hub_strategy` asks for pushes that are not made.
    """
    if not trainer.is_world_process_zero():
        return
    args = trainer.args
    if args.push_to_hub and args.hub_strategy != HubStrategy.END:
        logger.warning(
            "--hub_strategy %s does nothing in anchorclip: the model is pushed once, at the end of the run (as "
            "with --hub_strategy end), as one clean folder; checkpoints stay local.",
            args.hub_strategy.value if isinstance(args.hub_strategy, HubStrategy) else args.hub_strategy,
        )
    repo_name = args.hub_model_id or os.path.basename(os.path.abspath(run_output_dir(trainer)))
    trainer.hub_model_id, trainer.push_in_progress = repo_name, None
    if hub_offline():
        trainer._hub_offline = "HF_HUB_OFFLINE is set"
        return
    try:
        repo_url = HfApi().create_repo(
            repo_name,
            token=token if token is not None else args.hub_token,
            private=private if private is not None else args.hub_private_repo,
            exist_ok=True,
        )
    except Exception as error:
        raise RuntimeError(
            f"--push_to_hub: cannot create the Hub repository {repo_name!r} ({type(error).__name__}: {error}). "
            "Check the network and your token (`hf auth login`), or set HF_HUB_OFFLINE=1 to train and only "
            "write the upload folder."
        ) from error
    trainer.hub_model_id = repo_url.repo_id
    trainer._hub_offline = None


def prepare_upload_folder(
    trainer: HubTrainerMixin, folder: str | None = None, results: dict | None = None, **card_kwargs
) -> str:
    """Write the folder `push_to_hub` uploads: plain CLIP checkpoint, processor, results.json, README.md card.

    Call on every process (saving may be collective); only the main process writes.
    """
    from ..lora import is_lora_model, merge_lora

    folder = folder or os.path.join(run_output_dir(trainer), UPLOAD_DIR)
    model = trainer.accelerator.unwrap_model(trainer.model)
    main = trainer.is_world_process_zero()
    if main and os.path.isdir(folder):
        shutil.rmtree(folder)  # exactly what would be uploaded, nothing left over from an earlier push
    trainer.accelerator.wait_for_everyone()
    if is_lora_model(model):
        if main:
            merged = merge_lora(model)
            merged.save_pretrained(folder)
            if trainer.processing_class is not None:
                trainer.processing_class.save_pretrained(folder)
    else:
        trainer.save_model(folder, _internal_call=True)  # collective under FSDP / DeepSpeed; writes on main only
    if not main:
        return folder
    training_args_file = os.path.join(folder, "training_args.bin")
    if os.path.isfile(training_args_file):
        os.remove(training_args_file)  # a pickle; the card and results.json carry the arguments
    results = trainer_results(trainer, results)
    if results.get("finetuned") or results.get("provenance"):
        with open(os.path.join(folder, "results.json"), "w") as handle:
            json.dump(public_values(results), handle, indent=2, default=str)  # public: no local paths
    trainer_model_card(trainer, results, **card_kwargs).save(os.path.join(folder, "README.md"))
    return folder


def push_to_hub(
    trainer: HubTrainerMixin,
    commit_message: str | None = "End of training",
    blocking: bool = True,
    token: str | None = None,
    revision: str | None = None,
    private: bool | None = None,
    results: dict | None = None,
    folder: str | None = None,
    **card_kwargs,
) -> CommitInfo | Future[CommitInfo] | str | None:
    """`AnchorCLIPTrainer.push_to_hub`: write the upload folder, then upload it (see `anchorclip.hub`).

    Returns the `CommitInfo` (or a future with `blocking=False`) or, when offline, the folder path.
    """
    trainer.callback_handler.on_push_begin(trainer.args, trainer.state, trainer.control)
    token = token if token is not None else trainer.args.hub_token
    card_kwargs = {k: v for k, v in card_kwargs.items() if k in CARD_KWARGS}
    if trainer.hub_model_id is None:
        init_hf_repo(trainer, token=token, private=private)
    folder = prepare_upload_folder(trainer, folder, results, repo_id=trainer.hub_model_id, **card_kwargs)
    if not trainer.is_world_process_zero():
        return None
    reason = getattr(trainer, "_hub_offline", None) or ("HF_HUB_OFFLINE is set" if hub_offline() else None)
    upload_command = f"hf upload {trainer.hub_model_id} {folder} ."
    if reason is not None:
        logger.warning(
            "Hub offline (%s): nothing was uploaded. The folder that would be uploaded to %s is %s -- "
            "upload it later with: %s",
            reason,
            trainer.hub_model_id,
            folder,
            upload_command,
        )
        return folder
    try:
        return HfApi().upload_folder(
            repo_id=trainer.hub_model_id,
            folder_path=folder,
            commit_message=commit_message,
            token=token,
            revision=revision if revision is not None else trainer.args.hub_revision,
            run_as_future=not blocking,  # type: ignore[call-overload]  # its overloads take Literal[True/False] only
        )
    except Exception as error:
        raise RuntimeError(
            f"Upload to the Hub repository {trainer.hub_model_id!r} failed ({type(error).__name__}: {error}). "
            f"The folder is written: {folder} -- retry with: {upload_command}"
        ) from error
