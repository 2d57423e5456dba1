"""A minimal zero-shot classifier for the miniworld models: prompt-ensemble heads, top-1 accuracy.

Used by the training scripts to record the shipped models' numbers; the library's full evaluator lives
elsewhere. Images go through the processor's own normalisation so the numbers match the HF API.
"""

from __future__ import annotations

import numpy as np
import torch


def images_to_tensor(images, mean, std) -> torch.Tensor:
    """A list of 32x32 RGB PIL images -> a normalised (N, 3, 32, 32) float tensor."""
    array = np.stack([np.asarray(image.convert("RGB"), dtype=np.uint8) for image in images])
    tensor = torch.from_numpy(array).permute(0, 3, 1, 2).float() / 255.0
    return (tensor - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@torch.no_grad()
def zero_shot_head(model, tokenizer, class_names, templates) -> torch.Tensor:
    """(num_classes, dim) unit-norm class embeddings: the mean of each class's normalised prompt embeddings."""
    rows = []
    for name in class_names:
        tokens = tokenizer([template.format(name) for template in templates], padding=True, return_tensors="pt")
        embeddings = model.get_text_features(**tokens)
        embeddings = getattr(embeddings, "pooler_output", embeddings)
        embeddings = torch.nn.functional.normalize(embeddings, dim=-1).mean(dim=0)
        rows.append(torch.nn.functional.normalize(embeddings, dim=-1))
    return torch.stack(rows)


@torch.no_grad()
def zero_shot_accuracy(model, tokenizer, eval_set, mean, std, batch_size: int = 500) -> float:
    """Top-1 accuracy (%) of `model` on an `EvalSet` with its own class names and templates."""
    model.eval()
    head = zero_shot_head(model, tokenizer, eval_set.class_names, eval_set.templates)
    dataset = eval_set.dataset
    correct = 0
    for start in range(0, len(dataset), batch_size):
        batch = dataset[start : start + batch_size]
        features = model.get_image_features(pixel_values=images_to_tensor(batch[eval_set.image_column], mean, std))
        features = getattr(features, "pooler_output", features)
        predictions = (torch.nn.functional.normalize(features, dim=-1) @ head.T).argmax(dim=-1)
        correct += (predictions == torch.tensor(batch[eval_set.label_column])).sum().item()
    return 100.0 * correct / len(dataset)
