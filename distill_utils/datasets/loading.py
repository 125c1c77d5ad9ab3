"""Everything a run needs from a dataset: train pairs, val/test splits, images and cached text features."""
from dataclasses import dataclass

import torch

from distill_utils.datasets.annotations import SYNTHETIC_LEVELS, check_images_exist, load_retrieval_split, load_train_pairs
from distill_utils.datasets.images import ImageStore
from distill_utils.method.student import RetrievalData
from distill_utils.datasets.builtin import ensure_synthetic
from distill_utils.datasets.text_features import text_features


@dataclass
class TrainData:
    pairs: object  # TrainPairs
    images: ImageStore
    text_features: torch.Tensor

    def __len__(self):
        return len(self.pairs)


def prepare(args):
    """Make sure the dataset is on disk (the synthetic one is generated on first use)."""
    if args.dataset in SYNTHETIC_LEVELS:
        ensure_synthetic(args.ann_root, seed=args.data_seed, train_images=args.synthetic_train_images,
                         test_images=args.synthetic_test_images, val_images=args.synthetic_test_images,
                         captions_per_train_image=2, image_px=64, **SYNTHETIC_LEVELS[args.dataset])


def _device_for_text(args):
    return args.device if args.device.type == "cuda" else torch.device("cpu")


def load_train(args):
    pairs = load_train_pairs(args.dataset, args.ann_root, args.image_root)
    check_images_exist(pairs.image_paths)
    feats = text_features(pairs.captions, args.text_encoder, args.feature_cache, pairs.name, _device_for_text(args))
    return TrainData(pairs, ImageStore(pairs.image_paths, args.image_size, workers=args.workers), feats)


def load_split(args, split):
    data = load_retrieval_split(args.dataset, split, args.ann_root, args.image_root)
    check_images_exist(data.image_paths)
    feats = text_features(data.texts, args.text_encoder, args.feature_cache, data.name, _device_for_text(args))
    return RetrievalData(ImageStore(data.image_paths, args.image_size, workers=args.workers), feats, data.txt2img)
