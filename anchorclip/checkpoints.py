"""Checkpoints on one machine or several: where they are written and which one a run resumes from.

* `choose_checkpoint_writers`: one writer for a shared output_dir, one per machine for node-local ones;
* `save_weights_on_this_node`: the weights transformers leaves out on the other machines' copies;
* `checkpoint_to_resume`: the newest checkpoint complete on every machine (`anchorclip train --auto_resume`).
"""

from __future__ import annotations

import logging
import os
import re

from .filesystems import probe_folder
from .lora import is_lora_model

__all__ = ["checkpoint_to_resume", "choose_checkpoint_writers", "save_weights_on_this_node"]

logger = logging.getLogger(__name__)


def choose_checkpoint_writers(training_args) -> None:
    """Checkpoints where every machine can resume from them: one writer for a shared output_dir, one per machine
    for node-local ones (`save_on_each_node`, set from what the folder is, not from a flag; anchorclip.filesystems).
    The final results, model card and Hub push are the global main process's: machine 0's output_dir."""
    layout = probe_folder(training_args.output_dir)
    if layout.shared == (not training_args.save_on_each_node):
        return
    if not layout.shared:
        logger.warning(
            "output_dir %s is not shared by the machines (%d copies): each machine's first process saves the "
            "checkpoints to its own copy (save_on_each_node), so that any machine can resume.",
            training_args.output_dir,
            len(layout.groups),
        )
    else:
        logger.warning("output_dir is shared by every process: one process saves (save_on_each_node ignored).")
    training_args.save_on_each_node = not layout.shared


def checkpoint_to_resume(training_args, auto_resume: bool) -> str | None:
    if training_args.resume_from_checkpoint is not None:
        return training_args.resume_from_checkpoint
    if not auto_resume:
        return None
    mine = _last_complete_checkpoint(training_args.output_dir) if os.path.isdir(training_args.output_dir) else None
    last = _agreed_checkpoint(mine, training_args.output_dir)
    if last is not None:
        logger.warning("Resuming from %s (pass --auto_resume false to start over).", last)
    return last


def _agreed_checkpoint(mine: str | None, output_dir: str) -> str | None:
    """The checkpoint every process resumes from: the newest one complete in every machine's output_dir (a node
    killed mid-save holds an older one than the others). Resuming from different steps would train a model no
    single run describes, and starting over beside a checkpoint could rotate it away: a machine without one is an
    error that says which machines hold what."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return mine
    steps: list[int | None] = [None] * dist.get_world_size()
    dist.all_gather_object(steps, None if mine is None else int(mine.rsplit("-", 1)[1]))
    if all(step is None for step in steps):
        return None
    if any(step is None for step in steps):
        raise RuntimeError(
            f"Some processes find no complete checkpoint in their output_dir (newest step per process: {steps}). "
            "Copy the newest checkpoint folder to every machine's output_dir to resume, or pass "
            "--auto_resume false (or another --output_dir) to start over."
        )
    step = min(s for s in steps if s is not None)
    if step != max(s for s in steps if s is not None):
        logger.warning("Processes hold different newest checkpoints (%s); all resume from step %d.", steps, step)
    folder = os.path.join(output_dir, f"checkpoint-{step}")
    if not os.path.isfile(os.path.join(folder, "trainer_state.json")):
        raise RuntimeError(
            f"The processes' newest complete checkpoints are at steps {steps}, and {folder} (the newest they "
            "share) is not complete on this machine. Copy one checkpoint folder to every machine's output_dir."
        )
    return folder


def _last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest `checkpoint-N` that Trainer finished writing: `trainer_state.json` is its last file, so a folder
    without it was cut off mid-save (a kill, a lost node) and is passed over."""
    steps = sorted(
        (int(name.split("-")[1]) for name in os.listdir(output_dir) if re.fullmatch(r"checkpoint-\d+", name)),
        reverse=True,
    )
    for step in steps:
        folder = os.path.join(output_dir, f"checkpoint-{step}")
        if os.path.isfile(os.path.join(folder, "trainer_state.json")):
            return folder
        logger.warning("Passing over %s: it has no trainer_state.json (its save was cut off).", folder)
    return None


def save_weights_on_this_node(model, output_dir: str, state_dict) -> None:
    """Write the model's weights into a checkpoint folder on a process that is not global rank 0.

    With `save_on_each_node` (node-local output_dir) transformers' `save_pretrained` still writes weights on
    global rank 0 only, which would leave every other machine's checkpoints without them and unable to resume."""
    import safetensors.torch

    if any(name.endswith((".safetensors", ".safetensors.index.json")) for name in os.listdir(output_dir)):
        return  # a transformers that writes them on every node did
    if is_lora_model(model):
        model.save_pretrained(output_dir, state_dict=state_dict)  # peft writes adapters on any rank
        return
    model.config.save_pretrained(output_dir)
    tensors = state_dict if state_dict is not None else model.state_dict()
    tensors = {name: tensor.detach().contiguous() for name, tensor in tensors.items()}
    safetensors.torch.save_file(tensors, os.path.join(output_dir, "model.safetensors"), metadata={"format": "pt"})
