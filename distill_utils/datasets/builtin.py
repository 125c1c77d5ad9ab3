"""The built-in `synthetic` dataset: procedurally drawn shapes with compositional captions.

Every image shows one or more shapes (colour, shape, size, position) on a coloured background;
its captions name all attributes, in several paraphrases, so that no single word identifies
an image and retrieval needs the whole sentence. Written to disk in the Karpathy layout and
read through the same loader as Flickr30k. Deterministic for a given seed. The level `synthetic_paper` draws
from the fine palette: finer values of each attribute, a texture (solid, striped, hollow) per shape, jittered
colours, and captions that each leave some sizes, colours and textures out (shapes and positions always named).

    python -m distill_utils.datasets.builtin --out data/synthetic --seed 0
    python -m distill_utils.datasets.builtin --out data/synthetic_paper --palette fine --max_objects 2 \
        --train_images 10000 --test_images 1000 --val_images 1000      # what --dataset synthetic_paper generates
"""
import argparse
import itertools
import json
import math
import os
import random
import re
from typing import List, NamedTuple, Optional

from PIL import Image, ImageDraw

from common.errors import UserError, cli_main
from common.io import atomic_path, ensure_writable_dir, load_json, save_json

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
VERSION = 2


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


def _polygon(shape, cx, cy, r, angle):
    if shape == "square":
        corners = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
        pts = [(x * 0.8, y * 0.8) for x, y in corners]
    elif shape == "triangle":
        pts = [(math.cos(a), math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    elif shape == "diamond":
        pts = [(0, -1), (0.7, 0), (0, 1), (-0.7, 0)]
    else:  # cross
        w = 0.33
        pts = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w)]
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts]


def draw(scene: tuple, px: int, rng: random.Random, supersample: int = 4) -> Image.Image:
    """Render a scene at `px` x `px` (drawn larger, then downsampled for smooth edges)."""
    bg, objects = scene
    size = px * supersample
    img = Image.new("RGB", (size, size), BACKGROUNDS[bg])
    pen = ImageDraw.Draw(img)
    for obj in objects:
        colour, shape, size_name, pos = obj[:4]
        p = _palette(obj)
        cx, cy = ((v + rng.uniform(-0.05, 0.05)) * size for v in p.positions[pos])
        r = p.sizes[size_name] * rng.uniform(0.9, 1.1) * size
        angle = 0.0 if shape == "circle" else rng.uniform(-0.3, 0.3)  # no draw for circles: the old levels' bytes
        if len(obj) == 4:
            _fill_shape(pen, shape, cx, cy, r, angle, p.colours[colour])
        else:
            rgb = tuple(min(255, max(0, c + rng.randint(-JITTER, JITTER))) for c in p.colours[colour])
            _textured(img, obj[4], shape, cx, cy, r, angle, rgb, size)
    return img.resize((px, px), Image.LANCZOS)


def _fill_shape(pen, shape, cx, cy, r, angle, fill):
    if shape == "circle":
        pen.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        pen.polygon(_polygon(shape, cx, cy, r, angle), fill=fill)


def _textured(img, texture, shape, cx, cy, r, angle, colour, canvas):
    """Solid: filled; hollow: the shape minus a shrunk copy (a thick outline); striped: filled on alternate
    horizontal bands of a sixteenth of the canvas (two pixels at 32 px)."""
    mask = Image.new("L", img.size, 0)
    _fill_shape(ImageDraw.Draw(mask), shape, cx, cy, r, angle, 255)
    if texture == "hollow":
        _fill_shape(ImageDraw.Draw(mask), shape, cx, cy, 0.55 * r, angle, 0)
    elif texture == "striped":
        band = max(1, canvas // 16)
        pen = ImageDraw.Draw(mask)
        for y in range(band, canvas, 2 * band):
            pen.rectangle([0, y, canvas, y + band - 1], fill=0)
    img.paste(colour, mask=mask)


def _attribute_counts(scenes):
    counts = {}
    for bg, objects in scenes:
        for value in (bg,) + tuple(v for obj in objects for v in obj):
            counts[value] = counts.get(value, 0) + 1
    return counts


def _sample_held_out(rng, pool, n, tries=1000):
    """n distinct scenes in which every attribute value that occurs occurs at least twice (when n allows),
    so that no attribute word singles out one image."""
    for _ in range(tries):
        scenes = rng.sample(pool, n)
        if min(_attribute_counts(scenes).values()) >= 2:
            break
    return scenes


def _draw_scene(rng: random.Random, max_objects: int, palette: Palette = FINE) -> tuple:
    """One scene, uniform over the space _all_scenes would list for `palette` (distinct positions, 1 to
    max_objects objects, each a (colour, shape, size, position[, texture]))."""
    textures = [palette.textures] if palette.textures else []
    objects = list(itertools.product(palette.colours, SHAPES, palette.sizes, *textures))
    names = list(palette.positions)
    counts = [math.comb(len(names), n) * len(objects) ** n for n in range(1, max_objects + 1)]
    n = rng.choices(range(1, max_objects + 1), weights=counts)[0]
    attrs = [rng.choice(objects) for _ in range(n)]
    positions = sorted(rng.sample(range(len(names)), n))
    return rng.choice(list(BACKGROUNDS)), tuple(a[:3] + (names[k],) + a[3:] for a, k in zip(attrs, positions))


def _sample_scenes(rng, n, max_objects, palette, exclude=frozenset()):
    """n distinct scenes outside `exclude`, every attribute value that occurs occurring at least twice."""
    for _ in range(1000):
        scenes = []
        seen = set(exclude)
        while len(scenes) < n:
            scene = _draw_scene(rng, max_objects, palette)
            if scene not in seen:
                seen.add(scene)
                scenes.append(scene)
        if min(_attribute_counts(scenes).values()) >= 2:
            break
    return scenes


def _write_split(out_dir, split, scenes, captions_per_image, per_entry, px, rng):
    entries = []
    for k, scene in enumerate(scenes):
        rel = f"images/{split}_{k:05d}.png"
        draw(scene, px, rng).save(os.path.join(out_dir, rel), compress_level=6)
        caps = [caption(scene, rng) for _ in range(captions_per_image)]
        entries += [{"image": rel, "caption": c} for c in caps] if per_entry else [{"image": rel, "caption": caps}]
    with open(os.path.join(out_dir, f"synthetic_{split}.json"), "w") as f:
        json.dump(entries, f, indent=0)


def generate(out_dir: str, seed: int = 0, train_images: int = 1000, test_images: int = 200,
             val_images: Optional[int] = None, captions_per_train_image: int = 2, captions_per_test_image: int = 5,
             image_px: int = 64, max_objects: int = 1, palette: str = "basic") -> None:
    """Write the dataset to `out_dir` (a new directory). Val and test scenes are each distinct; with the fine
    palette (tens of millions of scenes, sampled) they are also absent from the train split."""
    val_images = test_images if val_images is None else val_images
    rng = random.Random(seed)
    if palette == "fine":
        test = _sample_scenes(rng, test_images, max_objects, FINE)
        val = _sample_scenes(rng, val_images, max_objects, FINE, frozenset(test))
        held_out = set(test) | set(val)
        train = []
        while len(train) < train_images:
            scene = _draw_scene(rng, max_objects, FINE)
            if scene not in held_out:
                train.append(scene)
    else:
        scenes = _all_scenes(max_objects)
        if val_images + test_images > len(scenes):
            raise UserError(f"synthetic: {val_images + test_images} val+test images exceed the {len(scenes)} "
                            "distinct scenes")
        test = _sample_held_out(rng, scenes, test_images)
        taken = set(test)
        val = _sample_held_out(rng, [s for s in scenes if s not in taken], val_images)
        train = [rng.choice(scenes) for _ in range(train_images)]
    os.makedirs(os.path.join(out_dir, "images"))
    _write_split(out_dir, "train", train, captions_per_train_image, True, image_px, rng)
    _write_split(out_dir, "val", val, captions_per_test_image, False, image_px, rng)
    _write_split(out_dir, "test", test, captions_per_test_image, False, image_px, rng)


def ensure_synthetic(root: str, **params: int) -> str:
    """Generate the dataset at `root` unless it is already there with the same parameters."""
    meta = {"generator": "ptm-st synthetic", "version": VERSION, **params}
    meta_path = os.path.join(root, "synthetic_meta.json")
    if os.path.isfile(meta_path):
        found = load_json(meta_path, what="--ann_root")
        if found != meta:
            diff = {k: (found.get(k), v) for k, v in meta.items() if found.get(k) != v}
            raise UserError(f"{root} holds a synthetic dataset generated with other settings {diff} "
                            "(found, wanted); pass another --ann_root/--image_root or delete it")
        return root
    if os.path.isdir(root) and os.listdir(root):
        raise UserError(f"{root} exists and is not a synthetic dataset directory (no synthetic_meta.json)")
    parent = os.path.dirname(os.path.abspath(root))
    ensure_writable_dir(parent, "--ann_root")
    try:
        with atomic_path(root) as tmp:  # an empty `root` is replaced, a non-empty one refused
            generate(tmp, **params)
            save_json(meta, os.path.join(tmp, "synthetic_meta.json"))
    except UserError:
        if not os.path.isfile(meta_path):  # not a concurrent writer that finished first
            raise
    return root


@cli_main
def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data/synthetic", help="output directory (created; must not hold other data)")
    p.add_argument("--seed", type=int, default=0, help="generator seed: same seed, same dataset")
    p.add_argument("--train_images", type=int, default=1000, help="train images")
    p.add_argument("--captions_per_train_image", type=int, default=2, help="train pairs per image")
    p.add_argument("--test_images", type=int, default=200, help="test images (5 captions each)")
    p.add_argument("--val_images", type=int, default=200, help="val images (5 captions each)")
    p.add_argument("--image_px", type=int, default=64, help="side of the written PNGs")
    p.add_argument("--max_objects", type=int, default=1, help="shapes per image, 1 to 5")
    p.add_argument("--palette", choices=list(PALETTES), default="basic",
                   help="basic: the levels synthetic and synthetic_hard; fine: synthetic_paper's (14 colours, 3 sizes, "
                        "9 positions, 3 textures)")
    a = p.parse_args(argv)
    if not 1 <= a.max_objects <= len(PALETTES[a.palette].positions):
        raise UserError(f"--max_objects {a.max_objects}: expected 1 to {len(PALETTES[a.palette].positions)}")
    for flag in ("train_images", "test_images", "val_images", "captions_per_train_image", "image_px"):
        if getattr(a, flag) < 1:
            raise UserError(f"--{flag} {getattr(a, flag)}: expected a positive integer")
    ensure_synthetic(a.out, seed=a.seed, train_images=a.train_images, test_images=a.test_images,
                     val_images=a.val_images, captions_per_train_image=a.captions_per_train_image,
                     image_px=a.image_px, max_objects=a.max_objects,
                     **({"palette": a.palette} if a.palette != "basic" else {}))  # the older levels' meta as it was
    print(f"synthetic dataset in {a.out}")


if __name__ == "__main__":
    main()
