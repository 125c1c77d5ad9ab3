"""prepare_data.py's conversions: a distributed dataset (karpathy.py, img2dataset.py) -> a dataset root
(dataset_root.py), with the optional decoded image cache (image_cache.py). Each returns the Splits it wrote."""
import os

from common.errors import UserError
from distill_utils import footprint
from distill_utils.datasets import img2dataset, karpathy
from distill_utils.datasets.dataset_root import RootBuilder, Splits, hold_out, place_images, unique_paths
from distill_utils.datasets.image_cache import build_cache, cache_bytes


def _finish(root, dataset, splits, links, copy, cache_size, workers):
    """Check and place the images, write the annotation files and (cache_size) the image cache, inside `root`."""
    if copy:
        sources = {i.rel: i.source for s in (splits.train, splits.val, splits.test) for i in s if i.source}
        footprint.check_disk(root.out, sum(os.path.getsize(p) for p in sources.values() if os.path.isfile(p)),
                             "the copied images", root.flag)
    place_images(root, splits, links, copy)
    root.write_annotations(dataset, splits)
    if cache_size:
        paths = unique_paths(splits)
        footprint.check_disk(root.out, cache_bytes(len(paths), cache_size), f"the {cache_size}px image cache", "--cache")
        build_cache(root.path, paths, cache_size, workers)
    return splits


def _images_dir(images):
    if not os.path.isdir(images):
        raise UserError(f"--images {images}: no such directory")
    return os.path.abspath(images)


def convert_karpathy(dataset, split_file, images, out, copy=False, cache_size=None, workers=0):
    """Flickr30k or COCO from Karpathy's split file and the image folder."""
    splits, links = karpathy.read_karpathy(split_file, dataset, _images_dir(images))
    with RootBuilder(out) as root:
        return _finish(root, dataset, splits, links, copy, cache_size, workers)


def convert_token(token_file, images, out, copy=False, cache_size=None, workers=0):
    """Flickr30k from its results_20130124.token (no splits: val and test are held out) and the image folder."""
    splits, links = karpathy.read_token(token_file, _images_dir(images))
    print("note: these val/test splits are not Karpathy's, so test scores are not comparable with the paper's "
          "(give --karpathy dataset_flickr30k.json for those)")
    with RootBuilder(out) as root:
        return _finish(root, "flickr", splits, links, copy, cache_size, workers)


def convert_cc3m(out, shards=(), parquet=(), val_shards=(), val_parquet=(), copy=False, cache_size=None, workers=0):
    """CC3M from img2dataset's webdataset shards or parquet files; the --val_* files are both val and test, else
    val and test are held out of the rest."""
    with RootBuilder(out) as root:
        links, skipped = {}, 0

        def read(patterns, files_flag, kind, part):
            nonlocal skipped
            files = img2dataset.expand(patterns, files_flag)
            if kind == "shards":
                return img2dataset.read_shards(files, root, files_flag, part)
            items, more_links, more_skipped = img2dataset.read_parquet(files, root, files_flag, part)
            links.update(more_links)
            skipped += more_skipped
            return items

        items = read(shards, "--shards", "shards", "train") if shards else read(parquet, "--parquet", "parquet", "train")
        if val_shards or val_parquet:
            held = read(val_shards, "--val_shards", "shards", "val") if val_shards else \
                read(val_parquet, "--val_parquet", "parquet", "val")
            splits = Splits(items, held, held)
            print("cc3m: val and test are the same pairs (the given validation files): choosing an epoch on val "
                  "chooses it on test")
        else:
            splits = Splits(*hold_out(items, "cc3m"))
        if skipped:
            print(f"cc3m: {skipped:,} rows img2dataset could not download (status other than success) skipped")
        return _finish(root, "cc3m", splits, links, copy, cache_size, workers)
