"""Caption anchors (`anchorclip caption`): the captioner, its loop over chunks, the job's settings and the job.

See `anchorclip.anchors` for the map of the pipelines. Each public name is loaded on first use.
"""

from __future__ import annotations

from typing import Any

from anchorclip._lazy import load_public, public_dir

_PUBLIC = {
    "CaptionArguments": "anchorclip.anchors.captions.args",
    "Captioner": "anchorclip.anchors.captions.captioner",
    "caption_dataset": "anchorclip.anchors.captions.job",
    "run_captioning": "anchorclip.anchors.captions.job",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    return load_public(__name__, _PUBLIC, name)


def __dir__() -> list[str]:
    return public_dir(__name__, _PUBLIC)
