"""Flickr30k and COCO as they are distributed: Karpathy's split files (dataset_flickr30k.json, dataset_coco.json:
{"dataset": ..., "images": [{"filepath"?, "filename", "split", "sentences": [{"raw": ...}, ...]}, ...]}) and
Flickr30k's own caption file (results_20130124.token: `<image>#<n><TAB><caption>` per line, no splits).

Image paths inside the root follow the BLIP annotation files: `flickr30k-images/<file>` for Flickr30k and
`<filepath>/<file>` (train2014/..., val2014/...) for COCO, so the published annotations fit the same root."""
import os

from common.errors import UserError
from common.io import load_json
from distill_utils.datasets.dataset_root import Item, Splits, clean_caption, hold_out

KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}  # restval is train, as usual
KARPATHY_NAMES = {"flickr": "flickr30k", "coco": "coco"}  # the file's "dataset" field
FLICKR_DIR = "flickr30k-images"


def _safe_part(value, origin, field):
    """A file or folder name from a record: a relative path that stays inside the root."""
    if not isinstance(value, str) or not value or os.path.isabs(value) or ".." in value.replace("\\", "/").split("/"):
        raise UserError(f"{origin}: malformed record: '{field}' {value!r} is not a relative file name")
    return value


def read_karpathy(path, dataset, images_dir):
    """(Splits, {folder inside the root: folder under images_dir}) from Karpathy's split file of `dataset`
    (flickr: images_dir holds the images; coco: it holds train2014/ and val2014/)."""
    obj = load_json(path, what="Karpathy split file")
    records = obj.get("images") if isinstance(obj, dict) else None
    if not isinstance(records, list) or not records:
        raise UserError(f"Karpathy split file {path}: expected an object with a non-empty 'images' list")
    if obj.get("dataset") not in (None, KARPATHY_NAMES[dataset]):
        raise UserError(f"Karpathy split file {path}: holds the split of {obj['dataset']!r}, not of "
                        f"{KARPATHY_NAMES[dataset]!r} (use dataset_{KARPATHY_NAMES[dataset]}.json)")
    name, splits, links = os.path.basename(path), Splits(), {}
    for k, rec in enumerate(records):
        origin = f"{name} record {k}"
        if not (isinstance(rec, dict) and rec.get("split") in KARPATHY_SPLITS
                and isinstance(rec.get("sentences"), list) and rec["sentences"]):
            raise UserError(f"{origin}: malformed record: expected 'filename', 'split' (train, restval, val or test) "
                            "and a non-empty 'sentences' list")
        filename = _safe_part(rec.get("filename"), origin, "filename")
        if dataset == "coco":
            folder = _safe_part(rec.get("filepath"), origin, "filepath")
            links[folder] = os.path.join(images_dir, folder)
            rel, source = f"{folder}/{filename}", os.path.join(images_dir, folder, filename)
        else:
            links[FLICKR_DIR] = images_dir
            rel, source = f"{FLICKR_DIR}/{filename}", os.path.join(images_dir, filename)
        captions = [clean_caption(s.get("raw") if isinstance(s, dict) else None, origin) for s in rec["sentences"]]
        getattr(splits, KARPATHY_SPLITS[rec["split"]]).append(Item(rel, captions, origin, source))
    for split in ("train", "val", "test"):
        if not getattr(splits, split):
            raise UserError(f"Karpathy split file {path}: no image is in the {split} split")
    return splits, links


def read_token(path, images_dir):
    """(Splits, links) from Flickr30k's results_20130124.token; it has no splits, so val and test are held out
    (dataset_root.hold_out)."""
    name, captions, first_line = os.path.basename(path), {}, {}
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                head, tab, caption = line.rstrip("\r\n").partition("\t")
                image, sharp, index = head.rpartition("#")
                origin = f"{name} line {n}"
                if not (tab and sharp and index.isdigit()):
                    raise UserError(f"{origin}: malformed record: expected '<image>#<n><TAB><caption>'")
                image = _safe_part(image, origin, "image")
                captions.setdefault(image, []).append(clean_caption(caption, origin))
                first_line.setdefault(image, origin)
    except FileNotFoundError:
        raise UserError(f"caption file {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"caption file {path}: unreadable ({getattr(err, 'strerror', None) or type(err).__name__})") \
            from None
    if not captions:
        raise UserError(f"caption file {path}: no captions in it")
    items = [Item(f"{FLICKR_DIR}/{image}", caps, first_line[image], os.path.join(images_dir, image))
             for image, caps in captions.items()]
    train, val, test = hold_out(items, name)
    return Splits(train, val, test), {FLICKR_DIR: images_dir}
