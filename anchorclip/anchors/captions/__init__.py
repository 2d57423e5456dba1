"""Caption anchors (`anchorclip caption`): the captioner, its loop over chunks, the job's settings and the job.

See `anchorclip.anchors` for the map of the pipelines."""
