"""Pair anchors from a pool of image-caption pairs that we embed (`anchorclip retrieve --pool`).

See `anchorclip.anchors` for the map of the pipelines."""
