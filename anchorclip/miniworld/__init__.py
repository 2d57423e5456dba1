"""A miniature, fully synthetic image-caption world for running and measuring ARF offline in minutes.

32x32 scenes of one coloured shape on a patterned background, rendered in four styles (the domains),
with captions from a small grammar. See `splits` for the datasets, `assets` for the shipped models and `formats` for
how its sets plug into evaluation (`miniworld:<split>` specs).
"""

from . import formats  # noqa: F401  (registers `miniworld:<split>` specs with anchorclip.evaluation.formats)
from .assets import MINICAPTIONER_PATH, MINICLIP_PATH
from .attributes import ATTRIBUTES, BACKGROUNDS, COLOUR_NAMES, SEEN_SHAPES, SHAPES, STYLES, UNSEEN_SHAPES
from .splits import EVAL_SPLITS, SPLITS, VERSION, cache_root, class_names, load_miniworld_split, miniworld_eval_sets
from .tokenizer import build_tokenizer
from .world import Scene, make_example

__all__ = [
    "ATTRIBUTES",
    "BACKGROUNDS",
    "COLOUR_NAMES",
    "EVAL_SPLITS",
    "MINICAPTIONER_PATH",
    "MINICLIP_PATH",
    "SEEN_SHAPES",
    "SHAPES",
    "SPLITS",
    "STYLES",
    "UNSEEN_SHAPES",
    "VERSION",
    "Scene",
    "build_tokenizer",
    "cache_root",
    "class_names",
    "load_miniworld_split",
    "make_example",
    "miniworld_eval_sets",
]
