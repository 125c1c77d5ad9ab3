import os
import re

import pytest

from distill_utils.datasets.annotations import load_retrieval_split, load_train_pairs
from common.errors import UserError
from distill_utils.datasets.builtin import ensure_synthetic, generate
from tests.helpers import read_all

SMALL = dict(train_images=30, test_images=40, val_images=10, image_px=24)


def test_generator_is_deterministic_and_seed_dependent(tmp_path):
    generate(str(tmp_path / "a"), seed=3, **SMALL)
    generate(str(tmp_path / "b"), seed=3, **SMALL)
    generate(str(tmp_path / "c"), seed=4, **SMALL)
    a, b, c = (read_all(tmp_path / x) for x in "abc")
    assert a == b
    assert a.keys() == c.keys() and a != c


def test_layout_loads_through_the_karpathy_loader(tmp_path):
    root = str(tmp_path / "syn")
    generate(root, seed=0, **SMALL)
    train = load_train_pairs("synthetic", root, root)
    test = load_retrieval_split("synthetic", "test", root, root)
    assert len(train) == 60 and all(os.path.isfile(p) for p in train.image_paths)
    assert len(test.image_paths) == 40 and len(test.texts) == 200
    assert all(len(t) == 5 for t in test.img2txt)


def test_no_single_word_identifies_a_test_image(tmp_path):
    root = str(tmp_path / "syn")
    generate(root, seed=1, train_images=10, test_images=200, val_images=20, image_px=16)
    test = load_retrieval_split("synthetic", "test", root, root)
    images_with = {}
    for text, img in zip(test.texts, test.txt2img.tolist()):
        for word in set(re.findall(r"[a-z]+", text)):
            images_with.setdefault(word, set()).add(img)
    assert all(len(imgs) > 1 for imgs in images_with.values()), \
        {w: i for w, i in images_with.items() if len(i) == 1}
    # ...while the whole description (all attributes together) differs between any two test images
    scenes = [_attributes(test.texts[t[0]]) for t in test.img2txt]
    assert len(set(scenes)) == len(scenes)
    assert all(_attributes(test.texts[t]) == scenes[i] for i, ts in enumerate(test.img2txt) for t in ts)


def _attributes(caption):
    """The canonical attribute values a caption names (paraphrases mapped back)."""
    from distill_utils.datasets.scene_words import COLOURS, WORDS
    found = set()
    for value, phrasings in list(WORDS.items()) + [(c, [c]) for c in COLOURS]:
        if any(re.search(rf"\b{re.escape(p)}\b", caption) for p in phrasings):
            found.add(value)
    return frozenset(found)


def test_every_attribute_of_a_small_split_occurs_twice(tmp_path):
    from distill_utils.datasets.builtin import _attribute_counts, _all_scenes, _sample_held_out
    import random
    scenes = _sample_held_out(random.Random(5), _all_scenes(1), 40)
    assert len(set(scenes)) == 40 and min(_attribute_counts(scenes).values()) >= 2


def test_ensure_reuses_identical_and_refuses_different_settings(tmp_path):
    root = str(tmp_path / "syn")
    ensure_synthetic(root, seed=0, **SMALL)
    mtime = os.path.getmtime(os.path.join(root, "synthetic_train.json"))
    ensure_synthetic(root, seed=0, **SMALL)
    assert os.path.getmtime(os.path.join(root, "synthetic_train.json")) == mtime
    with pytest.raises(UserError, match="other settings"):
        ensure_synthetic(root, seed=1, **SMALL)
    assert not [d for d in os.listdir(tmp_path) if d.startswith(".")]  # no temporary leftovers
