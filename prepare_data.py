"""From the datasets and buffers as they are distributed to what the scripts read, checked before the first run.

    python prepare_data.py flickr --karpathy dataset_flickr30k.json --images flickr30k-images --out data/flickr
    python prepare_data.py flickr --token results_20130124.token --images flickr30k-images --out data/flickr
    python prepare_data.py coco --karpathy dataset_coco.json --images COCO --out data/coco   # COCO/{train,val}2014/
    python prepare_data.py cc3m --shards 'cc3m/{00000..00331}.tar' --out data/cc3m        # img2dataset webdataset
    python prepare_data.py cc3m --parquet 'cc3m/*.parquet' --val_parquet 'cc3m_val/*.parquet' --out data/cc3m
    python prepare_data.py cache --dataset flickr --image_root data/flickr --ann_root data/flickr
    python prepare_data.py buffers --dataset flickr          # the published experts and annotations (Hugging Face)
    python prepare_data.py check --dataset flickr --image_root data/flickr --ann_root data/flickr

The dataset commands write a dataset root (the annotation files of SPEC section 1, with Karpathy's splits,
restval counted as train, and links to the images or, with --copy, copies) that serves as both --image_root
and --ann_root; nothing half-written is left when an input is refused. --cache also writes a decoded,
resized image cache that every script reads instead of decoding JPEGs each epoch. `check` runs, in seconds,
what every script checks when it starts, for the paper's whole recipe (sh/buffer.sh, convexify.py,
sh/distill.sh): data, text encoder, the buffers and their timestamps, free disk for the buffers still to be
written and GPU memory.
"""
import distill_utils.startup  # noqa: F401  (first: Ctrl-C while torch loads is one line, no traceback)
import os
from dataclasses import replace

from common.errors import UserError, cli_main
from distill_utils import cli_args, preflight
from distill_utils.config import DataConfig, from_flags
from distill_utils.datasets import convert
from distill_utils.datasets.annotations import SYNTHETIC_LEVELS, load_retrieval_split, load_train_pairs
from distill_utils.datasets.image_cache import build_cache, cache_bytes
from distill_utils.datasets.loading import prepare
from distill_utils.files.published import REPO_ID, fetch_published
from distill_utils.footprint import check_disk, human_bytes
from distill_utils.paper_recipe import SIZES, paper_recipe
from networks.text_encoders import text_width

REAL = ("flickr", "coco", "cc3m")


def _output_args(p):
    p.add_argument("--out", required=True, help="the dataset root to write (must not exist, or be empty)")
    p.add_argument("--copy", action="store_true", help="copy the image files into the root (default: link their folders)")
    p.add_argument("--cache", type=int, nargs="?", const=224, metavar="SIZE",
                   help="also write the decoded image cache at SIZE px (default SIZE: 224, the paper's)")
    p.add_argument("--workers", type=int, default=0, help="image decoding worker processes for --cache (default: 0)")


def make_parser():
    p = cli_args.Parser(description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, metavar="{flickr,coco,cc3m,cache,buffers,check}")
    g = sub.add_parser("flickr", help="Flickr30k: Karpathy's split file or results_20130124.token, and its images")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--karpathy", help="Karpathy's dataset_flickr30k.json (the paper's splits)")
    src.add_argument("--token", help="Flickr30k's results_20130124.token (no splits: 5%% held out for each of val and test)")
    g.add_argument("--images", required=True, help="the folder holding the Flickr30k .jpg files")
    _output_args(g)
    g = sub.add_parser("coco", help="COCO: Karpathy's dataset_coco.json and train2014/, val2014/")
    g.add_argument("--karpathy", required=True, help="Karpathy's dataset_coco.json")
    g.add_argument("--images", required=True, help="the folder holding train2014/ and val2014/")
    _output_args(g)
    g = sub.add_parser("cc3m", help="CC3M as img2dataset writes it: webdataset shards or parquet files")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--shards", nargs="+", metavar="PATTERN", help="webdataset .tar shards ('dir/{00000..00331}.tar', globs)")
    src.add_argument("--parquet", nargs="+", metavar="FILES", help="parquet files, images inside or in the folder beside each")
    val = g.add_mutually_exclusive_group()
    val.add_argument("--val_shards", nargs="+", metavar="PATTERN",
                     help="shards of the validation data, written as both val and test (default: a fixed, seeded 5%% "
                          "of the pairs is held out for each)")
    val.add_argument("--val_parquet", nargs="+", metavar="FILES", help="parquet files of the validation data, as --val_shards")
    _output_args(g)
    g = sub.add_parser("cache", help="write the decoded image cache of an existing dataset")
    cli_args.add_data_args(g)
    g.set_defaults(seed=0, device="cpu")
    g = sub.add_parser("buffers", help=f"the published experts and annotations from the Hugging Face Hub ({REPO_ID})")
    g.add_argument("--dataset", required=True, choices=REAL, help="whose buffers and annotations")
    g.add_argument("--buffer_path", default="buffer", help="root of the buffers, as buffer.py's (default: buffer)")
    g.add_argument("--ann_root", default="data/Annotation", help="where the annotation files go (default: data/Annotation)")
    g.add_argument("--image_encoder", default="nfnet", help="image encoder of the experts (default: nfnet, the published)")
    g.add_argument("--text_encoder", default="bert", help="text encoder of the experts (default: bert, the published)")
    g.add_argument("--image_size", type=int, default=224, help="image side the experts were trained at (default: 224)")
    g.add_argument("--copy", action="store_true", help="copy the files (default: link them to the Hugging Face cache)")
    g.add_argument("--revision", default="main", help="revision of the hub repository (default: main)")
    g = sub.add_parser("check", help="check a machine against the paper's recipe of a dataset, in seconds")
    cli_args.add_data_args(g)
    g.add_argument("--size", type=int, default=500, choices=SIZES, help="distilled pairs of the recipe (default: 500)")
    g.add_argument("--buffer_path", default="buffer", help="root of the buffers (default: buffer)")
    g.set_defaults(seed=0, device="auto")  # the GPU memory check looks at the GPU this machine would use
    return p


def report(dataset, root, splits, cache_size):
    for split, (images, captions) in splits.counts().items():
        print(f"{dataset} {split}: {images:,} images, {captions:,} captions")
    print(f"wrote {root}: pass --dataset {dataset} --image_root {root} --ann_root {root}")
    if cache_size:
        n = len({i.rel for s in (splits.train, splits.val, splits.test) for i in s})
        print(f"image cache: {root}/image_cache_{cache_size}px ({n:,} images, {human_bytes(cache_bytes(n, cache_size))})")


def run_cache(args):
    args = cli_args.finalize(args)
    data = from_flags(DataConfig, args)
    prepare(data)
    train = load_train_pairs(args.dataset, args.ann_root, args.image_root)
    splits = [load_retrieval_split(args.dataset, s, args.ann_root, args.image_root) for s in ("val", "test")]
    paths = list(dict.fromkeys(p for s in [train, *splits] for p in s.image_paths))
    rel = [os.path.relpath(p, args.image_root) for p in paths]
    check_disk(args.image_root, cache_bytes(len(rel), args.image_size), f"the {args.image_size}px image cache",
               "--image_root")
    out = build_cache(args.image_root, rel, args.image_size, args.workers)
    print(f"image cache: {out} ({len(rel):,} images, {human_bytes(cache_bytes(len(rel), args.image_size))})")


def run_check(args):
    args = cli_args.finalize(args)
    if args.dataset in SYNTHETIC_LEVELS:
        raise UserError(f"--dataset {args.dataset}: the paper's recipes are for {', '.join(REAL)}")
    recipe = replace(paper_recipe(args.dataset, args.size), text_encoder=args.text_encoder, image_size=args.image_size)
    print(f"checking the paper's {args.dataset} {args.size}-pair recipe: {recipe.num_experts} experts x "
          f"{recipe.train_epochs} epochs of {recipe.image_encoder} + {recipe.text_encoder} at {recipe.image_size}px, "
          f"phases {' then '.join(f'convexified_{s}_{e}' for s, e in recipe.windows)}")
    preflight.check_recipe(recipe, from_flags(DataConfig, args), args.buffer_path, args.device)
    print("all checks passed")


@cli_main
def main(argv=None):
    args = make_parser().parse_args(argv)
    if args.command in ("flickr", "coco", "cc3m"):
        if args.cache is not None and not 16 <= args.cache <= 4096:
            raise UserError(f"--cache {args.cache}: expected an image side from 16 to 4096 pixels")
        cli_args.non_negative(args, "workers")
        cli_args.at_most(args, workers=256)
        out = dict(copy=args.copy, cache_size=args.cache, workers=args.workers)
        if args.command == "cc3m":
            splits = convert.convert_cc3m(args.out, args.shards or (), args.parquet or (), args.val_shards or (),
                                          args.val_parquet or (), **out)
        elif args.command == "flickr" and args.token:
            splits = convert.convert_token(args.token, args.images, args.out, **out)
        else:
            splits = convert.convert_karpathy(args.command, args.karpathy, args.images, args.out, **out)
        report(args.command, args.out, splits, args.cache)
    elif args.command == "cache":
        run_cache(args)
    elif args.command == "buffers":
        cli_args.positive(args, "image_size")
        cli_args.at_most(args, image_size=4096)
        for line in fetch_published(args.dataset, args.image_encoder, args.text_encoder, args.image_size,
                                    args.buffer_path, args.ann_root, args.copy, args.revision,
                                    text_width(args.text_encoder)):
            print(line)
    else:
        run_check(args)


if __name__ == "__main__":
    main()
