"""What `anchorclip retrieve` writes for a pool of images: the anchors dataset (original image bytes, caption,
class, score, pool row) and `report.html`, thumbnails per class for a person to check. The URL anchors of a
precomputed pool are `anchorclip.anchors.laion.url_anchors`."""

from __future__ import annotations

import base64
import html
import io
import json
import os
import tempfile
import uuid
from collections.abc import Callable, Sequence

import datasets
import numpy as np

from anchorclip.anchors.pool.selection import Candidates
from anchorclip.data import decode_image, with_raw_images


def _image_cell(value) -> dict | None:
    """An `Image()` cell holding the original encoded bytes (no re-encoding), or PNG for in-memory images."""
    from PIL import Image

    if isinstance(value, dict):
        if value.get("bytes"):
            return {"bytes": value["bytes"], "path": None}
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": bytes(value), "path": None}
    if isinstance(value, str) and os.path.exists(value):
        with open(value, "rb") as file:
            return {"bytes": file.read(), "path": None}
    if isinstance(value, Image.Image):
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return {"bytes": buffer.getvalue(), "path": None}
    return None


def _anchor_rows(pool, image_column, caption_column, rows, labels, scores, class_names):
    """Rows of the anchors dataset, in pool order (one pass, so a streamed pool is read once more only)."""
    wanted = {int(row): (int(label), float(score)) for row, label, score in zip(rows, labels, scores)}
    ordered = sorted(wanted)
    if isinstance(pool, datasets.Dataset):
        source = zip(ordered, pool.select(ordered))
    else:
        source = ((i, item) for i, item in enumerate(pool) if i in wanted)
    for row, item in source:
        label, score = wanted[row]
        yield {
            "image": _image_cell(item[image_column]),
            "caption": item[caption_column],
            "class_name": class_names[label],
            "class_index": label,
            "score": score,
            "pool_index": row,
        }


def write_anchors(pool, image_column, caption_column, selected: Candidates, class_names, output_dir):
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "caption": datasets.Value("string"),
            "class_name": datasets.Value("string"),
            "class_index": datasets.ClassLabel(names=list(class_names)),
            "score": datasets.Value("float32"),
            "pool_index": datasets.Value("int64"),
        }
    )
    pool = with_raw_images(pool.select_columns([image_column, caption_column]), image_column)
    os.makedirs(output_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        if len(selected):
            anchors = datasets.Dataset.from_generator(
                _anchor_rows,
                features=features,
                cache_dir=scratch,
                fingerprint=uuid.uuid4().hex,
                gen_kwargs={
                    "pool": pool,
                    "image_column": image_column,
                    "caption_column": caption_column,
                    "rows": selected.row,
                    "labels": selected.label,
                    "scores": selected.score,
                    "class_names": tuple(class_names),
                },  # a list would be split into shards
            )
            # Rows come in pool order; reorder by class, best first (what a person reads in the report and what
            # a trainer may truncate). `np.lexsort` rather than `Dataset.sort`: no pyarrow sort of the table.
            # Row j of `anchors` is the j-th selected item in pool order, so the sort keys are taken in that order.
            in_pool_order = np.argsort(selected.row, kind="stable")
            anchors = anchors.select(np.lexsort((-selected.score[in_pool_order], selected.label[in_pool_order])))
        else:
            anchors = datasets.Dataset.from_dict({name: [] for name in features}, features=features)
        anchors.save_to_disk(output_dir)
    return datasets.load_from_disk(output_dir)


def _thumbnail(cell, size: int = 112) -> str | None:
    image = decode_image(cell)
    if image is None:
        return None
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


_PROVENANCE_KEYS = (
    "model", "rule", "query_mode", "k_per_class", "budget", "dedup_threshold", "diversity", "leakage_threshold",
    "index_factory", "index_recall", "counts",
)  # fmt: skip


def render_report(
    path: str,
    class_names: Sequence[str],
    labels: np.ndarray,
    card: Callable[[int], str],
    *,
    per_class: int = 12,
    title: str = "Retrieved anchors",
    note: str | None = None,
    provenance: dict | None = None,
) -> None:
    """A self-contained HTML page: the retrieval settings, then per class the `card(row)` of its first
    `per_class` anchors. Anchors with images (`write_report`) and with URLs (`url_anchors`) share it."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        (
            f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;margin:1em}}"
            ".row{display:flex;flex-wrap:wrap;gap:8px}.card{width:140px;font-size:11px}"
            ".card img{width:112px;height:112px;object-fit:contain;background:#eee;display:block}"
            "h2{font-size:15px;margin:1.2em 0 .3em}</style></head><body>"
        ),
        f"<h1>{html.escape(title)}</h1>",
    ]
    if note:
        parts.append(f"<p>{html.escape(note)}</p>")
    if provenance:
        summary = {key: provenance.get(key) for key in _PROVENANCE_KEYS if key in provenance}
        parts.append(f"<pre>{html.escape(json.dumps(summary, indent=1))}</pre>")
    for label, name in enumerate(class_names):
        rows = np.nonzero(labels == label)[0]
        parts.append(f"<h2>{html.escape(name)} — {len(rows)} anchors</h2><div class='row'>")
        parts += [card(int(row)) for row in rows[:per_class]]
        parts.append("</div>")
    parts.append("</body></html>")
    with open(path, "w", encoding="utf-8") as file:
        file.write("\n".join(parts))


def write_report(
    anchors: datasets.Dataset,
    class_names: Sequence[str],
    path: str,
    *,
    per_class: int = 12,
    title: str = "Retrieved anchors",
    provenance: dict | None = None,
) -> None:
    """A self-contained HTML page: per class, its top `per_class` anchors (inline PNG thumbnails, caption, score)."""
    raw = with_raw_images(anchors, "image")
    labels = np.asarray(raw["class_index"], dtype=np.int64) if len(raw) else np.zeros(0, np.int64)

    def card(row: int) -> str:
        item = raw[row]
        thumbnail = _thumbnail(item["image"])
        image = f"<img src='data:image/png;base64,{thumbnail}'>" if thumbnail else "<div>(undecodable)</div>"
        return f"<div class='card'>{image}<b>{item['score']:.3f}</b> {html.escape(str(item['caption']))}</div>"

    render_report(path, class_names, labels, card, per_class=per_class, title=title, provenance=provenance)
