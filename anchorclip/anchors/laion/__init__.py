"""Pair anchors from a pool of precomputed CLIP embeddings in LAION's layout (`anchorclip retrieve
--pool_embeddings`). See `anchorclip.anchors` for the map of the pipelines."""
