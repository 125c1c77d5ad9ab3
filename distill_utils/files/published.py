"""The published PTM-ST buffers and annotations on the Hugging Face Hub, put where the scripts read them.

The dataset repository previsor/PTM-ST is laid out as the authors' README downloads it:
`<dataset>/<image>_<text>/InfoNCE/normal/{img,txt}_replay_buffer_<n>.pt` (into --buffer_path) and
`Annotation/<the annotation files of SPEC section 1>` (into --ann_root). Files come from the local Hugging Face
cache (offline machines, HF_HUB_OFFLINE=1) or, when the hub answers its 3-second probe, are downloaded into it;
they are then linked (or copied) into place, checked by tensor shapes against the network, and their sizes and
sha256 digests are recorded in the buffer's manifest.json."""
import hashlib
import os
import re
import shutil
import sys

from tqdm import tqdm

from common.errors import UserError, one_line
from common.io import clean_temporaries, save_json, temporary_path
from distill_utils.datasets.annotations import LAYOUTS, load_retrieval_split, load_train_pairs
from distill_utils.files import buffers
from networks.dual_encoder import NetConfig, NetworkFactory
from networks.hub import hub_reachable, offline_requested

REPO_ID, REPO_TYPE, LOSS = "previsor/PTM-ST", "dataset", "InfoNCE"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")  # the hub names a cached large file by its content's sha256


def hub_cache():
    from huggingface_hub import constants
    return os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE


def remote_layout(dataset, image_encoder, text_encoder):
    """(the buffer folder in the repository, the annotation files in it)."""
    local = buffers.BufferDir.of_network("", dataset, image_encoder, text_encoder, LOSS).path
    layout = LAYOUTS[dataset]
    return local.strip("/"), [f"Annotation/{name}" for name in (layout.train, layout.val, layout.test)]


def _snapshot(patterns, revision):
    """The local snapshot folder of the repository at `revision` (downloading `patterns` into the cache when the
    hub answers); None when it is not cached and the hub cannot be reached."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    kwargs = dict(repo_type=REPO_TYPE, revision=revision, allow_patterns=patterns, cache_dir=hub_cache())
    try:
        folder = snapshot_download(REPO_ID, local_files_only=True, **kwargs)
        if all(_present(folder, p) for p in patterns):
            return folder
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError):
        pass
    if not hub_reachable():
        return None
    try:
        return snapshot_download(REPO_ID, **kwargs)
    except (HfHubHTTPError, LocalEntryNotFoundError, ValueError, OSError) as err:
        raise UserError(f"cannot fetch {patterns} from the hub repository {REPO_ID} ({one_line(err)[:160]})") from None


def _present(folder, pattern):
    path = os.path.join(folder, pattern.rstrip("/*"))
    return os.path.isdir(path) and bool(os.listdir(path)) if pattern.endswith("/*") else os.path.isfile(path)


def _offline_message(prefix, annotations, target, ann_root):
    why = "HF_HUB_OFFLINE is set" if offline_requested() else "the hub cannot be reached"
    return (f"the published buffers and annotations are not in the Hugging Face cache ({hub_cache()}) and {why}: on "
            f"a machine with network run `hf download {REPO_ID} --repo-type {REPO_TYPE} --include '{prefix}/*' "
            f"{' '.join(annotations)} --local-dir DIR`, put DIR/{prefix}/* in {target} and DIR/Annotation/* in "
            f"{ann_root}, then run this command again to check them and record their digests")


def _place(source, dst, copy):
    if copy:
        shutil.copyfile(source, dst)
    else:
        os.symlink(os.path.realpath(source), dst)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f, tqdm(total=os.path.getsize(path), unit="B", unit_scale=True, leave=False,
                                     desc=f"sha256 {os.path.basename(path)}") as bar:
        while chunk := f.read(1 << 24):
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


def file_records(directory):
    """{file name: {"bytes", "sha256"}} of a buffer directory's expert files; a file the hub cache names by a
    sha256 must have that content."""
    records = {}
    for _, *paths in buffers.BufferDir(directory).pairs():
        for path in paths:
            digest = sha256(path)
            cached_as = os.path.basename(os.path.realpath(path))
            if _SHA256.match(cached_as) and cached_as != digest:
                raise UserError(f"buffer file {path}: its content does not match the hub's sha256 {cached_as} (a "
                                "damaged download): delete it from the Hugging Face cache and fetch it again")
            records[os.path.basename(path)] = {"bytes": os.path.getsize(path), "sha256": digest}
    return records


def check_shapes(directory, image_encoder, image_size, text_width):
    """Check every expert file against the network (image encoder trained, as the published experts were): the
    text width is read from the buffer's text head when the text encoder is not known here. Returns (timestamps
    of the shortest expert, experts)."""
    pairs = buffers.BufferDir(directory).pairs()
    _, length, txt_shapes = buffers.describe_file(pairs[0][2])
    in_buffer = txt_shapes[0][1] if len(txt_shapes[0]) == 2 else None
    if text_width is not None and in_buffer is not None and in_buffer != text_width:
        raise UserError(f"buffer file {pairs[0][2]}: the text head takes {in_buffer}-d features, the text encoder "
                        f"gives {text_width}-d")
    net = NetworkFactory(NetConfig(image_encoder, image_size, text_width or in_buffer, True,
                                   image_pretrained=False)).build(seed=0)
    shortest, _ = buffers.BufferDir(directory).check_network(net)
    return shortest, sum(buffers.describe_file(img)[0] for _, img, _ in pairs)


def fetch_buffers(dataset, image_encoder, text_encoder, image_size, buffer_path, copy, revision, text_width, snap):
    """Link or copy the published experts into --buffer_path (or check those already there); returns a summary."""
    prefix, _ = remote_layout(dataset, image_encoder, text_encoder)
    target = buffers.BufferDir.of_network(buffer_path, dataset, image_encoder, text_encoder, LOSS).path
    manifest = buffers.BufferDir(target).read_manifest() if os.path.isdir(target) else None
    if manifest is not None and "published" not in manifest:
        raise UserError(f"--buffer_path {target}: holds experts trained here (its manifest.json says so), not the "
                        "published ones; use another --buffer_path")
    in_place = os.path.isdir(target) and buffers.BufferDir(target).has_experts()
    if not in_place and os.path.isdir(target) and os.listdir(target):
        raise UserError(f"--buffer_path {target}: exists without expert files; remove it and run this again")
    work = target if in_place else temporary_path(target)
    if not in_place:
        source = os.path.join(snap, prefix)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        clean_temporaries(os.path.dirname(target))
        os.makedirs(work)
    try:
        if not in_place:
            for _, img, txt in buffers.BufferDir(source, flag=f"hub folder {prefix} of {REPO_ID}").pairs():
                for path in (img, txt):
                    _place(path, os.path.join(work, os.path.basename(path)), copy)
        timestamps, experts = check_shapes(work, image_encoder, image_size, text_width)
        records = file_records(work)
        save_json({"format": buffers.FORMAT, "kind": "normal", "dataset": dataset, "image_encoder": image_encoder,
                   "text_encoder": text_encoder, "loss_type": LOSS, "timestamps": timestamps,
                   "published": {"repo": REPO_ID, "path": prefix,  # revision: None for files placed by hand
                                 "revision": None if in_place else os.path.basename(snap)},
                   "files": records, "command": " ".join([os.path.basename(sys.executable)] + sys.argv)},
                  os.path.join(work, buffers.MANIFEST))
        if not in_place:
            os.replace(work, target)
    finally:
        if not in_place:
            shutil.rmtree(work, ignore_errors=True)
    size = sum(r["bytes"] for r in records.values())
    how = "checked in place" if in_place else ("copied" if copy else "linked to the Hugging Face cache")
    return (f"buffers: {experts} experts x {timestamps} timestamps in {target} ({size / 1e9:.2f} GB, {how}); shapes "
            f"fit {image_encoder} at {image_size}px; sizes and sha256 digests in {buffers.MANIFEST}")


def fetch_annotations(dataset, ann_root, copy, snap):
    """Link or copy the published annotation files into --ann_root (those already there are only checked)."""
    layout, placed = LAYOUTS[dataset], []
    os.makedirs(ann_root, exist_ok=True)
    for name in (layout.train, layout.val, layout.test):
        dst = os.path.join(ann_root, name)
        if not os.path.exists(dst):
            src = os.path.join(snap, "Annotation", name)
            if not os.path.isfile(src):
                raise UserError(f"hub repository {REPO_ID}: Annotation/{name} is not in its snapshot {snap}")
            tmp = temporary_path(dst)
            _place(src, tmp, copy)
            os.replace(tmp, dst)
            placed.append(name)
    train = load_train_pairs(dataset, ann_root, "")  # a malformed file is refused here, naming it
    val, test = (load_retrieval_split(dataset, s, ann_root, "") for s in ("val", "test"))
    counts = ", ".join(f"{s.name.split('_')[-1]} {len(s.image_paths):,} images / {len(s.texts):,} captions"
                       for s in (val, test))
    return (f"annotations: {ann_root} ({', '.join(placed) + ' placed' if placed else 'already there'}): train "
            f"{len(set(train.image_paths)):,} images / {len(train):,} captions, {counts}")


def fetch_published(dataset, image_encoder, text_encoder, image_size, buffer_path, ann_root, copy=False,
                    revision="main", text_width=None):
    """Put the published buffers and annotations of `dataset` in place; returns the summary lines."""
    prefix, annotations = remote_layout(dataset, image_encoder, text_encoder)
    target = buffers.BufferDir.of_network(buffer_path, dataset, image_encoder, text_encoder, LOSS).path
    have_buffers = os.path.isdir(target) and buffers.BufferDir(target).has_experts()
    have_annotations = all(os.path.exists(os.path.join(ann_root, os.path.basename(a))) for a in annotations)
    snap = None
    if not (have_buffers and have_annotations):
        snap = _snapshot([f"{prefix}/*", *annotations], revision)
        if snap is None:
            raise UserError(_offline_message(prefix, annotations, target, ann_root))
    return [fetch_buffers(dataset, image_encoder, text_encoder, image_size, buffer_path, copy, revision, text_width,
                          snap), fetch_annotations(dataset, ann_root, copy, snap)]
