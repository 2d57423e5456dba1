"""Pools of precomputed embeddings in LAION's layout (`anchorclip.anchors`): reading, the pool index, resuming,
and `anchorclip retrieve --pool_embeddings` end to end on a tiny CLIP. Seconds, CPU only."""

from __future__ import annotations

import contextlib
import json
import logging
import os

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import CLASS_NAMES, make_config, make_processor
from helpers import embedded_laion_pool, write_laion_pool
from transformers import CLIPModel

from anchorclip.anchors.laion import index as laion_index
from anchorclip.anchors.laion.index import build_pool_index, open_pool_index
from anchorclip.anchors.laion.precomputed import PoolError, PrecomputedPool, check_model
from anchorclip.anchors.pool.encoders import TextEncoder
from anchorclip.anchors.pool.faiss_index import exact_topk, measure_recall
from anchorclip.anchors.pool.steps import PROVENANCE_FILE
from anchorclip.cli import retrieve


def _normalized(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def vectors():
    return _normalized(np.random.default_rng(0), 3000, 16)


@pytest.fixture
def pool_dir(tmp_path, vectors):
    return write_laion_pool(tmp_path / "pool", [vectors[:1000], vectors[1000:2200], vectors[2200:]])


def test_reads_the_layout(pool_dir, vectors):
    pool = PrecomputedPool.open(str(pool_dir))
    assert pool.num_rows == 3000 and pool.dim == 16 and pool.kinds == ["image"]
    assert pool.rows.tolist() == [1000, 1200, 800]
    store = pool.store("image")
    assert isinstance(store.shards[0], np.memmap)
    np.testing.assert_allclose(store.gather([5, 1500, 2999]), vectors[[5, 1500, 2999]], atol=1e-3)
    meta = pool.metadata(np.array([2999, 5, 1500]), ["url", "caption"])
    assert meta["url"] == ["https://example.com/2999.jpg", "https://example.com/5.jpg", "https://example.com/1500.jpg"]
    with pytest.raises(PoolError, match="text_emb"):
        pool.store("text")


def test_validation_names_the_file(pool_dir):
    np.save(pool_dir / "img_emb" / "img_emb_0001.npy", np.zeros((1199, 16), np.float16))
    with pytest.raises(PoolError, match=r"img_emb_0001\.npy: 1199 rows, but .*metadata_0001\.parquet has 1200"):
        PrecomputedPool.open(str(pool_dir))
    (pool_dir / "img_emb" / "img_emb_0001.npy").write_bytes(b"\x93NUMPY truncated")
    with pytest.raises(PoolError, match=r"img_emb_0001\.npy: not a readable \.npy"):
        PrecomputedPool.open(str(pool_dir))
    os.remove(pool_dir / "img_emb" / "img_emb_0001.npy")
    with pytest.raises(PoolError, match=r"not have the same shards \(unpaired shard numbers \[1\]\)"):
        PrecomputedPool.open(str(pool_dir))
    np.save(pool_dir / "img_emb" / "img_emb_0001.npy", np.zeros((1200, 8), np.float16))
    with pytest.raises(PoolError, match=r"img_emb_0001\.npy: dimension 8"):
        PrecomputedPool.open(str(pool_dir))


def test_index_recall_and_resume(pool_dir, tmp_path, monkeypatch):
    store = PrecomputedPool.open(str(pool_dir)).store("image")
    directory = str(tmp_path / "index")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(laion_index, "_merge", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_pool_index(store, directory, train_size=3000)
    monkeypatch.undo()
    shards = [os.path.join(directory, "shards", f"shard_{s:05d}.index") for s in range(3)]
    assert all(os.path.exists(path) for path in shards)
    os.remove(shards[1])  # as if the run had died while encoding shard 1
    stamps = {s: os.stat(shards[s]).st_mtime_ns for s in (0, 2)}
    index = build_pool_index(store, directory, train_size=3000, keep_shards=True)
    assert {s: os.stat(shards[s]).st_mtime_ns for s in (0, 2)} == stamps  # finished shards are not re-encoded
    assert os.path.exists(shards[1]) and index.ntotal == 3000

    queries = _normalized(np.random.default_rng(1), 100, 16)
    assert measure_recall(index, store, queries, 10) >= 0.85  # PQ codes re-ranked with the pool's vectors
    _, exact = exact_topk(store, queries, 1)
    _, found = index.search(queries, 1)
    assert np.mean(found[:, 0] == exact[:, 0]) >= 0.8
    # Reopened from its folder (a moved folder works too).
    moved = str(tmp_path / "moved")
    os.rename(directory, moved)
    reopened = open_pool_index(moved, store, "nprobe=64,k_factor_rf=20")
    assert reopened.params["nprobe"] == "64" and reopened.k_factor == 20
    assert measure_recall(reopened, store, queries, 10) >= measure_recall(index, store, queries, 10) - 0.02


def test_retrieve_from_pool_embeddings(tmp_path, checkpoint, capsys, caplog):
    pool = embedded_laion_pool(tmp_path / "pool", checkpoint)
    out = tmp_path / "anchors"
    argv = [
        "--pool_embeddings",
        str(pool),
        "--model_name_or_path",
        checkpoint,
        "--output_dir",
        str(out),
        "--class_names",
        *CLASS_NAMES,
        "--k_per_class",
        "5",
        "--cache_dir",
        str(tmp_path / "cache"),
    ]
    assert retrieve.main(argv) == 0
    anchors = datasets.load_from_disk(str(out))
    assert set(anchors.column_names) == {"url", "caption", "class_name", "class_index", "score", "pool_index"}
    assert 0 < len(anchors) <= 5 * len(CLASS_NAMES)
    row = anchors[0]
    assert row["url"] == f"https://example.com/{row['pool_index']}.jpg"
    assert pq.read_table(out / "urls.parquet").num_rows == len(anchors)
    assert "<img loading='lazy'" in (out / "report.html").read_text()
    provenance = json.loads((out / PROVENANCE_FILE).read_text())
    assert provenance["index_factory"].startswith("IVF") and provenance["index_recall"] >= 0.8
    assert provenance["pool"] == str(pool)
    # text2text searches the caption embeddings with an index of its own, and says what the other one holds.
    with caplog.at_level(logging.INFO, logger="anchorclip.anchors.laion.job"):
        assert retrieve.main([*argv[:5], str(tmp_path / "t2t"), *argv[6:], "--rule", "text2text"]) == 0
    indexes = sorted(os.listdir(tmp_path / "cache" / "pool-index"))
    assert len(indexes) == 2 and indexes[0].startswith("image-") and indexes[1].startswith("text-")
    assert "also holds 1 other pool index(es)" in caplog.text and f"MiB in all ({indexes[0]})" in caplog.text
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        retrieve.main(argv + ["--pool", "somewhere"])
    assert exit_info.value.code == 2 and "pass one of --pool and --pool_embeddings" in capsys.readouterr().err


def test_refuses_another_model(tmp_path, checkpoint):
    pool = PrecomputedPool.open(str(embedded_laion_pool(tmp_path / "pool", checkpoint, model_name="openai/clip-vit")))
    with pytest.raises(PoolError, match="embedded with openai/clip-vit"):
        check_model(pool, checkpoint, 16)
    with pytest.raises(PoolError, match="dimension 16, but"):
        check_model(pool, "openai/clip-vit", 512)
    other = CLIPModel(make_config()).eval()  # same architecture, other weights: other embedding space
    encoder = TextEncoder(other, make_processor().tokenizer, torch.device("cpu"), autocast=contextlib.nullcontext)
    with pytest.raises(PoolError, match="does not reproduce the pool's caption embeddings"):
        check_model(pool, "openai/clip-vit", 16, encoder.encode)
    mine = TextEncoder(
        CLIPModel.from_pretrained(checkpoint).eval(),
        make_processor().tokenizer,
        torch.device("cpu"),
        autocast=contextlib.nullcontext,
    )
    assert check_model(pool, "openai/clip-vit", 16, mine.encode) > 0.99


def test_default_factory_and_two_level_kmeans_on_a_skewed_sample():
    assert laion_index.default_pool_factory(400_000_000, 512) == "IVF65536(IVF256,Flat),PQ256x4fsr"
    assert laion_index.default_pool_factory(400_000_000, 768).endswith("PQ256x4fsr")  # 128 bytes at ViT-L's d too
    assert laion_index.default_pool_factory(3000, 16) == "IVF64(IVF8,Flat),PQ8x4fsr"
    # Three dense clusters and a lone far row: the lone row's top cluster gets one centroid (itself), not zero and
    # not more than it has rows; the total is exactly nlist.
    rng = np.random.default_rng(0)
    centres = _normalized(rng, 3, 16)
    sample = np.concatenate([centres[i] + 0.05 * rng.standard_normal((1000, 16)) for i in range(3)])
    sample = np.concatenate([sample, -centres.sum(0, keepdims=True)]).astype(np.float32)
    centroids, top = laion_index.two_level_kmeans(sample, 64)
    assert top.shape == (8, 16)
    assert centroids.shape == (64, 16) and np.isfinite(centroids).all()
    nearest = np.linalg.norm(centroids[:, None] - sample[-1][None], axis=2).min()
    assert nearest < 1e-5  # the lone row is a centroid of its own


def test_scores_without_reranking_are_cosines(pool_dir):
    store = PrecomputedPool.open(str(pool_dir)).store("image")
    index = build_pool_index(store, str(pool_dir.parent / "index"), train_size=3000, index_params="k_factor_rf=1")
    queries = _normalized(np.random.default_rng(2), 20, 16)
    scores, ids = index.search(queries, 5)
    exact = np.einsum("qd,qkd->qk", queries, store.gather(ids.ravel()).reshape(20, 5, 16))
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first (L2 distances would rise)
    assert np.abs(scores - exact).mean() < 0.08  # 4-bit codes of 2 dims each estimate each row's cosine


def test_prefetch_asks_for_each_rows_bytes(pool_dir, vectors, monkeypatch):
    store = PrecomputedPool.open(str(pool_dir)).store("image")
    asked = []
    real = os.posix_fadvise
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, offset, length, advice: asked.append((offset, length, advice)))
    store.prefetch(np.array([5, 1001, 2999]))
    monkeypatch.setattr(os, "posix_fadvise", real)
    header = [shard.offset for shard in store.shards]  # the .npy header before row 0
    row = 16 * 2  # float16 x 16
    expected = [(header[0] + 5 * row, row), (header[1] + 1 * row, row), (header[2] + 799 * row, row)]
    assert [(offset, length) for offset, length, _ in asked] == expected
    assert {advice for *_, advice in asked} == {os.POSIX_FADV_WILLNEED}
    np.testing.assert_array_equal(store.gather([5, 1001, 2999]), vectors[[5, 1001, 2999]].astype(np.float16))
    memory = store.from_arrays(vectors)
    memory.prefetch([1, 2])  # in-memory shards: nothing to read


def test_search_prefetches_each_shortlist_before_reading_it(pool_dir, tmp_path, monkeypatch):
    # Without the prefetch a pool on disk is read a page fault a row (~1 s a query, benchmarks/pool_reads.py).
    store = PrecomputedPool.open(str(pool_dir)).store("image")
    index = build_pool_index(store, str(tmp_path / "index"), train_size=3000, index_params="k_factor_rf=5")
    events = []
    monkeypatch.setattr(store, "prefetch", lambda rows: events.append(("prefetch", sorted(np.asarray(rows).tolist()))))
    gather = store.gather
    monkeypatch.setattr(
        store, "gather", lambda rows: events.append(("gather", sorted(np.asarray(rows).tolist()))) or gather(rows)
    )
    _, ids = index.search(_normalized(np.random.default_rng(2), 3, 16), 4)
    assert [kind for kind, _ in events] == ["prefetch", "gather"]
    assert events[0][1] == events[1][1] and set(ids.ravel().tolist()) <= set(events[0][1])
    assert len(events[0][1]) > ids.size // 3  # the shortlist (5·k a query), not just the answers


def test_rows_go_to_the_list_of_their_exact_nearest_centroid(pool_dir, vectors, monkeypatch):
    import faiss

    # One top cluster of 8 searched: the IVF quantiser alone would put some rows in a farther list.
    monkeypatch.setitem(laion_index.DEFAULT_PARAMS, "quantizer_nprobe", "1")
    store = PrecomputedPool.open(str(pool_dir)).store("image")
    index = build_pool_index(store, str(pool_dir.parent / "index"), train_size=3000)
    ivf = faiss.extract_index_ivf(index.index)
    quantizer = faiss.downcast_index(ivf.quantizer)
    assert isinstance(quantizer, faiss.IndexIVF)  # searching still goes through the IVF quantiser
    centroids = quantizer.reconstruct_n(0, ivf.nlist)
    nearest = np.argmin(((vectors.astype(np.float16).astype(np.float32)[:, None] - centroids[None]) ** 2).sum(2), 1)
    invlists = ivf.invlists
    for list_no in range(ivf.nlist):
        size = invlists.list_size(list_no)
        ids = faiss.rev_swig_ptr(invlists.get_ids(list_no), size).copy() if size else np.zeros(0, np.int64)
        assert np.all(nearest[ids] == list_no)


def test_merging_onto_a_list_of_whole_blocks_keeps_every_code(tmp_path):
    # One list; the first shard fills exactly 128 entries = one 128-byte block's worth... of 4-byte codes: faiss 1.15
    # would copy past the list's end on the next append. The merged index must equal one built in a single pass.
    import faiss

    from anchorclip.anchors.pool.store import EmbeddingStore

    rows = _normalized(np.random.default_rng(5), 178, 16)
    store = EmbeddingStore.from_arrays(rows)
    trained, _ = laion_index.train(store, "IVF1,PQ8x4fsr", 178)
    trained_path = str(tmp_path / "trained.index")
    faiss.write_index(trained, trained_path)
    paths = []
    for name, part in (("a", np.arange(128)), ("b", np.arange(128, 178))):
        shard = faiss.read_index(trained_path)
        shard.add_with_ids(rows[part], part)
        paths.append(str(tmp_path / f"{name}.index"))
        faiss.write_index(shard, paths[-1])
    assert faiss.downcast_InvertedLists(faiss.extract_index_ivf(trained).invlists).block_size == 128
    merged = laion_index._merge(trained_path, paths, store)
    direct = faiss.read_index(trained_path)
    direct.add_with_ids(rows, np.arange(178))
    assert merged.ntotal == 178
    np.testing.assert_array_equal(merged.search(rows, 5)[1], direct.search(rows, 5)[1])
