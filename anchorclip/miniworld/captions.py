"""A small caption grammar: several sentence types, synonyms, and random attribute inclusion and order.

Captions play the role of CLIP's web alt-text: rich but inconsistent. The shape is nearly always named
(sometimes only as "shape"/"object"), the other attributes only some of the time. Every word any caption
or evaluation prompt can use is listed here, so the tokenizer's vocabulary is exactly `vocabulary()`.
"""

from __future__ import annotations

import numpy as np

STYLE_OPENERS = {
    "photo": ("a photo of", "a photograph of", "this is a photo of", "a real photo of"),
    "sketch": ("a sketch of", "a drawing of", "a pencil sketch of", "a line drawing of"),
    "painting": ("a painting of", "an oil painting of", "a painted picture of", "art of"),
    "pixel art": ("pixel art of", "a pixel art image of", "a pixelated image of", "a video game sprite of"),
}
NEUTRAL_OPENERS = ("a picture of", "an image of", "a rendering of", "this is", "there is")
STYLE_SUFFIXES = {
    "photo": ("in a photo", "photographed"),
    "sketch": ("in a sketch", "drawn in pencil"),
    "painting": ("in a painting", "painted in oil"),
    "pixel art": ("in pixel art", "in a pixel art style"),
}
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
GENERIC_NOUNS = ("shape", "object")
BACKGROUND_PHRASES = {
    "plain": ("on a plain background", "in front of a plain backdrop"),
    "striped": ("on a striped background", "in front of a striped backdrop", "on stripes"),
    "dotted": ("on a dotted background", "in front of a dotted backdrop", "on polka dots"),
    "checkered": ("on a checkered background", "in front of a checkered backdrop", "on a checkerboard"),
}
POSITION_PHRASES = {
    "center": ("in the center", "in the middle"),
    "top left": ("at the top left", "in the top left corner", "in the upper left"),
    "top right": ("at the top right", "in the top right corner", "in the upper right"),
    "bottom left": ("at the bottom left", "in the bottom left corner", "in the lower left"),
    "bottom right": ("at the bottom right", "in the bottom right corner", "in the lower right"),
}
# Extra words so that common prompt templates (anchorclip.templates.SIMPLE_TEMPLATES, the default
# hypothesis "This is a photo of {}." of transformers' zero-shot pipeline) are in-vocabulary.
EXTRA_PROMPT_WORDS = ("bad", "sculpture", "the", "it", "is", "shape", "object", "background", "a", "an", "of")


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _with_article(words: list[str]) -> list[str]:
    return (["an"] if words[0][0] in "aeiou" else ["a"]) + words


def make_caption(scene, rng: np.random.Generator) -> str:
    """A caption for `scene` (a `world.Scene`), lower case, words and '.' separated by spaces."""
    noun = scene.shape if rng.random() < 0.85 else _pick(rng, GENERIC_NOUNS)
    adjectives = []
    if rng.random() < 0.5:
        adjectives.append(_pick(rng, SIZE_WORDS[scene.size]))
    if rng.random() < 0.75:
        adjectives.append(scene.colour)
    thing = _with_article(adjectives + [noun])
    phrases = []
    if rng.random() < 0.6:
        phrases.append(_pick(rng, BACKGROUND_PHRASES[scene.background]))
    if rng.random() < 0.5:
        phrases.append(_pick(rng, POSITION_PHRASES[scene.position]))
    rng.shuffle(phrases)

    sentence_type = rng.random()
    if sentence_type < 0.55:  # "a sketch of a small red star on stripes at the top left"
        opener = _pick(rng, STYLE_OPENERS[scene.style] if rng.random() < 0.75 else NEUTRAL_OPENERS)
        words = [opener, *thing, *phrases]
    elif sentence_type < 0.8:  # "a small red star at the top left in a sketch"
        words = [*thing, *phrases]
        if rng.random() < 0.7:
            words.append(_pick(rng, STYLE_SUFFIXES[scene.style]))
    else:  # "a sketch of a red star . the background is striped ."
        opener = _pick(rng, STYLE_OPENERS[scene.style] if rng.random() < 0.75 else NEUTRAL_OPENERS)
        position = [_pick(rng, POSITION_PHRASES[scene.position])] if rng.random() < 0.5 else []
        words = [opener, *thing, *position, ".", "the background is", scene.background]
    return " ".join(words + ["."])


def vocabulary() -> list[str]:
    """Every word the captions and the miniworld evaluation templates can contain, sorted."""
    from .attributes import ATTRIBUTES
    from .prompts import EVAL_TEMPLATES

    phrases = [*NEUTRAL_OPENERS, *GENERIC_NOUNS, *EXTRA_PROMPT_WORDS, ".", "the background is"]
    for table in (STYLE_OPENERS, STYLE_SUFFIXES, SIZE_WORDS, BACKGROUND_PHRASES, POSITION_PHRASES):
        for options in table.values():
            phrases.extend(options)
    for names in ATTRIBUTES.values():
        phrases.extend(names)
    for templates in EVAL_TEMPLATES.values():
        phrases.extend(template.replace("{}", "").replace(".", " . ") for template in templates)
    return sorted({word for phrase in phrases for word in phrase.split()})
