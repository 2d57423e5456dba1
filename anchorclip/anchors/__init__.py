"""The anchor pipeline's parts.

* Captioning: `captioning`, `caption_job`, `shards` (`anchorclip caption`).
* Pools of precomputed CLIP embeddings in LAION's layout (`precomputed`), the IVF-PQ index over them encoded shard
  by shard into on-disk inverted lists (`index`), and the URL + caption anchors retrieved from them
  (`url_anchors`): what `anchorclip retrieve --pool_embeddings` uses instead of embedding the pool.
"""
