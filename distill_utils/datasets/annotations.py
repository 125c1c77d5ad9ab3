"""Image-text retrieval datasets in the BLIP/Karpathy JSON layout (SPEC section 1).

Train file: [{"image": rel_path, "caption": str}, ...] (one entry per pair).
Val/test file: [{"image": rel_path, "caption": [str, ...]}, ...] (one entry per image).
"""
import os
from dataclasses import dataclass
from typing import Iterable, Tuple

import torch

from distill_utils.datasets.captions import pre_caption
from common.errors import UserError
from common.io import load_json


@dataclass(frozen=True)
class Layout:
    train: str
    val: str
    test: str
    image_dir: str


LAYOUTS = {
    "flickr": Layout("flickr30k_train.json", "flickr30k_val.json", "flickr30k_test.json", "Flickr30k"),
    "coco": Layout("coco_karpathy_train.json", "coco_karpathy_val.json", "coco_karpathy_test.json", "COCO"),
    "cc3m": Layout("cc3m_captions_train.json", "cc3m_captions_val.json", "cc3m_captions_test.json", "CC3M"),
    "synthetic": Layout("synthetic_train.json", "synthetic_val.json", "synthetic_test.json", "synthetic"),
    "synthetic_hard": Layout("synthetic_train.json", "synthetic_val.json", "synthetic_test.json", "synthetic_hard"),
    "synthetic_paper": Layout("synthetic_train.json", "synthetic_val.json", "synthetic_test.json", "synthetic_paper"),
}
# Levels of the built-in dataset: generator settings beyond the shared ones. `synthetic_hard` draws two
# shapes per image (captions name both), so retrieval must bind attributes to objects. `synthetic_paper` (issue 21)
# draws two shapes from finer attributes (14 colours, 3 sizes, 9 positions, 3 textures) and is ten times larger,
# for the paper's ratios: 500 pairs are 2.5% of its train split (docs/results.md).
SYNTHETIC_LEVELS = {"synthetic": {"max_objects": 1}, "synthetic_hard": {"max_objects": 2},
                    "synthetic_paper": {"max_objects": 2, "palette": "fine"}}
# each level's default --synthetic_train_images and --synthetic_test_images
LEVEL_SIZES = {"synthetic": (1000, 200), "synthetic_hard": (1000, 200), "synthetic_paper": (10000, 1000)}
REAL_DATASETS = tuple(d for d in LAYOUTS if d not in SYNTHETIC_LEVELS)  # the paper's


def default_roots(dataset: str) -> Tuple[str, str]:
    """(image_root, ann_root) where the paper's README puts the data."""
    if dataset in SYNTHETIC_LEVELS:
        return f"data/{dataset}", f"data/{dataset}"
    return os.path.join("distill_utils", "data", LAYOUTS[dataset].image_dir), os.path.join("data", "Annotation")


@dataclass
class TrainPairs:
    """One entry per (image, caption) pair; several pairs may share an image."""
    name: str
    image_paths: list
    captions: list

    def __len__(self):
        return len(self.captions)


@dataclass
class RetrievalSplit:
    """Images, their captions and the maps between them (txt2img: LongTensor, img2txt: lists)."""
    name: str
    image_paths: list
    texts: list
    txt2img: torch.Tensor
    img2txt: list


def _annotation(dataset, split, ann_root):
    filename = getattr(LAYOUTS[dataset], split)
    path = os.path.join(ann_root, filename)
    entries = load_json(path, what="annotation file")
    if not isinstance(entries, list) or not entries:
        raise UserError(f"annotation file {path}: expected a non-empty JSON list of entries")
    return path, entries


def _check_entry(path, i, entry, caption_type):
    if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
        raise UserError(f"annotation file {path}: entry {i} has no string 'image' field")
    caption = entry.get("caption")
    if caption_type is str and not isinstance(caption, str):
        raise UserError(f"annotation file {path}: entry {i}: 'caption' must be a string in a train file")
    if caption_type is list and not (isinstance(caption, list) and caption and all(isinstance(c, str) for c in caption)):
        raise UserError(f"annotation file {path}: entry {i}: 'caption' must be a non-empty list of strings")


def _caption(path, i, caption, max_words):
    """The normalised caption; an empty one (nothing but spaces and punctuation) is refused, not encoded."""
    text = pre_caption(caption, max_words)
    if not text:
        raise UserError(f"annotation file {path}: entry {i} has an empty caption {caption!r}")
    return text


def load_train_pairs(dataset: str, ann_root: str, image_root: str, max_words: int = 30) -> TrainPairs:
    path, entries = _annotation(dataset, "train", ann_root)
    for i, entry in enumerate(entries):
        _check_entry(path, i, entry, str)
    return TrainPairs(
        name=f"{dataset}_train",
        image_paths=[os.path.join(image_root, e["image"]) for e in entries],
        captions=[_caption(path, i, e["caption"], max_words) for i, e in enumerate(entries)],
    )


def load_retrieval_split(dataset: str, split: str, ann_root: str, image_root: str, max_words: int = 30
                         ) -> RetrievalSplit:
    path, entries = _annotation(dataset, split, ann_root)
    image_paths, texts, txt2img, img2txt = [], [], [], []
    for img_id, entry in enumerate(entries):
        _check_entry(path, img_id, entry, list)
        image_paths.append(os.path.join(image_root, entry["image"]))
        img2txt.append(list(range(len(texts), len(texts) + len(entry["caption"]))))
        for caption in entry["caption"]:
            texts.append(_caption(path, img_id, caption, max_words))
            txt2img.append(img_id)
    return RetrievalSplit(f"{dataset}_{split}", image_paths, texts, torch.tensor(txt2img), img2txt)


def check_images_exist(paths: Iterable[str], flag: str = "--image_root") -> None:
    """Fail early, with one line, if any image file is missing."""
    for path in dict.fromkeys(paths):
        if not os.path.isfile(path):
            raise UserError(f"image file {path} is missing (check {flag})")
