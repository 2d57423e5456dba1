"""The attribute vocabulary of the miniature world: what a scene can be, and the words that name it.

Class names are the words the captions use, so a zero-shot head built from them is in-vocabulary.
Order matters: a `ClassLabel` index is a position in one of these tuples, in every split.
"""

#: Every shape of the world, seen and unseen.
SHAPES = (
    "circle", "square", "triangle", "star", "heart", "cross",
    "diamond", "hexagon", "pentagon", "ring", "crescent", "arrow",
)  # fmt: skip
#: The finetune task sees 8 shapes; these 4 are held out for the zero-shot (unseen classes) evaluation.
UNSEEN_SHAPES = ("pentagon", "ring", "crescent", "arrow")
#: The shapes of the finetune task.
SEEN_SHAPES = tuple(shape for shape in SHAPES if shape not in UNSEEN_SHAPES)

# Saturated colours that stand out on the light, neutral backgrounds.
COLOURS = {
    "red": (214, 40, 40),
    "orange": (245, 130, 20),
    "yellow": (240, 210, 30),
    "green": (40, 160, 60),
    "blue": (40, 80, 210),
    "purple": (130, 50, 170),
    "pink": (240, 110, 180),
    "brown": (120, 70, 30),
}
#: The colour names a shape is drawn in.
COLOUR_NAMES = tuple(COLOURS)

SIZES = ("small", "large")
# Radius of the shape's bounding circle, in pixels of the 64x64 canvas.
SIZE_RADIUS = {"small": 9, "large": 15}

POSITIONS = ("center", "top left", "top right", "bottom left", "bottom right")
POSITION_XY = {
    "center": (32, 32),
    "top left": (18, 18),
    "top right": (46, 18),
    "bottom left": (18, 46),
    "bottom right": (46, 46),
}

#: The background patterns.
BACKGROUNDS = ("plain", "striped", "dotted", "checkered")

#: Rendering styles, the domains: the finetune task is photo-only, the other styles are the domain shift.
STYLES = ("photo", "sketch", "painting", "pixel art")

#: Each attribute of a scene and its values (the dataset's ClassLabel columns).
ATTRIBUTES = {
    "shape": SHAPES,
    "colour": COLOUR_NAMES,
    "size": SIZES,
    "position": POSITIONS,
    "background": BACKGROUNDS,
    "style": STYLES,
}
