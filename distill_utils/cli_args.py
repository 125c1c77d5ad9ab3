"""Command-line options shared by the entry scripts (names as in the paper's scripts)."""
import argparse
import math
import os
import re

import torch

from distill_utils.datasets.annotations import LAYOUTS, SYNTHETIC_LEVELS, default_roots
from common.errors import UserError
from distill_utils.evaluation.sources import EVAL_MODES
from distill_utils.evaluation.training import PROTOCOLS
from distill_utils.method.losses import LOSS_TYPES


class Parser(argparse.ArgumentParser):
    """argparse with its errors in one line (no usage block): `error: argument --flag: what was expected`."""

    def __init__(self, **kwargs):
        super().__init__(formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)

    def error(self, message):
        self.exit(2, f"error: {message} (see --help)\n")


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


def add_mode_args(group):
    """--eval_mode and --protocol, shared by evaluate.py and the in-run evaluation of distill_ptm-st.py."""
    group.add_argument("--eval_mode", default="sequential", choices=EVAL_MODES,
                       help="how phased subsets D_1..D_P are trained on: sequential (D_1, then D_2, ...), cumulative "
                            "(phase p on D_1 u ... u D_p) or union (all as one set); joined subsets keep their "
                            "similarity blocks and use the last subset's lrs (default: sequential)")
    group.add_argument("--protocol", default="ours", choices=PROTOCOLS,
                       help="ours: a fresh SGD per phase with its lrs, final epoch reported; authors: the authors' "
                            "evaluation (one SGD with the last subset's lrs, one x0.1 drop at epoch_eval_train//2+1 "
                            "over the whole sequence, epoch_eval_train+1 epochs per subset, their batch sampler, "
                            "scored after local epochs 0, E//10, ..., E of every subset: --eval_points does not "
                            "apply), reporting the best test score over all evaluation points unless --select_on "
                            "val (default: ours)")


def config_of(args):
    """The parsed options as a JSON-able dict (config.json, --out, W&B)."""
    return {k: (str(v) if k == "device" else v) for k, v in vars(args).items()}


SEED_LIMIT = 2**32  # the seeds distill_utils/rng.py derives (seed * 100003 + n, ...) stay within torch's 64-bit range


def _values(args, name):
    value = getattr(args, name)
    return [] if value is None else value if isinstance(value, list) else [value]


def positive(args, *names):
    for name in names:
        for value in _values(args, name):
            if not (math.isfinite(value) and value > 0):
                raise UserError(f"--{name} {value}: expected a finite positive number")


def non_negative(args, *names):
    for name in names:
        for value in _values(args, name):
            if not (math.isfinite(value) and value >= 0):
                raise UserError(f"--{name} {value}: expected a finite number, 0 or more")


INT_LIMIT = 2**31  # no count, size or epoch of a run comes near; beyond it torch overflows with a traceback


def all_finite(args):
    """Refuse NaN or inf in any numeric flag (argparse's float() accepts 'nan' and 'inf'), and integers that
    overflow torch's 64-bit arithmetic."""
    for name in vars(args):
        for value in _values(args, name):
            if isinstance(value, float) and not math.isfinite(value):
                raise UserError(f"--{name} {value}: expected a finite number")
            if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= INT_LIMIT \
                    and "seed" not in name:
                raise UserError(f"--{name} {value}: expected a number below 2**31")


def at_most(args, **limits):
    for name, limit in limits.items():
        for value in _values(args, name):
            if value > limit:
                raise UserError(f"--{name} {value}: expected at most {limit}")


def check_seed(args, *names):
    for name in names:
        for value in _values(args, name):
            if not 0 <= value < SEED_LIMIT:
                raise UserError(f"--{name} {value}: expected an integer in [0, 2**32)")


def check_run_name(name, flag="--name"):
    """A run name is one directory level: no separators, no '..', so it stays inside --runs_dir."""
    if not re.fullmatch(r"[A-Za-z0-9_.+=@-]+", name) or name in (".", ".."):
        raise UserError(f"{flag} {name!r}: expected a plain directory name (letters, digits, _.+=@-; no '/' or '..')")
    return name


def not_a_file(path, flag):
    if path and os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{flag} {path}: is a file, expected a directory")


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
    if args.image_size is None:
        args.image_size = 32 if synthetic else 224
    args.text_encoder = args.text_encoder or ("minilm" if synthetic else "bert")
    if hasattr(args, "image_encoder"):
        args.image_encoder = args.image_encoder or ("convnet" if synthetic else "nfnet")
        positive(args, "out_embedding")
        at_most(args, out_embedding=65536)
    all_finite(args)
    positive(args, "image_size", "synthetic_train_images", "synthetic_test_images")
    at_most(args, image_size=4096, workers=256)
    non_negative(args, "workers")
    check_seed(args, "seed", "data_seed")
    not_a_file(args.feature_cache, "--feature_cache")
    args.device = resolve_device(args.device)
    return args
