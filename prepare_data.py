"""From the datasets and buffers as they are distributed to what the scripts read, checked before the first run.

    python prepare_data.py flickr --karpathy dataset_flickr30k.json --images flickr30k-images --out data/flickr
    python prepare_data.py flickr --token results_20130124.token --images flickr30k-images --out data/flickr
    python prepare_data.py coco --karpathy dataset_coco.json --images COCO --out data/coco   # COCO/{train,val}2014/
    python prepare_data.py cc3m --shards 'cc3m/{00000..00331}.tar' --out data/cc3m        # img2dataset webdataset
    python prepare_data.py cc3m --parquet 'cc3m/*.parquet' --val_parquet 'cc3m_val/*.parquet' --out data/cc3m
    python prepare_data.py cache --dataset flickr --image_root data/flickr --ann_root data/flickr
    python prepare_data.py buffers --dataset flickr          # the published experts and annotations (Hugging Face)
    python prepare_data.py check --dataset flickr --image_root data/flickr --ann_root data/flickr
    python prepare_data.py encoder --normal_dir buffer/synthetic/convnet_minilm/InfoNCE/normal --out encoders/synthetic.pt

The dataset commands write a dataset root (the annotation files of SPEC section 1, with Karpathy's splits,
restval counted as train, and links to the images or, with --copy, copies) that serves as both --image_root
and --ann_root; nothing half-written is left when an input is refused. --cache also writes a decoded,
resized image cache that every script reads instead of decoding JPEGs each epoch. `check` runs, in seconds,
what every script checks when it starts, for the paper's whole recipe (sh/buffer.sh, convexify.py,
sh/distill.sh): data, text encoder, the buffers and their timestamps, free disk for the buffers still to be
written and GPU memory. `encoder` writes a full-encoder expert's image encoder as a checkpoint: the frozen,
pretrained encoder of symmetric projection trajectory matching on the built-in levels (--image_checkpoint).
"""
import distill_utils.startup  # noqa: F401  (first: Ctrl-C while torch loads is one line, no traceback)
import argparse
import os
from dataclasses import replace

import torch

from common.errors import UserError, cli_main
from distill_utils import cli_args, preflight, settings
from distill_utils.config import DataConfig, from_flags
from distill_utils.datasets import convert
from distill_utils.datasets.annotations import REAL_DATASETS, SYNTHETIC_LEVELS, load_retrieval_split, load_train_pairs
from distill_utils.datasets.image_cache import build_cache, cache_bytes
from distill_utils.datasets.loading import prepare
from distill_utils.files.encoder_export import export_encoder
from distill_utils.files.published import REPO_ID, fetch_published
from distill_utils.footprint import check_disk, human_bytes
from distill_utils.paper_recipe import paper_recipe
from networks.text_encoders import text_width

COMMANDS = {  # command: (its script in settings.TABLE, its --help line)
    "flickr": (settings.PREPARE_FLICKR, "Flickr30k: Karpathy's split file or results_20130124.token, and its images"),
    "coco": (settings.PREPARE_COCO, "COCO: Karpathy's dataset_coco.json and train2014/, val2014/"),
    "cc3m": (settings.PREPARE_CC3M, "CC3M as img2dataset writes it: webdataset shards or parquet files"),
    "cache": (settings.PREPARE_CACHE, "write the decoded image cache of an existing dataset"),
    "buffers": (settings.PREPARE_BUFFERS,
                f"the published experts and annotations from the Hugging Face Hub ({REPO_ID})"),
    "check": (settings.PREPARE_CHECK, "check a machine against the paper's recipe of a dataset, in seconds"),
    "encoder": (settings.PREPARE_ENCODER, "an expert's trained image encoder as a checkpoint for --image_checkpoint"),
}


def make_parser():
    return settings.command_parser(COMMANDS, __doc__)


def data_config(args: argparse.Namespace, device: torch.device) -> DataConfig:
    """The data settings of `args` on `device` (the commands take no --device)."""
    return from_flags(DataConfig, argparse.Namespace(**vars(args), device=device))


def report(dataset, root, splits, cache_size):
    for split, (images, captions) in splits.counts().items():
        print(f"{dataset} {split}: {images:,} images, {captions:,} captions")
    print(f"wrote {root}: pass --dataset {dataset} --image_root {root} --ann_root {root}")
    if cache_size:
        n = len({i.rel for s in (splits.train, splits.val, splits.test) for i in s})
        print(f"image cache: {root}/image_cache_{cache_size}px ({n:,} images, {human_bytes(cache_bytes(n, cache_size))})")


def run_convert(args):
    out = dict(copy=args.copy, cache_size=args.cache, workers=args.workers)
    if args.command == "cc3m":
        splits = convert.convert_cc3m(args.out, args.shards or (), args.parquet or (), args.val_shards or (),
                                      args.val_parquet or (), **out)
    elif args.command == "flickr" and args.token:
        splits = convert.convert_token(args.token, args.images, args.out, **out)
    else:
        splits = convert.convert_karpathy(args.command, args.karpathy, args.images, args.out, **out)
    report(args.command, args.out, splits, args.cache)


def run_cache(args):
    prepare(data_config(args, torch.device("cpu")))
    train = load_train_pairs(args.dataset, args.ann_root, args.image_root)
    splits = [load_retrieval_split(args.dataset, s, args.ann_root, args.image_root) for s in ("val", "test")]
    paths = list(dict.fromkeys(p for s in [train, *splits] for p in s.image_paths))
    rel = [os.path.relpath(p, args.image_root) for p in paths]
    check_disk(args.image_root, cache_bytes(len(rel), args.image_size), f"the {args.image_size}px image cache",
               "--image_root")
    out = build_cache(args.image_root, rel, args.image_size, args.workers)
    print(f"image cache: {out} ({len(rel):,} images, {human_bytes(cache_bytes(len(rel), args.image_size))})")


def run_buffers(args):
    for line in fetch_published(args.dataset, args.image_encoder, args.text_encoder, args.image_size,
                                args.buffer_path, args.ann_root, args.copy, args.revision,
                                text_width(args.text_encoder)):
        print(line)


def run_check(args):
    if args.dataset in SYNTHETIC_LEVELS:
        raise UserError(f"--dataset {args.dataset}: the paper's recipes are for {', '.join(REAL_DATASETS)}")
    recipe = replace(paper_recipe(args.dataset, args.size), text_encoder=args.text_encoder, image_size=args.image_size)
    print(f"checking the paper's {args.dataset} {args.size}-pair recipe: {recipe.num_experts} experts x "
          f"{recipe.train_epochs} epochs of {recipe.image_encoder} + {recipe.text_encoder} at {recipe.image_size}px, "
          f"phases {' then '.join(f'convexified_{s}_{e}' for s, e in recipe.windows)}")
    device = cli_args.resolve_device("auto")  # the GPU memory check looks at the GPU this machine would use
    preflight.check_recipe(recipe, data_config(args, device), args.buffer_path, device)
    print("all checks passed")


def run_encoder(args):
    print(export_encoder(args.normal_dir, args.out, args.expert, args.epoch))


RUN = {"flickr": run_convert, "coco": run_convert, "cc3m": run_convert, "cache": run_cache, "buffers": run_buffers,
       "check": run_check, "encoder": run_encoder}


@cli_main
def main(argv=None):
    args = settings.parse_args(make_parser(), argv)
    RUN[args.command](args)


if __name__ == "__main__":
    main()
