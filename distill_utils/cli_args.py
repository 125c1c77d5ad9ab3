"""Command-line options shared by the entry scripts (names as in the paper's scripts)."""
import argparse

import torch

from .datasets import LAYOUTS, SYNTHETIC_LEVELS, default_roots
from .errors import UserError
from .losses import LOSS_TYPES


def add_data_args(p):
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="synthetic", choices=list(LAYOUTS), help="dataset (default: the built-in synthetic; synthetic_hard: its harder level, two shapes per image)")
    g.add_argument("--image_root", help="image directory (default: data/synthetic, or distill_utils/data/<Flickr30k|COCO|CC3M>)")
    g.add_argument("--ann_root", help="directory of the annotation JSON files (default: data/synthetic, or data/Annotation)")
    g.add_argument("--image_size", type=int, help="image side in pixels (default: 32 for synthetic, 224 otherwise)")
    g.add_argument("--text_encoder", help="bert | distilbert | minilm | <hub name> | <local model dir> | openclip:ARCH[@WEIGHTS] "
                                          "(default: minilm for synthetic, bert otherwise)")
    g.add_argument("--feature_cache", default="cache", help="directory of the cached text features (default: cache)")
    g.add_argument("--workers", type=int, default=0, help="image decoding worker processes (default: 0)")
    g.add_argument("--data_seed", type=int, default=0, help="seed of the synthetic dataset generator (default: 0)")
    g.add_argument("--synthetic_train_images", type=int, default=1000, help="synthetic: train images, 2 captions each")
    g.add_argument("--synthetic_test_images", type=int, default=200, help="synthetic: val and test images, 5 captions each")


def add_network_args(p):
    g = p.add_argument_group("network")
    g.add_argument("--image_encoder", help="convnet[_wW][_dD][_eE][_in|_gn|_nonorm] | nfnet | <timm model name> "
                                           "(default: convnet for synthetic, nfnet otherwise)")
    g.add_argument("--image_pretrained", action=argparse.BooleanOptionalAction, default=None,
                   help="start the image encoder from timm's pretrained weights (default: yes for timm models, no for convnet)")
    g.add_argument("--image_checkpoint", help="local weights file (.pt/.pth/.safetensors) for the image encoder")
    g.add_argument("--image_trainable", action="store_true", help="train the whole image encoder (else a head on a frozen one)")
    g.add_argument("--out_embedding", type=int, default=768, help="embedding dimension when both sides project (default: 768)")


def add_loss_arg(p, default):
    p.add_argument("--loss_type", default=default, choices=LOSS_TYPES, help=f"contrastive loss (default: {default})")


def add_runtime_args(p):
    g = p.add_argument_group("runtime")
    g.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto = cuda when present)")
    g.add_argument("--wandb", default="disabled", choices=["disabled", "offline", "online"],
                   help="Weights & Biases logging (default: disabled)")


def config_of(args):
    """The parsed options as a JSON-able dict (config.json, --out, W&B)."""
    return {k: (str(v) if k == "device" else v) for k, v in vars(args).items()}


def positive(args, *names):
    for name in names:
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise UserError(f"--{name} {value}: expected a positive number")


def non_negative(args, *names):
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 0:
            raise UserError(f"--{name} {value}: expected 0 or more")


def resolve_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    return device


def finalize(args):
    """Fill the dataset-dependent defaults and check the shared options."""
    synthetic = args.dataset in SYNTHETIC_LEVELS
    image_root, ann_root = default_roots(args.dataset)
    args.ann_root = args.ann_root or ann_root
    args.image_root = args.image_root or (args.ann_root if synthetic else image_root)
    args.image_size = args.image_size or (32 if synthetic else 224)
    args.text_encoder = args.text_encoder or ("minilm" if synthetic else "bert")
    if hasattr(args, "image_encoder"):
        args.image_encoder = args.image_encoder or ("convnet" if synthetic else "nfnet")
        positive(args, "out_embedding")
    positive(args, "image_size", "synthetic_train_images", "synthetic_test_images")
    non_negative(args, "workers")
    args.device = resolve_device(args.device)
    return args
