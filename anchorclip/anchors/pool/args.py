"""`RetrievalArguments`: the settings of one retrieval job (`anchorclip.anchors.retrieve_anchors`), which
are the options of `anchorclip retrieve` and what `anchorclip train --pair_pool` builds from its `--retrieval_*`
flags."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

from anchorclip.templates import resolve_templates

RULES = ("text2image", "text2text", "image2image")
QUERY_MODES = ("ensemble", "each")
# The settings `anchorclip train` exposes as its own `--retrieval_*` flags (the others keep the command's defaults).
TRAIN_FLAGS: tuple[str, ...] = (
    "rule",
    "k_per_class",
    "oversample",
    "query_mode",
    "templates",
    "dedup_threshold",
    "diversity",
)
TRAIN_FLAGS += ("leakage_sets",)


@dataclass
class RetrievalArguments:
    """The settings of one retrieval job: the options of `anchorclip retrieve` (docs/retrieval.md), and what
    `anchorclip train --pair_pool` builds from its `--retrieval_*` flags; recorded whole in the provenance.

    Names and numbers only: a pool, finetune set, leakage set or model that is already loaded is passed to
    `retrieve_anchors` beside them. No de-duplication is `dedup_threshold=None` (a threshold <= 0 is read as None);
    `templates` is a list: one template-set name (`["simple"]`; a bare string is taken as a list of one) or
    templates with one `{}` each.
    """

    model_name_or_path: str = field(metadata={"help": "The pretrained CLIP checkpoint used for retrieval."})
    output_dir: str = field(metadata={"help": "Where the anchors dataset, provenance and report.html are written."})
    pool: str | None = field(
        default=None,
        metadata={
            "help": "Pool of image-caption pairs: Hub id, local folder or save_to_disk folder (`spec:split` allowed)."
        },
    )
    pool_embeddings: str | None = field(
        default=None,
        metadata={
            "help": "Instead of --pool: a folder of precomputed embeddings in LAION's layout "
            "(img_emb/, text_emb/, metadata/); anchors are URLs + captions."
        },
    )
    class_names: list[str] | None = field(default=None, metadata={"help": "Downstream class names."})
    class_names_file: str | None = field(default=None, metadata={"help": "A text file with one class name a line."})
    finetune_dataset: str | None = field(
        default=None, metadata={"help": "Finetune dataset: its ClassLabel names are the classes; image2image queries."}
    )
    finetune_split: str = field(default="train", metadata={"help": "Split of the finetune dataset."})
    finetune_image_column: str | None = field(default=None, metadata={"help": "Finetune image column (detected)."})
    finetune_label_column: str | None = field(default=None, metadata={"help": "Finetune label column (detected)."})
    rule: str = field(default="text2image", metadata={"help": f"Retrieval rule: {RULES}."})
    query_mode: str = field(
        default="ensemble",
        metadata={
            "help": "ensemble: one mean query per class; each: one query per template or finetune image "
            "(style-diverse, union of results)."
        },
    )
    templates: list[str] = field(
        default_factory=lambda: ["simple"],
        metadata={"help": "A template set name (simple, photo, openai_imagenet) or templates with one {}."},
    )
    k_per_class: int = field(default=100, metadata={"help": "Anchors per class."})
    budget: int | None = field(default=None, metadata={"help": "At most this many anchors in total."})
    oversample: float = field(
        default=8.0,
        metadata={"help": "Retrieve k_per_class*oversample per query (the shortlist that diversity picks from)."},
    )
    max_image_queries_per_class: int = field(default=32, metadata={"help": "image2image + each: images per class."})
    dedup_threshold: float | None = field(
        default=0.95, metadata={"help": "Cosine at which two anchor images are near-duplicates; 0 (or None) disables."}
    )
    # Not the paper's top-k (0): photo-style queries return photo-style anchors, which protect only that corner of
    # the image space; spread over the pool's own variety they keep domain shift at any lr (docs/results.md).
    diversity: float = field(
        default=0.9,
        metadata={
            "help": "In (0, 1]: pick each class's k by maximal marginal relevance over the pool's image embeddings "
            "(weight of dissimilarity to the anchors already picked); 0 = the top-scored k (the paper's)."
        },
    )
    leakage_sets: list[str] | None = field(
        default=None,
        metadata={
            "help": "Evaluation datasets (`spec:split`; CLIP_benchmark wds folders, ImageFolders, HF datasets: "
            "what `anchorclip eval` reads) whose near-duplicates are removed from the pool."
        },
    )
    leakage_threshold: float = field(default=0.95, metadata={"help": "Cosine at which a pool item counts as leaked."})
    index_factory: str | None = field(default=None, metadata={"help": "faiss.index_factory string (default: auto)."})
    index_params: str | None = field(
        default=None, metadata={"help": "faiss ParameterSpace string, e.g. nprobe=64 (replaces those default keys)."}
    )
    pool_split: str = field(default="train", metadata={"help": "Split of the pool."})
    streaming: bool = field(
        default=False, metadata={"help": "Stream the pool instead of downloading it (each process reads its files)."}
    )
    image_column: str | None = field(default=None, metadata={"help": "Pool image column (detected)."})
    caption_column: str | None = field(default=None, metadata={"help": "Pool caption column (detected)."})
    pool_id: str | None = field(default=None, metadata={"help": "Name keying the embedding cache (default: spec)."})
    cache_dir: str | None = field(default=None, metadata={"help": "Embedding cache (default: $HF_HOME/anchorclip)."})
    shard_size: int = field(default=4096, metadata={"help": "Rows per cached embedding shard."})
    batch_size: int = field(default=256, metadata={"help": "Embedding batch size per process."})
    num_workers: int = field(default=0, metadata={"help": "Image-decoding threads per process."})
    recall_queries: int = field(default=256, metadata={"help": "Queries used to measure an approximate index."})
    report_per_class: int = field(default=12, metadata={"help": "Thumbnails per class in report.html."})
    seed: int = field(default=0, metadata={"help": "Seed of index training and query sampling."})

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {self.rule!r}.")
        if self.query_mode not in QUERY_MODES:
            raise ValueError(f"query_mode must be one of {QUERY_MODES}, got {self.query_mode!r}.")
        if self.k_per_class < 1 or (self.budget is not None and self.budget < 1):
            raise ValueError("k_per_class and budget must be positive.")
        if self.dedup_threshold is not None and self.dedup_threshold <= 0:
            self.dedup_threshold = None  # one spelling of "off", so that provenances compare equal
        if not 0.0 <= self.diversity <= 1.0:
            raise ValueError(f"diversity must be in [0, 1], got {self.diversity}.")
        self.templates = [self.templates] if isinstance(self.templates, str) else list(self.templates or ["simple"])

    def resolved_templates(self) -> list[str]:
        """The templates themselves: the named set's, or the list given."""
        named = len(self.templates) == 1 and "{}" not in self.templates[0]
        return resolve_templates(self.templates[0] if named else self.templates)


def prefixed_arguments(prefix: str, names: Sequence[str] = TRAIN_FLAGS) -> type:
    """A dataclass of the `RetrievalArguments` fields `names`, each renamed `prefix + name` with its type, default
    and help: how another command (`anchorclip train`: `--retrieval_k_per_class`, ...) takes retrieval settings as
    its own flags without restating them. `retrieval_arguments` reads them back."""
    fields = {f.name: f for f in dataclasses.fields(RetrievalArguments)}
    copied = [
        (
            prefix + name,
            fields[name].type,
            field(
                default=fields[name].default,
                default_factory=fields[name].default_factory,
                metadata=fields[name].metadata,
            ),
        )
        for name in names
    ]
    flags = dataclasses.make_dataclass(f"Prefixed{RetrievalArguments.__name__}", copied)
    flags.__module__ = __name__  # where the parser resolves the fields' (string) types
    return flags


def retrieval_arguments(flags, prefix: str, names: Sequence[str] = TRAIN_FLAGS, **settings) -> RetrievalArguments:
    """The `RetrievalArguments` of the prefixed flags `names` held by `flags`, with `settings` for the rest."""
    return RetrievalArguments(**{name: getattr(flags, prefix + name) for name in names}, **settings)
