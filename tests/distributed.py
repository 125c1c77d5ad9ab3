"""Small datasets and hub caches in the forms they are distributed in, written by the tests: JPEG photos, Karpathy's
split files, Flickr30k's .token file, img2dataset's webdataset shards and parquet files, and a Hugging Face hub
cache (datasets--owner--name/{blobs,refs,snapshots}) as huggingface_hub lays it out."""
import hashlib
import io
import json
import os
import tarfile

import torch
from PIL import Image

from tests.helpers import WORDS

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black", "grey", "navy"]


def jpeg_bytes(k, size=(40, 30)):
    """A small JPEG that differs per k (a colour and a block whose place moves)."""
    img = Image.new("RGB", size, COLOURS[k % len(COLOURS)])
    img.paste(COLOURS[(k + 3) % len(COLOURS)], (k % 7 * 4, k % 5 * 4, k % 7 * 4 + 10, k % 5 * 4 + 8))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=90)
    return out.getvalue()


def caption(k, j):
    """A caption of words the tiny BERT knows."""
    return f"A {COLOURS[k % len(COLOURS)]} picture with a {WORDS[(k + j) % 40]} {WORDS[(3 * k + j) % 50]}."


def write_photos(folder, names):
    os.makedirs(folder, exist_ok=True)
    for k, name in enumerate(names):
        with open(os.path.join(folder, name), "wb") as f:
            f.write(jpeg_bytes(k))


def karpathy_flickr(tmp, n=24, captions=3):
    """(split file, image folder): n images, 60% train, 10% restval, 15% val, 15% test."""
    images = os.path.join(tmp, "flickr30k-images")
    names = [f"{1000 + k}.jpg" for k in range(n)]
    write_photos(images, names)
    records = [{"filename": name, "imgid": k, "split": _split(k, n), "sentids": [],
                "sentences": [{"raw": caption(k, j), "tokens": []} for j in range(captions)]}
               for k, name in enumerate(names)]
    path = os.path.join(tmp, "dataset_flickr30k.json")
    with open(path, "w") as f:
        json.dump({"dataset": "flickr30k", "images": records}, f)
    return path, images


def _split(k, n):
    return "train" if k < 0.6 * n else "restval" if k < 0.7 * n else "val" if k < 0.85 * n else "test"


def karpathy_coco(tmp, n=20):
    """(split file, folder holding train2014/ and val2014/)."""
    root = os.path.join(tmp, "COCO")
    records = []
    for k in range(n):
        folder = "train2014" if k % 2 == 0 else "val2014"
        name = f"COCO_{folder}_{k:012d}.jpg"
        os.makedirs(os.path.join(root, folder), exist_ok=True)
        with open(os.path.join(root, folder, name), "wb") as f:
            f.write(jpeg_bytes(k))
        records.append({"filepath": folder, "filename": name, "cocoid": k, "split": _split(k, n),
                        "sentences": [{"raw": caption(k, j)} for j in range(5 + k % 2)]})
    path = os.path.join(tmp, "dataset_coco.json")
    with open(path, "w") as f:
        json.dump({"dataset": "coco", "images": records}, f)
    return path, root


def token_file(tmp, n=40, captions=5):
    """(results_20130124.token, image folder)."""
    images = os.path.join(tmp, "flickr30k-images")
    write_photos(images, [f"{2000 + k}.jpg" for k in range(n)])
    path = os.path.join(tmp, "results_20130124.token")
    with open(path, "w") as f:
        for k in range(n):
            for j in range(captions):
                f.write(f"{2000 + k}.jpg#{j}\t{caption(k, j)}\n")
    return path, images


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def webdataset_shards(folder, shards=2, per_shard=20, first=0):
    """img2dataset's webdataset output: <shard>.tar with <key>.jpg, .txt, .json per sample (keys unique)."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for s in range(shards):
        path = os.path.join(folder, f"{s:05d}.tar")
        with tarfile.open(path, "w") as tar:
            for i in range(per_shard):
                k = first + s * per_shard + i
                key = f"{s:05d}{i:04d}"
                _add(tar, f"{key}.jpg", jpeg_bytes(k))
                _add(tar, f"{key}.txt", caption(k, 0).encode())
                _add(tar, f"{key}.json", json.dumps({"key": key, "caption": caption(k, 0), "status": "success"}).encode())
        paths.append(path)
    return paths


def parquet_file(path, n=30, images_inside=True, failed=0):
    """img2dataset's parquet output: key, caption, status and (images_inside) the JPEG bytes in column jpg, else
    the images as <key>.jpg in the folder named like the file; `failed` more rows could not be downloaded."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    stem = os.path.splitext(path)[0]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    keys = [f"{k:09d}" for k in range(n + failed)]
    status = ["success"] * n + ["failed_to_download"] * failed
    columns = {"key": keys, "caption": [caption(k, 1) for k in range(n + failed)], "status": status}
    if images_inside:
        columns["jpg"] = [jpeg_bytes(k) if k < n else None for k in range(n + failed)]
    else:
        write_photos(stem, [f"{key}.jpg" for key in keys[:n]])
    pq.write_table(pa.table(columns), path)
    return path


def hub_cache(cache, repo_id, files, commit="0123456789abcdef0123456789abcdef01234567", repo_type="dataset"):
    """A Hugging Face hub cache holding `files` ({path in the repository: bytes}) at `commit`, checked out as
    refs/main: blobs named by their sha256, snapshot entries as relative symlinks to them."""
    repo = os.path.join(cache, f"{repo_type}s--{repo_id.replace('/', '--')}")
    os.makedirs(os.path.join(repo, "blobs"), exist_ok=True)
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(commit)
    for name, data in files.items():
        digest = hashlib.sha256(data).hexdigest()
        with open(os.path.join(repo, "blobs", digest), "wb") as f:
            f.write(data)
        link = os.path.join(repo, "snapshots", commit, name)
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(os.path.relpath(os.path.join(repo, "blobs", digest), os.path.dirname(link)), link)
    return repo


def expert_file_bytes(layout_shapes, experts, timestamps, seed):
    """torch.save bytes of a buffer file: `experts` trajectories of random tensors of `layout_shapes`."""
    g = torch.Generator().manual_seed(seed)
    obj = [[[torch.randn(s, generator=g) for s in layout_shapes] for _ in range(timestamps)] for _ in range(experts)]
    out = io.BytesIO()
    torch.save(obj, out)
    return out.getvalue()
