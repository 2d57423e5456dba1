"""The anchor pipeline's parts, one job a module.

* Captioning (`anchorclip caption`): `captioning` (the captioner: loading, preprocessing, generation),
  `caption_job` (the resumable job: settings, chunks per process, merge, provenance), `shards` (atomic chunk
  files, shared with the embedding cache).
* Retrieval (`anchorclip retrieve`): `retrieval_args` (the job's settings), `retrieval` (the job),
  `pool_embedding` (the model and the pool's embeddings), `embedding_store`, `encoders`, `embed_column` (the
  resumable, sharded embedding cache), `pool_index` (the faiss index over an embedded pool), `selection`
  (queries, candidates, leakage guard, de-duplication, quotas), `report` (the anchors dataset and report.html).
* Pools of precomputed CLIP embeddings in LAION's layout (`precomputed`), the IVF-PQ index over them encoded shard
  by shard into on-disk inverted lists (`index`), and the URL + caption anchors retrieved from them
  (`url_anchors`): what `anchorclip retrieve --pool_embeddings` uses instead of embedding the pool.
"""
