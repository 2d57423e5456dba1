"""Prompt templates for zero-shot heads.

`OPENAI_IMAGENET_TEMPLATES` are the 80 prompts of Radford et al. (2021), as used by WiSE-FT, FLYP and
open_clip; `SIMPLE_TEMPLATES` is the short set open_clip ships for quick evaluation.
"""

from collections.abc import Sequence

#: The 80 prompt templates of Radford et al. (2021), each with one `{}` for the class name.
OPENAI_IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

#: open_clip's short template set for quick evaluation, each with one `{}` for the class name.
SIMPLE_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a sculpture of a {}.",
    "a rendering of a {}.",
    "a drawing of a {}.",
    "art of a {}.",
    "a sketch of a {}.",
)

_NAMED = {"openai_imagenet": OPENAI_IMAGENET_TEMPLATES, "simple": SIMPLE_TEMPLATES, "photo": ("a photo of a {}.",)}


def resolve_templates(templates: str | Sequence[str] | None) -> list[str]:
    """Turn a template-set name (`openai_imagenet`, `simple`, `photo`) or a list of templates into a list.

    Every template must contain exactly one `{}` placeholder for the class name.
    """
    if templates is None:
        templates = "simple"
    if isinstance(templates, str):
        if templates not in _NAMED:
            raise ValueError(f"Unknown template set {templates!r}; choose one of {sorted(_NAMED)} or pass a list.")
        templates = _NAMED[templates]
    templates = list(templates)
    if not templates:
        raise ValueError("The template list is empty.")
    for template in templates:
        if template.count("{}") != 1:
            raise ValueError(f"Template {template!r} must contain exactly one '{{}}' placeholder.")
    return templates
