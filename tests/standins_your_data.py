"""Stand-ins for docs/your-data.md: the three shapes people arrive with, small and in their real layout.

`build_your_data(root)` writes, under `root`: `data/pets/{train,test}/<class>/*.jpg` (a folder of class folders),
`data/birds/{train,test}.csv` with `images/*.jpg` beside them (run_clip.py's CSV of path and label),
`data/captioned/{images/, pairs.jsonl}` (a captioned image-text set), and `laion/urls.parquet` read by img2dataset
into `laion/images/` as img2dataset writes it by default (`NNNNN.tar` of KEY.jpg + KEY.txt + KEY.json, with
`NNNNN.parquet` and `NNNNN_stats.json` beside each shard).
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

PETS = ["cat", "dog", "rabbit"]
BIRDS = ["crow", "heron", "owl", "robin"]


def _jpg(seed: int, size: int = 32) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def _pets(root: Path) -> None:
    for split, per_class in (("train", 4), ("test", 2)):
        for c, name in enumerate(PETS):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                (folder / f"{i}.jpg").write_bytes(_jpg(1000 + 100 * c + 10 * (split == "test") + i))


def _birds(root: Path) -> None:
    (root / "images").mkdir(parents=True)
    for split, rows in (("train", 16), ("test", 8)):
        lines = ["image_path,label"]
        for i in range(rows):
            name = f"{split}_{i}.jpg"
            (root / "images" / name).write_bytes(_jpg(2000 + 50 * (split == "test") + i))
            lines.append(f"images/{name},{BIRDS[i % len(BIRDS)]}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")


def _captioned(root: Path) -> None:
    (root / "images").mkdir(parents=True)
    with open(root / "pairs.jsonl", "w") as file:
        for i in range(24):
            (root / "images" / f"{i}.jpg").write_bytes(_jpg(3000 + i))
            caption = f"a photo of a {PETS[i % len(PETS)]} on the grass"
            file.write(json.dumps({"image": f"images/{i}.jpg", "caption": caption}) + "\n")


def _laion(root: Path, rows: int = 48, shards: int = 2) -> None:
    """The URL list `anchorclip retrieve --pool_embeddings` writes, and img2dataset's default output for it."""
    root.mkdir(parents=True)
    captions = [f"a photo of a {(PETS + BIRDS)[i % 7]}" for i in range(rows)]
    urls = [f"https://example.com/{i}.jpg" for i in range(rows)]
    pq.write_table(pa.table({"url": urls, "caption": captions}), root / "urls.parquet")
    (root / "images").mkdir()
    per = rows // shards
    for shard in range(shards):
        keys = [f"{shard:05d}{i:04d}" for i in range(per)]
        with tarfile.open(root / "images" / f"{shard:05d}.tar", "w") as tar:
            for key, row in zip(keys, range(shard * per, (shard + 1) * per), strict=True):
                meta = json.dumps({"url": urls[row], "caption": captions[row], "key": key, "status": "success"})
                for extension, data in (
                    ("jpg", _jpg(4000 + row)),
                    ("txt", captions[row].encode()),
                    ("json", meta.encode()),
                ):
                    info = tarfile.TarInfo(f"{key}.{extension}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        table = pa.table({"key": keys, "url": urls[shard * per : (shard + 1) * per], "status": ["success"] * per})
        pq.write_table(table, root / "images" / f"{shard:05d}.parquet")
        (root / "images" / f"{shard:05d}_stats.json").write_text(json.dumps({"count": per, "successes": per}))


def build_your_data(root: str | Path) -> Path:
    root = Path(root)
    _pets(root / "data" / "pets")
    _birds(root / "data" / "birds")
    _captioned(root / "data" / "captioned")
    _laion(root / "laion")
    return root
