"""CLIP encoders for the embedding cache: a batch of cells (images, captions) -> L2-normalised float16 rows and which
rows were valid (an undecodable image or an empty caption is not)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from anchorclip.data import decode_image
from anchorclip.transforms import ImageTransform


def projected_features(output) -> torch.Tensor:
    # transformers >= 5 returns a model output whose `pooler_output` holds the projected features;
    # older versions returned the tensor itself.
    return output.pooler_output if hasattr(output, "pooler_output") else output


class ImageEncoder:
    """Decode, preprocess (the CLIP processor's resize/crop/normalise) and embed a batch of image cells."""

    def __init__(self, model, image_processor, device: torch.device, num_workers: int = 0, autocast=None):
        self.model, self.device, self.autocast = model, device, autocast
        self.transform = ImageTransform.from_image_processor(image_processor)
        # PIL releases the GIL while decoding and resampling, so threads give real parallelism here.
        self.pool = ThreadPoolExecutor(num_workers) if num_workers > 0 else None

    @property
    def preprocessing(self) -> str:
        return repr(self.transform)

    def _load(self, cell) -> torch.Tensor | None:
        image = decode_image(cell)
        return None if image is None else self.transform(image)

    def __call__(self, cells: list) -> tuple[np.ndarray, np.ndarray]:
        tensors = list(self.pool.map(self._load, cells)) if self.pool else [self._load(cell) for cell in cells]
        valid = np.array([tensor is not None for tensor in tensors], dtype=bool)
        out = np.zeros((len(cells), self.model.config.projection_dim), dtype=np.float16)
        if valid.any():
            pixel_values = torch.stack([tensor for tensor in tensors if tensor is not None]).to(self.device)
            with torch.inference_mode(), self.autocast():
                features = projected_features(self.model.get_image_features(pixel_values=pixel_values)).float()
            out[valid] = torch.nn.functional.normalize(features, dim=-1).cpu().numpy()
        return out, valid


class TextEncoder:
    """Tokenise and embed a batch of strings (captions or prompts)."""

    def __init__(self, model, tokenizer, device: torch.device, max_length: int | None = None, autocast=None):
        self.model, self.tokenizer, self.device, self.autocast = model, tokenizer, device, autocast
        limit = model.config.text_config.max_position_embeddings
        self.max_length = min(max_length or limit, limit)

    @property
    def preprocessing(self) -> str:
        return f"{type(self.tokenizer).__name__}(vocab={len(self.tokenizer)}, max_length={self.max_length})"

    def __call__(self, cells: list) -> tuple[np.ndarray, np.ndarray]:
        valid = np.array([isinstance(cell, str) and bool(cell.strip()) for cell in cells], dtype=bool)
        out = np.zeros((len(cells), self.model.config.projection_dim), dtype=np.float16)
        if valid.any():
            out[valid] = self.encode([cell for cell, ok in zip(cells, valid) if ok]).astype(np.float16)
        return out, valid

    def encode(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        """Float32 normalised embeddings of `texts` (no cache: prompts are few)."""
        blocks = []
        for start in range(0, len(texts), batch_size):
            inputs = self.tokenizer(
                texts[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            inputs.pop("token_type_ids", None)
            with torch.inference_mode(), self.autocast():
                features = projected_features(self.model.get_text_features(**inputs)).float()
            blocks.append(torch.nn.functional.normalize(features, dim=-1).cpu().numpy())
        return np.concatenate(blocks) if blocks else np.zeros((0, self.model.config.projection_dim), np.float32)
