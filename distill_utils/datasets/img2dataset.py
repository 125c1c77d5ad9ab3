"""CC3M as img2dataset writes it: webdataset tar shards (per sample `<key>.jpg`, `<key>.txt` with the caption and
`<key>.json`), or parquet files (a row per sample: `key`, `caption`, `status`, and the image either as bytes in a
`jpg` column or, with output_format files, as `<key>.jpg` in the folder named like the parquet file).

Shards are read once with the standard library's tarfile: images are written into the root as they come, so
memory holds only the captions. Samples img2dataset could not download (status other than success) are
skipped and counted; anything else missing is a malformed record."""
import glob
import json
import os
import posixpath
import re
import tarfile
import zlib

from tqdm import tqdm

from common.errors import UserError, one_line
from distill_utils.datasets.dataset_root import Item, clean_caption

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
IMAGE_DIR = "images"
_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")
_ALTERNATIVES = re.compile(r"\{([^{}]*,[^{}]*)\}")


def _expand_braces(pattern):
    """webdataset's shard notation: `{00000..00331}` (zero-padded like the first bound) and `{a,b}`."""
    m = _RANGE.search(pattern)
    if m:
        lo, hi = m.group(1), m.group(2)
        width = len(lo) if lo.startswith("0") or len(lo) == len(hi) else 0
        return [p for n in range(int(lo), int(hi) + 1)
                for p in _expand_braces(pattern[:m.start()] + str(n).zfill(width) + pattern[m.end():])]
    m = _ALTERNATIVES.search(pattern)
    if m:
        return [p for alt in m.group(1).split(",") for p in _expand_braces(pattern[:m.start()] + alt + pattern[m.end():])]
    return [pattern]


def expand(patterns, flag):
    """The files named by shell patterns and brace ranges (each file once, in order); refuses one that names
    nothing."""
    files = []
    for pattern in patterns:
        for expanded in _expand_braces(os.path.expanduser(pattern)):
            found = sorted(glob.glob(expanded)) if glob.has_magic(expanded) else [expanded]
            found = [f for f in found if os.path.isfile(f)]
            if not found:
                raise UserError(f"{flag} {pattern}: no file matches {expanded}")
            files += found
    return list(dict.fromkeys(files))


def _shard_samples(path, flag):
    """(key, {extension: bytes}) per sample of a webdataset shard, in order (webdataset's key: the member's path
    up to the first dot of its file name)."""
    try:
        with tarfile.open(path, "r:*") as tar:
            key, files = None, {}
            for member in tar:
                if not member.isfile():
                    continue
                folder, base = posixpath.split(posixpath.normpath(member.name))  # ./000.jpg is 000.jpg
                stem, _, ext = base.partition(".")
                if posixpath.join(folder, stem) != key and key is not None:
                    yield key, files
                    files = {}
                key = posixpath.join(folder, stem)
                files[ext.lower()] = tar.extractfile(member).read()
            if key is not None:
                yield key, files
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise UserError(f"{flag} {path}: unreadable shard ({one_line(err)[:120]})") from None


def _image_ext(available, origin):
    ext = next((e for e in IMAGE_EXTS if e in available), None)
    if ext is None:
        raise UserError(f"{origin}: malformed record: no image ({', '.join('.' + e for e in IMAGE_EXTS)})")
    return ext


def _rel(folder, key, ext, origin):
    if ".." in key.split("/") or key.startswith("/"):
        raise UserError(f"{origin}: malformed record: key {key!r} leaves the dataset root")
    return f"{folder}/{key}.{ext}"


def _shard_caption(files, origin):
    try:
        if "txt" in files:
            return files["txt"].decode("utf-8")
        if "json" in files:
            return json.loads(files["json"]).get("caption")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        pass
    raise UserError(f"{origin}: malformed record: no caption (a UTF-8 .txt, or 'caption' in the .json)")


def _folder(part, path):
    """Where the images of one shard or parquet file go inside the root: images/<part>/<its name>."""
    return f"{IMAGE_DIR}/{part}/{os.path.basename(path).split('.')[0]}"


def read_shards(files, root, flag, part):
    """Items of the webdataset shards `files`, their images written into `root` (a dataset_root.RootBuilder) under
    images/<part>/."""
    items = []
    for path in tqdm(files, desc="shards", leave=False, disable=len(files) < 2):
        folder = _folder(part, path)
        for key, sample in _shard_samples(path, flag):
            origin = f"{flag} {path} sample {key}"
            ext = _image_ext(sample, origin)
            caption = clean_caption(_shard_caption(sample, origin), origin)
            rel = _rel(folder, key, ext, origin)
            root.write_image(rel, sample[ext], origin)
            items.append(Item(rel, [caption], origin))
    return items


def _parquet_rows(path, flag):
    """(row number, {column: value}) of an img2dataset parquet file, read in batches."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"{flag}: reading parquet needs pyarrow (pip install -r requirements.txt)") from None
    try:
        pf = pq.ParquetFile(path)
        columns = set(pf.schema_arrow.names)
        if not {"key", "caption"} <= columns:
            raise UserError(f"{flag} {path}: expected img2dataset's columns 'key' and 'caption', found "
                            f"{sorted(columns)}")
        wanted = [c for c in ("key", "caption", "status", *IMAGE_EXTS) if c in columns]
        row = 0
        for batch in pf.iter_batches(batch_size=512, columns=wanted):
            for record in batch.to_pylist():
                yield row, record
                row += 1
    except UserError:
        raise
    except Exception as err:  # pyarrow's errors (ArrowInvalid, ArrowIOError, ...) share no base class but Exception
        raise UserError(f"{flag} {path}: unreadable parquet file ({one_line(err)[:120]})") from None


def read_parquet(files, root, flag, part):
    """(items, {folder inside the root: image folder}, rows skipped): the samples of img2dataset parquet files;
    images held in the file are written into `root` under images/<part>/, images beside it are linked (or
    copied) later."""
    items, links, skipped = [], {}, 0
    for path in tqdm(files, desc="parquet files", leave=False, disable=len(files) < 2):
        folder = _folder(part, path)
        beside = os.path.join(os.path.dirname(path), os.path.basename(path).split(".")[0])
        for row, record in _parquet_rows(path, flag):
            origin = f"{flag} {path} row {row}"
            if record.get("status", "success") != "success":
                skipped += 1
                continue
            key = record.get("key")
            if not isinstance(key, str) or not key:
                raise UserError(f"{origin}: malformed record: no 'key'")
            caption = clean_caption(record.get("caption"), origin)
            inside = [e for e in IMAGE_EXTS if record.get(e) is not None]
            if inside:
                rel = _rel(folder, key, inside[0], origin)
                root.write_image(rel, record[inside[0]], origin)
                items.append(Item(rel, [caption], origin))
                continue
            ext = next((e for e in IMAGE_EXTS if os.path.isfile(os.path.join(beside, f"{key}.{e}"))), None)
            if ext is None:
                raise UserError(f"{origin}: image of key {key!r} is missing (neither in the file nor as "
                                f"{os.path.join(beside, key)}.jpg)")
            links[folder] = beside
            items.append(Item(_rel(folder, key, ext, origin), [caption], origin, os.path.join(beside, f"{key}.{ext}")))
    return items, links, skipped
