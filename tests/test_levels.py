"""The levels of the built-in dataset: `synthetic` generated exactly as before, `synthetic_hard` with two
shapes per image, `synthetic_paper` with textured shapes at the paper's ratios, each through its own default
directory and text-feature cache name."""
import hashlib
import json
import os
import random

from distill_utils import settings
from distill_utils.config import DataConfig, from_flags
from distill_utils.datasets.loading import prepare
from distill_utils.datasets.annotations import load_train_pairs
from distill_utils.datasets import scene_words
from distill_utils.datasets.builtin import _draw_scene, generate
from distill_utils.datasets.scene_words import BASIC, FINE, SHAPES, caption, content
from tests.helpers import read_all


def _args(dataset, root, train="12", test="10"):
    return settings.parse_args(settings.parser(settings.BUFFER), ["--dataset", dataset, "--ann_root", root, "--device",
                                                                  "cpu", "--synthetic_train_images", train,
                                                                  "--synthetic_test_images", test])


def _digest(root):
    h = hashlib.sha256()
    for name, data in sorted(read_all(root).items()):
        h.update(name.encode() + data)
    return h.hexdigest()


# what the generator wrote for the two older levels before `synthetic_paper` existed (main at 1e2987b)
OLD_DIGESTS = {1: "a3956ad53e5d8a13c087eea8395e3fbb636097e237fb7acf7ef66ad6f36fedb5",
               2: "52bd62f108af20276a0099a61bc4683968c750bbc70a340298089802a03abc6c"}


def test_older_levels_are_byte_for_byte_what_they_were(tmp_path):
    for objects, digest in OLD_DIGESTS.items():
        generate(str(tmp_path / str(objects)), seed=0, train_images=30, test_images=10, val_images=10,
                 max_objects=objects)
        assert _digest(tmp_path / str(objects)) == digest


def test_paper_level_textured_held_out_and_deterministic(tmp_path):
    a = _args("synthetic_paper", str(tmp_path / "paper"), "60", "20")
    prepare(from_flags(DataConfig, a))
    prepare(from_flags(DataConfig, a))  # found, not generated again
    meta = json.load(open(tmp_path / "paper" / "synthetic_meta.json"))
    assert (meta["max_objects"], meta["palette"], meta["train_images"], meta["test_images"]) == (2, "fine", 60, 20)
    pairs = load_train_pairs("synthetic_paper", a.ann_root, a.image_root)
    assert pairs.name == "synthetic_paper_train" and len(pairs) == 120
    by_image = {}
    for path, text in zip(pairs.image_paths, pairs.captions):
        by_image.setdefault(path, []).append(content(text))
    for contents in by_image.values():  # an image's captions name one scene, each some of its attributes
        assert _consistent(contents)
    assert 0.5 < _named_share(pairs.captions) < 0.95  # MENTION = 0.75 of sizes, colours, textures
    train = {_full(c) for c in by_image.values()}
    held_out = []
    for split in ("val", "test"):
        entries = json.load(open(tmp_path / "paper" / f"synthetic_{split}.json"))
        assert len(entries) == 20 and all(len(e["caption"]) == 5 for e in entries)
        contents = [[content(c) for c in e["caption"]] for e in entries]
        assert all(map(_consistent, contents))
        held_out.append({_full(c) for c in contents})
    assert len(held_out[0]) == len(held_out[1]) == 20 and not held_out[0] & held_out[1]
    assert not train & (held_out[0] | held_out[1])
    generate(str(tmp_path / "again"), seed=0, train_images=60, test_images=20, val_images=20, max_objects=2,
             palette="fine")
    assert {k: v for k, v in read_all(tmp_path / "paper").items() if k != "synthetic_meta.json"} == \
        read_all(tmp_path / "again")


def _category(value):
    return next(k for k, vs in CATEGORIES.items() if value in vs)


CATEGORIES = {"colour": FINE.colours, "size": FINE.sizes, "position": FINE.positions, "texture": FINE.textures,
              "shape": SHAPES}


def _consistent(contents):
    """Captions of one image: the same background and object count, each object's shape and position named in
    every caption, and no attribute given two values."""
    if len({(bg, len(objs)) for bg, objs in contents}) != 1:
        return False
    for k in range(len(contents[0][1])):
        named = {}
        for _, objs in contents:
            cats = [_category(v) for v in objs[k]]
            if "shape" not in cats or "position" not in cats or len(set(cats)) != len(cats):
                return False
            for v, c in zip(objs[k], cats):
                named.setdefault(c, set()).add(v)
        if any(len(vs) > 1 for vs in named.values()):
            return False
    return True


def _full(contents):
    """The union of what an image's captions name: its scene, as far as they name it."""
    bg = contents[0][0]
    return bg, tuple(tuple(sorted(set().union(*(objs[k] for _, objs in contents)))) for k in range(len(contents[0][1])))


def _named_share(captions):
    """Share of the optional attributes (size, colour, texture) a caption names, over its objects."""
    named = [sum(_category(v) in ("size", "colour", "texture") for v in obj) / 3 for c in captions
             for obj in content(c)[1]]
    return sum(named) / len(named)


def test_content_names_the_scene_whatever_the_wording(monkeypatch):
    rng = random.Random(3)
    monkeypatch.setattr(scene_words, "MENTION", 1.0)  # every attribute named: the whole scene
    for _ in range(300):
        scene = _draw_scene(rng, 2, rng.choice([BASIC, FINE]))
        bg, objects = scene
        want = (bg, tuple(tuple(sorted(obj)) for obj in objects))
        assert content(caption(scene, rng)) == content(caption(scene, rng)) == want
    monkeypatch.setattr(scene_words, "MENTION", 0.0)  # the fine palette's captions: shapes and positions only
    scene = _draw_scene(rng, 2, FINE)
    assert content(caption(scene, rng)) == (scene[0], tuple(tuple(sorted((o[1], o[3]))) for o in scene[1]))


def test_level_default_sizes():
    paper = settings.parse_args(settings.parser(settings.BUFFER), ["--dataset", "synthetic_paper", "--device", "cpu"])
    easy = settings.parse_args(settings.parser(settings.BUFFER), ["--dataset", "synthetic", "--device", "cpu"])
    assert (paper.synthetic_train_images, paper.synthetic_test_images) == (10000, 1000)
    assert (easy.synthetic_train_images, easy.synthetic_test_images) == (1000, 200)


def test_levels_generate_one_and_two_shapes(tmp_path):
    easy, hard = _args("synthetic", str(tmp_path / "easy")), _args("synthetic_hard", str(tmp_path / "hard"))
    assert (easy.image_size, easy.text_encoder, hard.image_size, hard.text_encoder) == (32, "minilm", 32, "minilm")
    for a in (easy, hard):
        prepare(from_flags(DataConfig, a))
    # `synthetic` is byte for byte what the generator gave before the levels existed (one shape per image)
    generate(str(tmp_path / "direct"), seed=0, train_images=12, test_images=10, val_images=10,
             captions_per_train_image=2, image_px=64, max_objects=1)
    assert {k: v for k, v in read_all(tmp_path / "easy").items() if k != "synthetic_meta.json"} == \
        read_all(tmp_path / "direct")
    meta = json.load(open(tmp_path / "hard" / "synthetic_meta.json"))
    assert meta["max_objects"] == 2
    easy_pairs = load_train_pairs("synthetic", easy.ann_root, easy.image_root)
    hard_pairs = load_train_pairs("synthetic_hard", hard.ann_root, hard.image_root)
    assert hard_pairs.name == "synthetic_hard_train"  # its own text-feature cache entry
    assert sum(" and " in c for c in hard_pairs.captions) >= 20 > sum(" and " in c for c in easy_pairs.captions)
    assert os.path.isdir(tmp_path / "hard" / "images")


def test_default_directory_of_each_level():
    hard = settings.parse_args(settings.parser(settings.BUFFER), ["--dataset", "synthetic_hard", "--device", "cpu"])
    assert hard.ann_root == hard.image_root == "data/synthetic_hard"


def test_level_check_measures_the_four_criteria(tmp_path):
    from bench import level_check
    generate(str(tmp_path), seed=0, train_images=30, test_images=10, val_images=10, max_objects=2, palette="fine")
    curve = {"kind": "curve", "level": "synthetic_paper", "experts": 2,
             "recall": {str(e): v for e, v in enumerate([10, 20, 30, 40, 50, 60, 55, 58, 59, 61], 1)}}
    rows = [{"kind": "row", "level": "synthetic_paper", "n": 500, "table": "main", "order": k, "label": label,
             "mean": {"r_mean": r}} for k, (label, r) in enumerate([("random real pairs", 20.0),
                                                                    ("full train set (60 pairs)", 80.0)])]
    got = {name: passed for name, _, passed in level_check.criteria(str(tmp_path), [curve] + rows, "synthetic_paper")}
    # 60 pairs: 500 is more than 3% of them, and they name fewer than 5,000 contents; epoch 10's 61 tops epoch 6's
    # 60; 20 / 80 = 0.25
    assert list(got.values()) == [False, False, True, True]
    curve["recall"]["10"] = 60.0
    rising, ratio = level_check.criteria(str(tmp_path), [curve], "synthetic_paper")[2:]
    assert rising[2] is False and ratio == ("500 random pairs <= 0.35 of the full set", "not measured", None)
