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
from typing import List, Optional

from PIL import Image, ImageDraw

from common.errors import UserError, cli_main
from common.io import atomic_path, ensure_writable_dir, load_json, save_json
from distill_utils.datasets.scene_words import (BACKGROUNDS, FINE, JITTER, PALETTES, SHAPES, Palette, _all_scenes,
                                                _palette, caption)

VERSION = 2


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
