"""A decoded, resized image cache of a dataset: every image once, as uint8 pixels in one memory-mapped file, so
that no epoch (and no start of a script) decodes a JPEG again. Written by `prepare_data.py ... --cache` or
`prepare_data.py cache`; ImageStore reads from it when every image it holds is cached (loading.py finds it).

    <image_root>/image_cache_<S>px/pixels.u8    uint8 [N, 3, S, S]; row k is the k-th path of the index
    <image_root>/image_cache_<S>px/index.json   {"format", "image_size", "paths": relative to the image root,
                                                 "probes": [[path, bytes, mtime_ns], ...] of a few images}

A cache whose probed images changed since it was written is not used (the images are decoded, with a note)."""
import os
import shutil

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from common.errors import UserError
from common.io import load_json_object, save_json, temporary_path
from distill_utils.datasets.images import _PathDataset, _from_workers

FORMAT = "ptm-st-image-cache/1"
PIXELS, INDEX = "pixels.u8", "index.json"
PROBES = 16  # images whose size and modification time are compared when a cache is opened


def cache_dir(image_root, image_size):
    return os.path.join(image_root, f"image_cache_{image_size}px")


def cache_bytes(count, image_size):
    return count * 3 * image_size * image_size


def _probe(image_root, rel):
    st = os.stat(os.path.join(image_root, rel))
    return [rel, st.st_size, st.st_mtime_ns]


def build_cache(image_root, rel_paths, image_size, workers=0):
    """Decode every image of `rel_paths` (relative to image_root) at image_size and write the cache; an older
    cache of that size is replaced only once the new one is complete. Returns its directory."""
    out = cache_dir(image_root, image_size)
    tmp = temporary_path(out)
    os.makedirs(tmp)
    try:
        loader = DataLoader(_PathDataset([os.path.join(image_root, r) for r in rel_paths], image_size), batch_size=64,
                            num_workers=workers)
        with open(os.path.join(tmp, PIXELS), "wb") as f:
            for images, _ in tqdm(_from_workers(loader), total=len(loader), desc=f"image cache {image_size}px",
                               leave=False, disable=len(rel_paths) < 2000):
                f.write(images.numpy().tobytes())  # in order: the loader does not shuffle
        step = max(1, len(rel_paths) // PROBES)
        save_json({"format": FORMAT, "image_size": image_size, "paths": list(rel_paths),
                   "probes": [_probe(image_root, r) for r in rel_paths[::step]]}, os.path.join(tmp, INDEX))
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    except OSError as err:
        raise UserError(f"cannot write the image cache {out}: {err.strerror or err}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


class ImageCache:
    """An opened cache: rows of image paths and their pixels, read from the memory-mapped file."""

    def __init__(self, directory, image_root, index):
        self.directory, self.image_size = directory, index["image_size"]
        n, s = len(index["paths"]), self.image_size
        self.pixels = np.memmap(os.path.join(directory, PIXELS), dtype=np.uint8, mode="r", shape=(n, 3, s, s))
        self._row = {os.path.normpath(os.path.join(image_root, p)): k for k, p in enumerate(index["paths"])}

    @classmethod
    def find(cls, image_root, image_size):
        """The cache of `image_root` at `image_size`, or None when there is none or it is stale."""
        directory = cache_dir(image_root, image_size)
        if not os.path.isfile(os.path.join(directory, INDEX)):
            return None
        index = load_json_object(os.path.join(directory, INDEX), what="image cache index")
        paths = index.get("paths")
        why = None
        if index.get("format") != FORMAT or index.get("image_size") != image_size or not isinstance(paths, list):
            why = "an index of another format or size"
        elif not os.path.isfile(os.path.join(directory, PIXELS)) or \
                os.path.getsize(os.path.join(directory, PIXELS)) != cache_bytes(len(paths), image_size):
            why = f"{PIXELS} is not {len(paths)} images of {image_size}px"
        else:
            for rel, size, mtime in index.get("probes", []):
                path = os.path.join(image_root, rel)
                if not os.path.isfile(path) or _probe(image_root, rel) != [rel, size, mtime]:
                    why = f"{path} changed since the cache was written"
                    break
        if why:
            print(f"note: image cache {directory} is not used ({why}); images are decoded instead: rebuild it with "
                  "`python prepare_data.py cache ...`")
            return None
        return cls(directory, image_root, index)

    def rows(self, paths):
        """LongTensor of the cache rows of `paths`, or None when any of them is not cached."""
        rows = [self._row.get(os.path.normpath(p)) for p in paths]
        return None if any(r is None for r in rows) else torch.tensor(rows, dtype=torch.long)

    def read(self, rows):
        """uint8 [len(rows), 3, S, S] (a copy in memory)."""
        return torch.from_numpy(np.ascontiguousarray(self.pixels[rows.numpy()]))
