"""`HubTrainerMixin`: the `Trainer` hub hooks of `AnchorCLIPTrainer`, delegated to this package.

Offline (`hub_offline()`), a push writes `<output_dir>/hub_upload/` and logs where, and returns that folder.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from huggingface_hub import CommitInfo
from transformers import Trainer

if TYPE_CHECKING:
    from ..training_args import AnchorTrainingArguments


class HubTrainerMixin(Trainer):
    """Model card and push of a `Trainer` through `anchorclip.hub` (one clean upload folder, pushed at the end)."""

    args: AnchorTrainingArguments
    hub_model_id: str | None  # type: ignore[assignment]  # Trainer declares it `= None`, then assigns a str
    _hub_offline: str | None  # why nothing is uploaded (set by init_hf_repo), or None

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        """Create the Hub repository when the trainer is built, or raise at once (see `push.init_hf_repo`)."""
        from .push import init_hf_repo

        init_hf_repo(self, token=token, private=private)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """No mid-training pushes: output_dir also holds anchor caches; push_to_hub() uploads a clean folder."""

    # Both pass Trainer's keywords through: their signatures differ from Trainer's (keywords only; offline,
    # push_to_hub returns the folder it wrote rather than a CommitInfo).
    def create_model_card(self, **kwargs: Any) -> None:  # type: ignore[override]
        """Write the anchorclip model card (`README.md`); `results=` gives its evaluation table."""
        from .runs import write_model_card

        if self.is_world_process_zero():
            write_model_card(self, **kwargs)

    def push_to_hub(  # type: ignore[override]
        self, commit_message: str | None = "End of training", blocking: bool = True, **kwargs: Any
    ) -> CommitInfo | Future[CommitInfo] | str | None:
        """Upload a plain CLIP checkpoint + model card (see `anchorclip.hub`); pass `results=` for the card's
        evaluation table (default: `<output_dir>/results.json`). Offline, returns the folder it wrote."""
        from .push import push_to_hub

        return push_to_hub(self, commit_message=commit_message, blocking=blocking, **kwargs)
