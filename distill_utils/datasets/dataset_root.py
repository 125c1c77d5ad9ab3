"""A dataset root made from a distributed dataset (prepare_data.py): the annotation files of SPEC section 1 and the
images they name, so that one directory serves as both --image_root and --ann_root.

The root is assembled in a hidden sibling directory and renamed into place only once every image has been
checked and every file written: a refused input leaves nothing behind. Images are linked (a directory link
per image folder) or copied (--copy); images that come inside archives (webdataset shards, parquet) are
written as files."""
import contextlib
import io
import os
import shutil
from dataclasses import dataclass, field

import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from common.errors import UserError
from common.io import clean_temporaries, save_json, temporary_path
from distill_utils.datasets.annotations import LAYOUTS
from distill_utils.datasets.captions import pre_caption

SPLITS = ("train", "val", "test")
HOLDOUT_FRACTION, HOLDOUT_SEED = 0.05, 0


@dataclass
class Item:
    """One image of a converted dataset: its path inside the root, its raw captions and where it came from
    (`origin`, for messages: a file and a record)."""
    rel: str
    captions: list
    origin: str
    source: str = None  # the image file it is linked or copied from (None: written from bytes)


@dataclass
class Splits:
    train: list = field(default_factory=list)
    val: list = field(default_factory=list)
    test: list = field(default_factory=list)

    def counts(self):
        """{split: (images, captions)}."""
        return {s: (len(getattr(self, s)), sum(len(i.captions) for i in getattr(self, s))) for s in SPLITS}

    def describe(self):
        return "; ".join(f"{s} {n:,} images, {c:,} captions" for s, (n, c) in self.counts().items())


def clean_caption(caption, origin):
    """A caption as written to the annotation file (raw, stripped); one that the loaders' normalisation would
    empty is a malformed record."""
    if not isinstance(caption, str) or not pre_caption(caption):
        raise UserError(f"{origin}: malformed record: caption {caption!r} is empty or not a string")
    return caption.strip()


def hold_out(items, what):
    """(train, val, test): a fixed, seeded HOLDOUT_FRACTION of `items` for each of val and test (by their sorted
    paths, so the order the inputs were given in does not matter); says so."""
    items = sorted(items, key=lambda i: i.rel)
    n = round(len(items) * HOLDOUT_FRACTION)
    if n == 0 or len(items) - 2 * n < 1:
        raise UserError(f"{what}: {len(items)} images are too few to hold out {HOLDOUT_FRACTION:.0%} for each of val "
                        "and test")
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(HOLDOUT_SEED)).tolist()
    pick = lambda ks: [items[k] for k in sorted(ks)]
    print(f"{what}: no validation data given: a fixed, seeded {HOLDOUT_FRACTION:.0%} of the images (seed "
          f"{HOLDOUT_SEED}) is held out for each of val and test ({n:,} each)")
    return pick(order[2 * n:]), pick(order[:n]), pick(order[n:2 * n])


def check_image(source, origin):
    """Refuse an image that is missing or whose header does not decode (a file path or the encoded bytes)."""
    if isinstance(source, str) and not os.path.isfile(source):
        raise UserError(f"{origin}: image {source} is missing")
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            img.size  # noqa: B018  (the header is read)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:  # PIL: SyntaxError for some headers
        what = source if isinstance(source, str) else "its image"
        raise UserError(f"{origin}: {what} is not a readable image ({type(err).__name__})") from None


class RootBuilder:
    """The root being written: use as a context manager; on success it is renamed to `out`."""

    def __init__(self, out, flag="--out"):
        self.out, self.flag = os.path.abspath(out), flag
        if os.path.exists(self.out) and not (os.path.isdir(self.out) and not os.listdir(self.out)):
            raise UserError(f"{flag} {out}: already exists and is not an empty directory; choose another or remove it")
        parent = os.path.dirname(self.out)
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as err:
            raise UserError(f"{flag} {out}: cannot create {parent} ({err.strerror})") from None
        clean_temporaries(parent)
        self.path = temporary_path(self.out)

    def __enter__(self):
        os.makedirs(self.path)
        return self

    def __exit__(self, kind, err, tb):
        if kind is None:
            with contextlib.suppress(OSError):
                os.rmdir(self.out)  # an empty directory given as --out
            os.replace(self.path, self.out)
        else:
            shutil.rmtree(self.path, ignore_errors=True)
        return False

    def link_dir(self, name, source_dir):
        """<root>/<name> -> source_dir (absolute), the folder that holds a set of images."""
        os.makedirs(os.path.dirname(os.path.join(self.path, name)), exist_ok=True)
        os.symlink(os.path.abspath(source_dir), os.path.join(self.path, name), target_is_directory=True)

    def copy_image(self, item):
        dst = os.path.join(self.path, item.rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copyfile(item.source, dst)

    def write_image(self, rel, data, origin):
        """Write encoded image bytes as <root>/<rel> once their header decodes."""
        check_image(data, origin)
        dst = os.path.join(self.path, rel)
        if os.path.exists(dst):
            raise UserError(f"{origin}: malformed record: a second image named {rel}")
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with open(dst, "wb") as f:
            f.write(data)

    def write_annotations(self, dataset, splits):
        """The train file (one entry per caption) and the val/test files (one entry per image) of `dataset`."""
        layout = LAYOUTS[dataset]
        train = [{"image": i.rel, "caption": c} for i in splits.train for c in i.captions]
        save_json(train, os.path.join(self.path, layout.train))
        for split in ("val", "test"):
            entries = [{"image": i.rel, "caption": list(i.captions)} for i in getattr(splits, split)]
            save_json(entries, os.path.join(self.path, getattr(layout, split)))


def place_images(root, splits, links, copy):
    """Check every image file of `splits` (present, header readable), then link each folder of `links`
    ({name inside the root: source folder}) or, with `copy`, copy the files. Images written from bytes
    (no source file) are already in the root."""
    items = list({i.rel: i for s in SPLITS for i in getattr(splits, s) if i.source is not None}.values())
    for item in tqdm(items, desc="checking images", leave=False, disable=len(items) < 5000):
        check_image(item.source, item.origin)
    if copy:
        for item in items:
            root.copy_image(item)
    else:
        for name, source_dir in links.items():
            root.link_dir(name, source_dir)


def unique_paths(splits):
    """The images of every split, each once, in split order."""
    return list(dict.fromkeys(i.rel for s in SPLITS for i in getattr(splits, s)))
