"""The pretrained CLIP and its embeddings of a pool: `load_clip`, `embed_pool` (cached, resumable, split over
processes; see `anchorclip.anchors.pool.embed_column`)."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import numpy as np

from anchorclip.anchors.pool.embed_column import embed_column
from anchorclip.anchors.pool.encoders import ImageEncoder, TextEncoder
from anchorclip.anchors.pool.store import (
    EmbeddingStore,
    cache_key,
    dataset_fingerprint,
    default_cache_dir,
    model_fingerprint,
)
from anchorclip.data import CAPTION_COLUMNS, IMAGE_COLUMNS, find_column, load_dataset_any
from anchorclip.distributed import launch_processes

if TYPE_CHECKING:
    import datasets
    from accelerate import Accelerator
    from transformers import CLIPModel, CLIPProcessor

logger = logging.getLogger(__name__)


def load_clip(model_name_or_path, processor=None):
    """A `CLIPModel` in eval mode and its processor, from a name/path (or an already loaded model)."""
    from transformers import AutoProcessor, CLIPModel

    if isinstance(model_name_or_path, (str, os.PathLike)):
        model = CLIPModel.from_pretrained(model_name_or_path)
        processor = processor or AutoProcessor.from_pretrained(model_name_or_path)
    else:
        model = model_name_or_path
        if processor is None:
            processor = AutoProcessor.from_pretrained(model.config._name_or_path)
    return model.eval(), processor


def resolve_dataset(data, split: str | None, streaming: bool) -> tuple[object, str | None]:
    """`(dataset, spec)`: load a spec with `load_dataset_any`, or pass a loaded dataset through."""
    if isinstance(data, (str, os.PathLike)):
        return load_dataset_any(str(data), split=split, streaming=streaming), str(data)
    return data, None


def embed_pool(
    pool: str | datasets.Dataset | datasets.IterableDataset,
    model: CLIPModel,
    processor: CLIPProcessor,
    *,
    kind: str = "image",
    column: str | None = None,
    split: str | None = "train",
    streaming: bool = False,
    pool_id: str | None = None,
    cache_dir: str | None = None,
    shard_size: int = 4096,
    batch_size: int = 256,
    num_workers: int = 0,
    accelerator: Accelerator | None = None,
    description: str | None = None,
) -> EmbeddingStore:
    """Embed the images (`kind="image"`) or captions (`kind="text"`) of a pool into a shard cache.

    `pool` is a dataset spec (Hub id, local folder, `save_to_disk` folder; `"spec:split"` allowed) or a
    loaded `Dataset`/`IterableDataset`. The cache lives under `cache_dir/<kind>-<digest>`, the digest being
    that of the model weights, the pool (`pool_id`, else its spec or fingerprint), the column, the
    preprocessing and the precision: another model never reads these embeddings. Returns a memory-mapped
    `EmbeddingStore` whose row `i` is pool row `i`, also for a stream embedded on several processes (each reads
    only its own files of it; see `anchorclip.anchors.pool.embed_column`). `description` labels the progress bar.
    """
    if kind not in ("image", "text"):
        raise ValueError(f"kind must be 'image' or 'text', got {kind!r}.")
    accelerator = launch_processes(accelerator)
    dataset, spec = resolve_dataset(pool, split, streaming)
    candidates = IMAGE_COLUMNS if kind == "image" else CAPTION_COLUMNS
    column = find_column(dataset, column, candidates, "image" if kind == "image" else "caption")
    pool_id = pool_id or dataset_fingerprint(dataset, spec, split if spec else None)
    model = model.to(accelerator.device).eval()
    encoder: ImageEncoder | TextEncoder
    if kind == "image":
        encoder = ImageEncoder(
            model,
            processor.image_processor if hasattr(processor, "image_processor") else processor,
            accelerator.device,
            num_workers,
            accelerator.autocast,
        )
    else:
        encoder = TextEncoder(
            model, getattr(processor, "tokenizer", processor), accelerator.device, autocast=accelerator.autocast
        )
    key = cache_key(
        kind, model_fingerprint(model), pool_id, column, encoder.preprocessing, str(accelerator.mixed_precision)
    )
    return embed_column(
        dataset,
        column,
        encoder,
        kind=kind,
        key=key,
        cache_dir=cache_dir or default_cache_dir(),
        shard_size=shard_size,
        batch_size=batch_size,
        accelerator=accelerator,
        description=description or f"Embedding {kind}s of {spec or pool_id}",
    )


def evaluation_embeddings(leakage_sets, model, processor, embed_kwargs) -> np.ndarray:
    """The valid image embeddings of all evaluation sets (cached like the pool).

    A spec is loaded as `anchorclip eval` loads it (`load_eval_dataset`): CLIP_benchmark webdataset folders and Hub
    `wds_*` repos, ImageFolders (their only split), `save_to_disk` folders and Hub datasets; its `test` split unless
    the spec names another (`imagenet-1k:validation`). Loaded datasets are used as they are.
    """
    from anchorclip.evaluation.formats import load_eval_dataset

    evaluation = []
    for entry in leakage_sets:
        if isinstance(entry, (str, os.PathLike)):
            dataset, _ = load_eval_dataset(str(entry))
            pool_id = dataset_fingerprint(dataset, str(entry), "test")  # keyed by the spec, as the pool is
            store = embed_pool(dataset, model, processor, kind="image", pool_id=pool_id, **embed_kwargs)
        else:
            store = embed_pool(entry, model, processor, kind="image", **embed_kwargs)
        evaluation.append(store.to_numpy()[store.valid])
        name = str(entry) if isinstance(entry, (str, os.PathLike)) else "a dataset"
        logger.info("Leakage guard: %d images from %s.", int(store.valid.sum()), name)
    return np.concatenate(evaluation)
