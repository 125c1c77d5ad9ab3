"""Everything a run needs from a dataset: train pairs, val/test splits, images and cached text features.
The functions take a config.DataConfig (where the dataset lies, image size, text encoder, feature cache)."""
import functools
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from distill_utils.datasets.annotations import SYNTHETIC_LEVELS, check_images_exist, load_retrieval_split, load_train_pairs
from distill_utils.datasets.image_cache import INDEX, ImageCache, cache_dir
from distill_utils.datasets.images import ImageStore
from distill_utils.method.student import RetrievalData
from distill_utils.datasets.builtin import ensure_synthetic
from distill_utils.datasets.text_features import text_features

if TYPE_CHECKING:  # config.py imports the settings table, which imports this package's neighbours
    from distill_utils.config import DataConfig


@dataclass
class TrainData:
    pairs: object  # TrainPairs
    images: ImageStore
    text_features: torch.Tensor

    def __len__(self):
        return len(self.pairs)


def prepare(data: "DataConfig") -> None:
    """Make sure the dataset is on disk (the synthetic one is generated on first use)."""
    if data.dataset in SYNTHETIC_LEVELS:
        ensure_synthetic(data.ann_root, seed=data.data_seed, train_images=data.synthetic_train_images,
                         test_images=data.synthetic_test_images, val_images=data.synthetic_test_images,
                         captions_per_train_image=2, image_px=64, **SYNTHETIC_LEVELS[data.dataset])


def _device_for_text(data):
    return data.device if data.device.type == "cuda" else torch.device("cpu")


def _images(data, paths):
    """The images of `paths`, from the dataset's decoded image cache (prepare_data.py --cache) where it has one."""
    index = os.path.join(cache_dir(data.image_root, data.image_size), INDEX)
    version = os.stat(index).st_mtime_ns if os.path.isfile(index) else None
    cache = _open_cache(data.image_root, data.image_size, version) if version else None
    return ImageStore(paths, data.image_size, workers=data.workers, cache=cache)


@functools.lru_cache(maxsize=4)
def _open_cache(image_root, image_size, version):  # the train and test splits share one opened cache
    return ImageCache.find(image_root, image_size)


def load_train(data: "DataConfig") -> TrainData:
    pairs = load_train_pairs(data.dataset, data.ann_root, data.image_root)
    check_images_exist(pairs.image_paths)
    feats = text_features(pairs.captions, data.text_encoder, data.feature_cache, pairs.name, _device_for_text(data))
    return TrainData(pairs, _images(data, pairs.image_paths), feats)


def load_split(data: "DataConfig", split: str) -> RetrievalData:
    ann = load_retrieval_split(data.dataset, split, data.ann_root, data.image_root)
    check_images_exist(ann.image_paths)
    feats = text_features(ann.texts, data.text_encoder, data.feature_cache, ann.name, _device_for_text(data))
    return RetrievalData(_images(data, ann.image_paths), feats, ann.txt2img)
