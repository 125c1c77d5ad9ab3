"""The levels of the built-in dataset: `synthetic` generated exactly as before, `synthetic_hard` with two
shapes per image, each through its own default directory and text-feature cache name."""
import json
import os

from distill_utils import settings
from distill_utils.config import DataConfig, from_flags
from distill_utils.datasets.loading import prepare
from distill_utils.datasets.annotations import load_train_pairs
from distill_utils.datasets.builtin import generate
from tests.helpers import read_all


def _args(dataset, root):
    return settings.parse_args(settings.parser(settings.BUFFER), ["--dataset", dataset, "--ann_root", root, "--device",
                                                                  "cpu", "--synthetic_train_images", "12",
                                                                  "--synthetic_test_images", "10"])


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
