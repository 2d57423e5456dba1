"""Which pool items become anchors: the queries (class prompts or finetune images), the search results as
candidates, the leakage guard, one class per item, near-duplicate removal, the per-class / global quotas, and
optionally a diverse (maximal-marginal-relevance) choice within each class."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from anchorclip.anchors.pool.encoders import TextEncoder
from anchorclip.anchors.pool.faiss_index import faiss_module
from anchorclip.anchors.pool.store import EmbeddingStore

logger = logging.getLogger(__name__)


def text_queries(
    class_names: Sequence[str], encoder: TextEncoder, templates: list[str], query_mode: str
) -> tuple[np.ndarray, np.ndarray]:
    """`(queries, query_class)`: the normalised template-ensemble mean per class, or one query per template."""
    prompts = [template.format(name) for name in class_names for template in templates]
    embeddings = encoder.encode(prompts).reshape(len(class_names), len(templates), -1)
    if query_mode == "each":
        return embeddings.reshape(len(prompts), -1), np.repeat(np.arange(len(class_names)), len(templates))
    return normalize(embeddings.mean(axis=1)), np.arange(len(class_names))


def image_queries(
    store: EmbeddingStore, labels: np.ndarray, num_classes: int, query_mode: str, max_per_class: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """`(queries, query_class)` from finetune-image embeddings: the class prototype, or up to
    `max_per_class` images of each class (a seeded sample) as separate queries."""
    rng = np.random.default_rng(seed)
    queries, owners = [], []
    for label in range(num_classes):
        rows = np.nonzero((labels == label) & store.valid)[0]
        if len(rows) == 0:
            logger.warning("Class %d has no decodable finetune image: it gets no image2image query.", label)
            continue
        if query_mode == "each":
            rows = np.sort(rng.choice(rows, size=min(max_per_class, len(rows)), replace=False))
            queries.append(store.gather(rows))
            owners.append(np.full(len(rows), label))
        else:
            queries.append(normalize(store.gather(rows).mean(axis=0, keepdims=True)))
            owners.append(np.array([label]))
    return np.concatenate(queries), np.concatenate(owners)


def normalize(array: np.ndarray) -> np.ndarray:
    return (array / np.maximum(np.linalg.norm(array, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


@dataclass
class Candidates:
    """Parallel arrays, one entry per (class, pool row) pair still in the running."""

    label: np.ndarray
    row: np.ndarray
    score: np.ndarray

    def __len__(self) -> int:
        return len(self.row)

    def take(self, mask_or_index) -> Candidates:
        return Candidates(self.label[mask_or_index], self.row[mask_or_index], self.score[mask_or_index])


def collect_candidates(scores: np.ndarray, ids: np.ndarray, query_class: np.ndarray, valid: np.ndarray) -> Candidates:
    """Flatten search results to (class, row, score), keeping each class's best score for a row it reached
    through several queries (the union of a style-diverse query set)."""
    label = np.repeat(query_class, ids.shape[1])
    row, score = ids.reshape(-1), scores.reshape(-1)
    keep = row >= 0
    keep[keep] = valid[row[keep]]  # undecodable pool items are zero vectors: never an anchor
    found = Candidates(label[keep], row[keep].astype(np.int64), score[keep].astype(np.float32))
    order = np.lexsort((-found.score, found.row, found.label))
    found = found.take(order)
    first = np.ones(len(found), dtype=bool)
    first[1:] = (found.label[1:] != found.label[:-1]) | (found.row[1:] != found.row[:-1])
    return found.take(first)


def best_class_only(candidates: Candidates) -> Candidates:
    """Give each pool row to the class it scores highest for (ties: the lower class index)."""
    order = np.lexsort((candidates.label, -candidates.score, candidates.row))
    ordered = candidates.take(order)
    first = np.ones(len(ordered), dtype=bool)
    first[1:] = ordered.row[1:] != ordered.row[:-1]
    return ordered.take(first)


def _near_duplicate_groups(embeddings: np.ndarray, threshold: float, exact_max: int = 50_000):
    """FAISS range search: `(lims, ids)` such that `ids[lims[i]:lims[i+1]]` are the rows with cosine >= threshold
    to row i (itself included). Exact up to `exact_max` rows; an IVF-Flat range search beyond (approximate)."""
    faiss = faiss_module()
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    if len(embeddings) <= exact_max:
        index = faiss.IndexFlatIP(embeddings.shape[1])
    else:
        nlist = 2 ** round(math.log2(4 * math.sqrt(len(embeddings))))
        index = faiss.index_factory(embeddings.shape[1], f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
        index.train(
            embeddings[
                np.random.default_rng(0).choice(len(embeddings), min(len(embeddings), 64 * nlist), replace=False)
            ]
        )
        faiss.ParameterSpace().set_index_parameters(index, "nprobe=16")
    index.add(embeddings)
    # The float16 cache rounds cosines by ~1e-3; a small slack keeps exact copies (cosine 1.0) above threshold.
    lims, _, ids = index.range_search(embeddings, float(threshold) - 1e-3)
    return lims, ids


def deduplicate(candidates: Candidates, embeddings: np.ndarray, threshold: float) -> Candidates:
    """Greedy near-duplicate removal: in order of score, keep an item unless a kept one is a near-duplicate.

    `embeddings[i]` is the image embedding of `candidates.row[i]` (rows are unique here)."""
    lims, ids = _near_duplicate_groups(embeddings, threshold)
    suppressed = np.zeros(len(candidates), dtype=bool)
    keep = np.zeros(len(candidates), dtype=bool)
    for i in np.argsort(-candidates.score, kind="stable"):
        if suppressed[i]:
            continue
        keep[i] = True
        suppressed[ids[lims[i] : lims[i + 1]]] = True
    return candidates.take(keep)


def select_anchors(
    candidates: Candidates,
    num_classes: int,
    k_per_class: int,
    budget: int | None,
    embeddings: np.ndarray | None = None,
    diversity: float = 0.0,
) -> Candidates:
    """Top `k_per_class` per class by score (or, with `diversity` > 0, in maximal-marginal-relevance order over
    `embeddings`, aligned with `candidates`); then, over budget, round-robin by rank so classes stay balanced."""
    order = np.lexsort((-candidates.score, candidates.label))
    if diversity > 0:
        if embeddings is None:
            raise ValueError("diversity > 0 needs the candidates' image embeddings.")
        order = _mmr_order(candidates, embeddings, order, k_per_class, diversity)
    ordered = candidates.take(order)
    starts = np.searchsorted(ordered.label, np.arange(num_classes))
    rank = np.arange(len(ordered)) - starts[ordered.label]
    ordered, rank = ordered.take(rank < k_per_class), rank[rank < k_per_class]
    if budget is not None and len(ordered) > budget:
        keep = np.lexsort((-ordered.score, rank))[:budget]
        ordered = ordered.take(np.sort(keep))
    return ordered


def _mmr_order(
    candidates: Candidates, embeddings: np.ndarray, order: np.ndarray, k_per_class: int, diversity: float
) -> np.ndarray:
    """`order` (candidates grouped by class, best score first) with each class's first `k_per_class` re-picked
    by maximal marginal relevance (Carbonell & Goldstein, 1998): greedily the candidate maximising
    `(1 - diversity) * relevance - diversity * (its highest cosine to an image already picked for the class)`.

    Relevance is the query score min-max scaled to [0, 1] within the class, so that `diversity` means the same
    for any model's score range. Only the pool's own image embeddings are compared: the anchors spread over
    whatever renditions, backgrounds and viewpoints the pool holds, with no knowledge of the test domains
    (unlike querying with domain words, `query_mode="each"` over style templates)."""
    if not 0.0 <= diversity <= 1.0:
        raise ValueError(f"diversity must be in [0, 1], got {diversity}.")
    labels = candidates.label[order]
    bounds = np.flatnonzero(np.diff(labels)) + 1
    picked_order = []
    for block in np.split(order, bounds):
        vectors = normalize(np.asarray(embeddings[block], dtype=np.float32))
        score = candidates.score[block].astype(np.float64)
        spread = score.max() - score.min()
        relevance = (score - score.min()) / spread if spread > 0 else np.ones_like(score)
        redundancy = np.full(len(block), -1.0)  # lowest cosine: no penalty before the first pick
        available = np.ones(len(block), dtype=bool)
        picks = []
        for _ in range(min(k_per_class, len(block))):
            gain = (1 - diversity) * relevance - diversity * redundancy
            gain[~available] = -np.inf
            pick = int(np.argmax(gain))  # ties: the earlier, i.e. higher-scored, candidate
            picks.append(pick)
            available[pick] = False
            np.maximum(redundancy, vectors @ vectors[pick], out=redundancy)
        rest = np.flatnonzero(available)  # beyond k: never selected, kept in score order
        picked_order.append(block[np.concatenate([np.asarray(picks, dtype=np.int64), rest])])
    return np.concatenate(picked_order) if picked_order else order


def leaked_rows(
    candidates: Candidates, image_store: EmbeddingStore, evaluation: np.ndarray, threshold: float
) -> np.ndarray:
    """Pool rows among the candidates whose image has cosine >= threshold to an evaluation image."""
    faiss = faiss_module()
    rows = np.unique(candidates.row)
    if len(evaluation) == 0 or len(rows) == 0:
        return np.zeros(0, dtype=np.int64)
    index = faiss.IndexFlatIP(evaluation.shape[1])
    index.add(np.ascontiguousarray(evaluation))
    scores, _ = index.search(np.ascontiguousarray(image_store.gather(rows)), 1)
    leaked = rows[scores[:, 0] >= threshold - 1e-3]  # same float16 slack as de-duplication
    logger.info(
        "Leakage guard: %d of %d candidate pool items are near-duplicates (cosine >= %.3f) of "
        "evaluation images; removed.",
        len(leaked),
        len(rows),
        threshold,
    )
    return leaked
