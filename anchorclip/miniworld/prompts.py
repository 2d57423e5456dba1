"""Zero-shot prompt templates for the miniworld evaluation sets, one list per kind of class name.

Shape prompts are an ensemble over renditions, like OpenAI's ImageNet prompts ("a sketch of a {}."); all
words are in the tokenizer's vocabulary (`captions.vocabulary` reads these lists).
"""

SHAPE_TEMPLATES = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a sketch of a {}.",
    "a painting of a {}.",
    "pixel art of a {}.",
)
COLOUR_TEMPLATES = (
    "a photo of a {} shape.",
    "a picture of a {} object.",
    "an image of a {} shape.",
)
BACKGROUND_TEMPLATES = (
    "a photo of a shape on a {} background.",
    "a picture of an object on a {} background.",
    "the background is {}.",
)
EVAL_TEMPLATES = {"shape": SHAPE_TEMPLATES, "colour": COLOUR_TEMPLATES, "background": BACKGROUND_TEMPLATES}
