"""The anchor pipeline's parts. For now: pools of precomputed CLIP embeddings (LAION's layout, `precomputed`) and
an IVF-PQ index over them built shard by shard into on-disk inverted lists (`index`), which `anchorclip retrieve
--pool_embeddings` uses instead of embedding the pool with the model."""
