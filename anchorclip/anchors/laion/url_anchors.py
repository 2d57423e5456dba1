"""Anchors from a precomputed pool: pool URLs and captions, no image bytes (the pool has none).

`anchorclip retrieve --pool_embeddings` writes, at `--output_dir`, a `save_to_disk` dataset with columns `url`,
`caption`, `class_name`, `class_index` (`ClassLabel`), `score` and `pool_index`, ordered by class, best first;
the same rows as `urls.parquet` (the input img2dataset reads to download the images); and `report.html`, whose
thumbnails are the URLs themselves (the browser fetches them; dead links show as broken images).
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence

import datasets
import numpy as np

from anchorclip.anchors.laion.precomputed import CAPTION_COLUMNS, URL_COLUMNS, PrecomputedPool
from anchorclip.anchors.pool.anchor_report import render_report

URLS_FILE = "urls.parquet"


def write_url_anchors(pool: PrecomputedPool, selected, class_names: Sequence[str], output_dir: str):
    """The anchors dataset of `selected` (a `retrieval.Candidates`), saved at `output_dir` with `urls.parquet`."""
    order = np.lexsort((-selected.score, selected.label))
    rows, labels, scores = selected.row[order], selected.label[order], selected.score[order]
    url_column, caption_column = pool.column(URL_COLUMNS), pool.column(CAPTION_COLUMNS)
    metadata = pool.metadata(rows, [url_column, caption_column])
    features = datasets.Features(
        {
            "url": datasets.Value("string"),
            "caption": datasets.Value("string"),
            "class_name": datasets.Value("string"),
            "class_index": datasets.ClassLabel(names=list(class_names)),
            "score": datasets.Value("float32"),
            "pool_index": datasets.Value("int64"),
        }
    )
    anchors = datasets.Dataset.from_dict(
        {
            "url": metadata[url_column],
            "caption": metadata[caption_column],
            "class_name": [class_names[label] for label in labels],
            "class_index": labels.tolist(),
            "score": scores.tolist(),
            "pool_index": rows.tolist(),
        },
        features=features,
    )
    os.makedirs(output_dir, exist_ok=True)
    anchors.save_to_disk(output_dir)
    anchors.to_parquet(os.path.join(output_dir, URLS_FILE))
    return datasets.load_from_disk(output_dir)


def write_url_report(
    anchors: datasets.Dataset,
    class_names: Sequence[str],
    path: str,
    *,
    per_class: int = 12,
    title: str = "Retrieved anchors",
    provenance: dict | None = None,
) -> None:
    """`report.html` for URL anchors: per class, its top `per_class` anchors as linked images with captions."""
    labels = np.asarray(anchors["class_index"], dtype=np.int64) if len(anchors) else np.zeros(0, np.int64)

    def card(row: int) -> str:
        item = anchors[row]
        url = html.escape(str(item["url"]), quote=True)
        return (
            f"<div class='card'><a href='{url}'><img loading='lazy' referrerpolicy='no-referrer' "
            f"src='{url}'></a><b>{item['score']:.3f}</b> {html.escape(str(item['caption']))}</div>"
        )

    note = "Images load from their pool URLs; some may be gone."
    render_report(path, class_names, labels, card, per_class=per_class, title=title, note=note, provenance=provenance)
