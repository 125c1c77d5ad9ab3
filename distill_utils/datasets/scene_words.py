"""The built-in levels' scene vocabulary: attribute palettes, caption templates, captions of a scene and the
scene content a caption names (datasets/builtin.py draws and writes the scenes)."""
import itertools
import random
import re
from typing import NamedTuple

COLOURS = {"red": (214, 39, 40), "green": (44, 160, 44), "blue": (31, 90, 220), "yellow": (240, 210, 30),
           "purple": (148, 60, 189), "orange": (255, 127, 14), "white": (245, 245, 245), "black": (15, 15, 15)}
BACKGROUNDS = {"grey": (128, 128, 128), "navy": (25, 30, 75), "sand": (215, 195, 150), "mint": (170, 225, 200)}
SHAPES = ("circle", "square", "triangle", "cross", "diamond")
SIZES = {"small": 0.11, "large": 0.2}  # radius as a fraction of the canvas
POSITIONS = {"left": (0.27, 0.5), "right": (0.73, 0.5), "top": (0.5, 0.27), "bottom": (0.5, 0.73), "centre": (0.5, 0.5)}

# Paraphrase vocabulary: each attribute value has several wordings.
WORDS = {
    "small": ["small", "little", "tiny"], "large": ["large", "big", "huge"],
    "circle": ["circle", "disc"], "square": ["square", "block"], "triangle": ["triangle"],
    "cross": ["cross", "plus sign"], "diamond": ["diamond", "rhombus"],
    "left": ["on the left", "at the left side", "in the left half"],
    "right": ["on the right", "at the right side", "in the right half"],
    "top": ["at the top", "near the top edge", "in the upper part"],
    "bottom": ["at the bottom", "near the bottom edge", "in the lower part"],
    "centre": ["in the centre", "in the middle"],
    "grey": ["grey", "gray"], "navy": ["navy"], "sand": ["sand", "beige"], "mint": ["mint"],
}
OBJECT_TEMPLATES = ["a {size} {colour} {shape} {where}", "a {colour} {shape} that is {size}, {where}"]
_ARTICLE = re.compile(r"\ba (?=[aeiou])")
SCENE_TEMPLATES = ["{objects} on a {bg} background", "there is {objects}; the background is {bg}",
                   "a {bg} picture showing {objects}", "{bg} backdrop with {objects}",
                   "an image of {objects} over {bg}"]


class Palette(NamedTuple):
    """The attribute values a level draws (backgrounds and shapes are shared) and their wordings."""
    colours: dict
    sizes: dict
    positions: dict
    words: dict
    templates: list
    textures: tuple = ()


BASIC = Palette(COLOURS, SIZES, POSITIONS, WORDS, OBJECT_TEMPLATES)
# The level `synthetic_paper`: finer attributes (14 colours, 3 sizes, a 3 x 3 grid of positions) and a texture;
# its scene space (tens of millions) is too large to list, so its scenes are sampled, uniformly over the same space.
TEXTURE_WORDS = {"solid": ["solid", "filled"], "striped": ["striped", "stripy"], "hollow": ["hollow", "outlined"]}
_CORNERS = {"top left": ["in the top left corner", "at the upper left"],
            "top right": ["in the top right corner", "at the upper right"],
            "bottom left": ["in the bottom left corner", "at the lower left"],
            "bottom right": ["in the bottom right corner", "at the lower right"]}
FINE = Palette(
    colours={**COLOURS, "pink": (247, 120, 186), "brown": (140, 86, 40), "cyan": (23, 190, 207),
             "lime": (170, 230, 40), "teal": (0, 128, 128), "maroon": (128, 0, 32)},
    sizes={"small": 0.09, "medium": 0.14, "large": 0.19},
    positions={"top left": (0.22, 0.22), "top": (0.5, 0.22), "top right": (0.78, 0.22), "left": (0.22, 0.5),
               "centre": (0.5, 0.5), "right": (0.78, 0.5), "bottom left": (0.22, 0.78), "bottom": (0.5, 0.78),
               "bottom right": (0.78, 0.78)},
    words={**WORDS, **_CORNERS, **TEXTURE_WORDS, "medium": ["medium", "medium-sized", "mid-sized"]},
    templates=["a {size} {texture} {colour} {shape} {where}", "a {texture} {colour} {shape}, {size}, {where}"],
    textures=tuple(TEXTURE_WORDS))
PALETTES = {"basic": BASIC, "fine": FINE}
MENTION = 0.75  # fine palette: each caption names a shape's size, colour and texture each with this probability
JITTER = 24  # fine palette: each shape's colour moved by up to this much per channel, so near colours blur


def _palette(obj: tuple) -> Palette:
    return FINE if len(obj) == 5 else BASIC  # only the fine palette's objects carry a texture


def _all_scenes(max_objects):
    """Every scene: (background, ((colour, shape, size, position), ...)) with distinct positions."""
    objects = list(itertools.product(COLOURS, SHAPES, SIZES))
    scenes = []
    for n in range(1, max_objects + 1):
        for positions in itertools.combinations(POSITIONS, n):
            for attrs in itertools.product(objects, repeat=n):
                for bg in BACKGROUNDS:
                    scenes.append((bg, tuple(a + (p,) for a, p in zip(attrs, positions))))
    return scenes


def _phrase(obj: tuple, rng: random.Random) -> str:
    colour, shape, size, pos = obj[:4]
    p = _palette(obj)
    template = rng.choice(p.templates)  # drawn before the words: the older levels' bytes
    words = dict(size=rng.choice(p.words[size]), colour=colour, shape=rng.choice(p.words[shape]),
                 where=rng.choice(p.words[pos]))
    if len(obj) == 4:
        return template.format(**words)
    words["texture"] = rng.choice(p.words[obj[4]])
    for name in ("size", "colour", "texture"):  # a caption leaves some attributes out, as people's captions do
        if rng.random() > MENTION:
            words[name] = ""
    text = template.format(**words).replace(", ,", ",")
    return re.sub(r" +", " ", text).replace(" ,", ",")


def caption(scene: tuple, rng: random.Random) -> str:
    bg, objects = scene
    phrases = [_phrase(obj, rng) for obj in objects]
    text = rng.choice(SCENE_TEMPLATES).format(objects=" and ".join(phrases), bg=rng.choice(WORDS[bg]))
    return _ARTICLE.sub("an ", text)


def _canonical_words():
    """{wording: attribute value} of every attribute wording, longest first (so 'plus sign' before 'sign')."""
    words = {w: value for value, ws in FINE.words.items() for w in ws}  # FINE's words include BASIC's
    words.update({c: c for c in FINE.colours})
    return dict(sorted(words.items(), key=lambda kv: -len(kv[0])))


def content(text: str) -> tuple:
    """What a caption names, whatever its wording: (background, (sorted attribute values of each object, in the
    caption's order)). Two captions have the same content exactly when they name the same attributes of the same
    shapes; a caption naming every attribute names its whole scene."""
    words = _canonical_words()
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, words)) + r")\b")
    values = [words[m.group(1)] for m in pattern.finditer(text)]
    bg = [v for v in values if v in BACKGROUNDS]
    objects, current = [], []
    for v in (v for v in values if v not in BACKGROUNDS):
        current.append(v)
        if v in FINE.positions:  # every object phrase ends with its position (FINE's include BASIC's names)
            objects.append(tuple(sorted(current)))
            current = []
    return bg[0] if len(bg) == 1 else tuple(bg), tuple(objects)
