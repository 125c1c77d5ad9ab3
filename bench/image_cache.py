"""What the decoded image cache (prepare_data.py --cache) saves: the data path of an epoch and an expert epoch, with
and without it, side by side in one run.

    python -m bench.image_cache --out results/image_cache            # 600 Flickr-sized JPEGs, the paper's 224 px
    python -m bench.image_cache --images 64 --repeats 1 --out /tmp/ic # smoke test

The images are Flickr-sized (500x375) JPEGs (quality 90) cut from the two photographs scikit-learn ships (random
crops, flips and scales), written with a Karpathy-style split file and turned into a dataset root by
prepare_data.py. Measured, each --repeats times with the settings alternating:
- the data path of one epoch: every image, in a shuffled order in batches of 128, normalised, as an expert
  epoch reads them when the set is streamed (Flickr30k's 29,000 train images at 224 px are 4.4 GB, over
  ImageStore's 2 GB in-memory limit): decoding the JPEGs (in the main process and with --workers processes)
  against reading the cache;
- the start of a script on a set kept in memory: decoding every image once against reading the cache;
- one expert epoch (buffer.py's: SGD on InfoNCE, batches of 128, the short last batch dropped) of
  --encoder at --epoch_size px, streamed, decoding against the cache;
- building the cache (every image decoded once), and prepare_data.py without it (every image's header read, the
  folder linked, the annotation files written).
Timings are medians (seconds); the machine's other load makes single figures noisy, the ratios less so.
Writes OUT/image_cache.md and prints it.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

import prepare_data
from bench.prepare_check import publish
from distill_utils.datasets.annotations import load_train_pairs
from distill_utils.datasets.image_cache import ImageCache, build_cache
from distill_utils.datasets.images import ImageStore
from distill_utils.datasets.loading import TrainData
from distill_utils.method.experts import real_batches
from distill_utils.method.student import Student, make_sgd, train_epoch
from networks.dual_encoder import NetConfig, NetworkFactory


def photographs(n, out_dir, seed=0):
    """n Flickr-sized JPEG files cut from scikit-learn's sample photographs."""
    from sklearn.datasets import load_sample_images
    photos = [Image.fromarray(p) for p in load_sample_images().images]
    rng = np.random.default_rng(seed)
    os.makedirs(out_dir, exist_ok=True)
    names = []
    for k in range(n):
        photo = photos[k % len(photos)]
        w, h = int(rng.integers(240, photo.width)), int(rng.integers(180, photo.height))
        x, y = int(rng.integers(0, photo.width - w + 1)), int(rng.integers(0, photo.height - h + 1))
        img = photo.crop((x, y, x + w, y + h)).resize((500, 375), Image.BICUBIC)
        if k % 3 == 1:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        names.append(f"{k:06d}.jpg")
        img.save(os.path.join(out_dir, names[-1]), "JPEG", quality=90)
    return names


def karpathy_file(names, path):
    """All images train but the last 4 (2 val, 2 test), two captions each."""
    split = lambda k: "train" if k < len(names) - 4 else ("val" if k < len(names) - 2 else "test")
    records = [{"filename": name, "split": split(k), "sentences": [{"raw": f"a photograph number {k}"},
                                                                    {"raw": f"picture {k} of a scene"}]}
               for k, name in enumerate(names)]
    with open(path, "w") as f:
        json.dump({"dataset": "flickr30k", "images": records}, f)


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def data_epoch(store, n, batch=128, seed=0):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    for images, _ in store.batches(order, batch):
        images.sum()


def expert_epoch(pairs, store, encoder, size, seed=0):
    torch.manual_seed(seed)
    feats = torch.randn(len(pairs), 768, generator=torch.Generator().manual_seed(seed))
    net = NetworkFactory(NetConfig(encoder, size, 768, True)).build(seed=seed)
    img, txt = (p.requires_grad_(True) for p in net.initial_params())
    opt = make_sgd(img, txt, 0.1, 0.1, 0.0, 0.0)
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed))
    train_epoch(Student(net, "InfoNCE"), img, txt, opt, real_batches(TrainData(pairs, store, feats), order, 128, "cpu"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=600, help="JPEG files (default: 600)")
    p.add_argument("--image_size", type=int, default=224, help="side of the data path's images (default: 224)")
    p.add_argument("--epoch_size", type=int, default=64, help="side of the expert epoch's images (default: 64)")
    p.add_argument("--encoder", default="convnet_w16_d2", help="image encoder of the expert epoch (default: convnet_w16_d2)")
    p.add_argument("--workers", type=int, default=2, help="decoding processes of the streamed setting (default: 2)")
    p.add_argument("--repeats", type=int, default=3, help="timings per setting, alternating (default: 3)")
    p.add_argument("--out", required=True, help="directory for image_cache.md")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # one core per process: the comparison does not depend on what else runs
    with tempfile.TemporaryDirectory() as tmp:
        names = photographs(args.images, os.path.join(tmp, "jpg"))
        karpathy_file(names, os.path.join(tmp, "dataset_flickr30k.json"))
        root = os.path.join(tmp, "root")
        prepare_s = timed(lambda: prepare_data.main(["flickr", "--karpathy", os.path.join(tmp, "dataset_flickr30k.json"),
                                                     "--images", os.path.join(tmp, "jpg"), "--out", root]))
        pairs = load_train_pairs("flickr", root, root)
        unique = list(dict.fromkeys(os.path.relpath(q, root) for q in pairs.image_paths))
        build_s = timed(lambda: build_cache(root, unique, args.image_size))
        build_cache(root, unique, args.epoch_size)
        cache, small = ImageCache.find(root, args.image_size), ImageCache.find(root, args.epoch_size)
        n, paths, size = len(unique), list(dict.fromkeys(pairs.image_paths)), args.image_size
        settings = {
            "data path, decoding (main process)": lambda: data_epoch(ImageStore(paths, size, in_memory=False), n),
            f"data path, decoding ({args.workers} workers)":
                lambda: data_epoch(ImageStore(paths, size, in_memory=False, workers=args.workers), n),
            "data path, cache": lambda: data_epoch(ImageStore(paths, size, in_memory=False, cache=cache), n),
            "in-memory start, decoding": lambda: ImageStore(paths, size, in_memory=True),
            "in-memory start, cache": lambda: ImageStore(paths, size, in_memory=True, cache=cache),
            f"expert epoch ({len(pairs)} pairs) {args.encoder} {args.epoch_size}px, decoding":
                lambda: expert_epoch(pairs, ImageStore(pairs.image_paths, args.epoch_size, in_memory=False),
                                     args.encoder, args.epoch_size),
            f"expert epoch ({len(pairs)} pairs) {args.encoder} {args.epoch_size}px, cache":
                lambda: expert_epoch(pairs, ImageStore(pairs.image_paths, args.epoch_size, in_memory=False,
                                                       cache=small), args.encoder, args.epoch_size),
        }
        times = {name: [] for name in settings}
        for _ in range(args.repeats):
            for name, fn in settings.items():
                times[name].append(timed(fn))
    med = {name: statistics.median(t) for name, t in times.items()}
    lines = [f"Image cache benchmark: {n} JPEG files of 500x375 (quality 90), data path at {size}px, "
             f"{os.cpu_count()} CPUs, torch threads 1, median of {args.repeats}. "
             f"`python -m bench.image_cache {' '.join(sys.argv[1:] if argv is None else argv)}`", "",
             "| setting | seconds | ms per image (expert epoch: per pair) | vs. cache |", "|---|---|---|---|"]
    for name, t in med.items():
        base = med[name.rsplit(", ", 1)[0] + ", cache"] if not name.startswith("data path") else med["data path, cache"]
        per = len(pairs) if name.startswith("expert") else n
        lines.append(f"| {name} | {t:.2f} | {1000 * t / per:.2f} | {t / base:.1f}x |")
    lines.append(f"| building the {size}px cache (every image decoded once) | {build_s:.2f} | {1000 * build_s / n:.2f} | |")
    lines.append(f"| prepare_data.py flickr without --cache (headers read, folder linked) | {prepare_s:.2f} | "
                 f"{1000 * prepare_s / n:.2f} | |")
    publish(args.out, "image_cache.md", lines)


if __name__ == "__main__":
    main()
