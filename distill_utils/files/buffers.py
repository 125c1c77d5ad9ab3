"""Expert trajectory buffers (SPEC section 3), compatible with the published PTM-ST buffers.

<buffer_path>/<dataset>/<image_encoder>_<text_encoder>/<loss_type>/normal/ holds pairs
img_replay_buffer_<n>.pt / txt_replay_buffer_<n>.pt. Each file is a list of experts; an expert
is a list of timestamps; a timestamp is a list of parameter tensors in module.parameters()
order. manifest.json beside them records how they were made; published buffers have none.
"""
import contextlib
import os
import re

import torch

from common.errors import UserError
from common.io import create_exclusive, json_text, load_json_object, load_torch, save_json, save_torch
from distill_utils.rng import pass_order_seed
from networks.names import same_setting, slug

MANIFEST = "manifest.json"
FORMAT = "ptm-st-buffer/1"
_FILE = re.compile(r"^(img|txt)_replay_buffer_(\d+)\.pt$")
# Manifest fields that must agree between writers of one directory and with a reader's network.
IDENTITY_FIELDS = ("dataset", "image_encoder", "text_encoder", "image_size", "image_trainable",
                   "out_embedding", "loss_type", "img_params", "txt_params", "train_epochs")
# Fields that change the experts; compared where the manifest records them (older manifests do not).
TRAINING_FIELDS = ("lr_teacher_img", "lr_teacher_txt", "mom", "l2", "batch_train", "image_pretrained",
                   "image_checkpoint", "text_encoder_weights", "data_seed", "synthetic_train_images")


def buffer_dir(buffer_path, dataset, image_encoder, text_encoder, loss_type):
    return os.path.join(buffer_path, dataset, f"{slug(image_encoder)}_{slug(text_encoder)}", loss_type, "normal")


def pair_paths(directory, n):
    return (os.path.join(directory, f"img_replay_buffer_{n}.pt"), os.path.join(directory, f"txt_replay_buffer_{n}.pt"))


def list_pairs(directory, flag="--buffer_path"):
    """[(n, img_path, txt_path)] sorted by n; refuses an empty directory or unmatched files."""
    if not os.path.isdir(directory):
        raise UserError(f"{flag} {directory}: no such directory")
    found = {"img": set(), "txt": set()}
    for name in os.listdir(directory):
        m = _FILE.match(name)
        if m:
            found[m.group(1)].add(int(m.group(2)))
    if not found["img"] and not found["txt"]:
        raise UserError(f"{flag} {directory}: no img_replay_buffer_<n>.pt / txt_replay_buffer_<n>.pt files")
    unmatched = sorted(found["img"] ^ found["txt"])
    if unmatched:
        n = unmatched[0]
        side = "txt" if n in found["img"] else "img"
        raise UserError(f"{flag} {directory}: {side}_replay_buffer_{n}.pt is missing (img and txt files must pair up)")
    return [(n, *pair_paths(directory, n)) for n in sorted(found["img"])]


def _check_structure(obj, path):
    """A file must be a list of experts, each a list of timestamps, each a list of floating-point tensors
    of one shape set. Only shapes and dtypes are looked at, so a memory-mapped file is not read."""
    bad = UserError(f"buffer file {path}: expected a list of experts, each a list of timestamps of tensor lists")
    if not isinstance(obj, list) or not obj:
        raise bad
    for e, expert in enumerate(obj):
        if not isinstance(expert, list) or not expert:
            raise bad
        shapes = None
        for t, stamp in enumerate(expert):
            if not isinstance(stamp, (list, tuple)) or not stamp or not all(torch.is_tensor(p) for p in stamp):
                raise bad
            if not all(p.is_floating_point() for p in stamp):
                raise UserError(f"buffer file {path}: expert {e} timestamp {t} holds non-floating-point tensors")
            these = [tuple(p.shape) for p in stamp]
            if shapes is not None and these != shapes:
                raise UserError(f"buffer file {path}: expert {e} timestamp {t} has tensor shapes unlike timestamp 0")
            shapes = these
    return obj


def load_experts(path, mmap=False):
    return _check_structure(load_torch(path, what="buffer file", mmap=mmap), path)


def describe_file(path):
    """(experts, timestamps per expert, shapes of one timestamp) of a buffer file, read without loading its
    tensors (memory-mapped): cheap even for 20 experts x 32.8M parameters."""
    experts = load_experts(path, mmap=True)
    length, shapes = len(experts[0]), shapes_of(experts[0][0])
    for e, expert in enumerate(experts):
        if len(expert) != length:
            raise UserError(f"buffer file {path}: expert {e} has {len(expert)} timestamps but expert 0 has {length}")
        if shapes_of(expert[0]) != shapes:
            raise UserError(f"buffer file {path}: expert {e} has tensor shapes unlike expert 0")
    return len(experts), length, shapes


def check_pairs(directory, img_layout, txt_layout, flag="--buffer_path"):
    """Check every pair of a buffer directory before any work: img and txt twins agree and their shapes fit
    the network. Returns (timestamps of the shortest expert, its file)."""
    shortest = None
    for _, img_path, txt_path in list_pairs(directory, flag):
        (n_img, len_img, img_shapes), (n_txt, len_txt, txt_shapes) = describe_file(img_path), describe_file(txt_path)
        if (n_img, len_img) != (n_txt, len_txt):
            raise UserError(f"{flag} {directory}: {os.path.basename(img_path)} holds {n_img} experts of {len_img} "
                            f"timestamps, its txt twin {n_txt} of {len_txt}")
        where = f"{flag} {directory} ({os.path.basename(img_path)})"
        check_shapes(img_shapes, img_layout, "img", where)
        check_shapes(txt_shapes, txt_layout, "txt", where)
        if shortest is None or len_img < shortest[0]:
            shortest = (len_img, img_path)
    return shortest


def shapes_of(stamp):
    return [list(p.shape) for p in stamp]


def check_shapes(found_shapes, layout, side, where):
    """Refuse a trajectory whose parameter shapes differ from the network's, naming both."""
    want = [list(s) for s in layout.shapes]
    if [list(s) for s in found_shapes] != want:
        first = next((i for i, (a, b) in enumerate(zip(found_shapes, want)) if list(a) != b), min(len(found_shapes), len(want)))
        got = list(found_shapes[first]) if first < len(found_shapes) else "nothing"
        exp = f"{layout.names[first]} {want[first]}" if first < len(want) else "nothing"
        raise UserError(f"{where}: {side} parameters do not match the network: buffer has {len(found_shapes)} tensors, "
                        f"network {len(want)}; first difference at #{first}: buffer {got} vs network {exp}")


def read_manifest(directory):
    path = os.path.join(directory, MANIFEST)
    return load_json_object(path, what="buffer manifest") if os.path.isfile(path) else None


def check_manifest(directory, ours, where):
    """Refuse a buffer whose manifest disagrees with `ours` ({field: value}) on a field both record;
    model names are compared as models. A buffer without a manifest (published) passes."""
    manifest = read_manifest(directory) or {}
    for key, value in ours.items():
        if key in manifest and value is not None and not same_setting(key, manifest[key], value):
            raise UserError(f"{where}: experts were trained with {key}={manifest[key]!r}, this run has {value!r}")


def has_experts(directory):
    return any(_FILE.match(name) for name in os.listdir(directory))


def write_manifest(directory, manifest, live_others=False):
    """Create manifest.json (atomically, first writer wins), or check that it agrees on IDENTITY_FIELDS and, where
    it records them, TRAINING_FIELDS. A manifest that no expert file and no live writer (`live_others`) backs
    was left by a run that trained nothing: it is replaced rather than obeyed."""
    path = os.path.join(directory, MANIFEST)
    if os.path.exists(path) and not has_experts(directory) and not live_others:
        save_json(manifest, path)
    elif not os.path.exists(path):
        create_exclusive(path, json_text(manifest))  # the first writer's manifest stands
    found = load_json_object(path, what="buffer manifest")
    diff = [k for k in IDENTITY_FIELDS if found.get(k) != manifest.get(k)]
    diff += [k for k in TRAINING_FIELDS if k in found and found[k] != manifest.get(k)]
    if diff:
        k = diff[0]
        raise UserError(f"--buffer_path: {path} was made with {k}={found.get(k)!r}, this run has {manifest.get(k)!r}; "
                        "experts of different settings would be mixed: use another --buffer_path")
    return found


def save_pair(directory, n, img_experts, txt_experts):
    """Write one pair atomically (txt first, so an img file always has its twin)."""
    img_path, txt_path = pair_paths(directory, n)
    save_torch(txt_experts, txt_path)
    save_torch(img_experts, img_path)


class ExpertStream:
    """Cycles through a buffer's experts, holding one file memory-mapped; the file order is reshuffled each pass.

    An iteration reads two timestamps of an expert, so a file is mapped rather than read: only the pages of the
    timestamps used are read (at the paper's size 2 x 131 MB of an expert's 1.4 GB), and the next file is announced
    to the kernel for read-ahead while this one is in use. Its position is three integers, so a resumed
    distillation continues with the same experts.
    """

    def __init__(self, directory, seed, flag="--buffer_path"):
        self.directory, self.seed = directory, seed
        self.pairs = list_pairs(directory, flag)
        self.pass_idx = self.file_pos = self.expert_pos = 0
        self._loaded, self._counts = None, {}

    def _order(self):
        g = torch.Generator().manual_seed(pass_order_seed(self.seed, self.pass_idx))
        return torch.randperm(len(self.pairs), generator=g).tolist()

    def _file(self):
        n, img_path, txt_path = self.pairs[self._order()[self.file_pos]]
        if self._loaded is None or self._loaded[0] != n:
            img, txt = load_experts(img_path, mmap=True), load_experts(txt_path, mmap=True)
            if len(img) != len(txt):
                raise UserError(f"buffer pair {img_path}: {len(img)} img experts but {len(txt)} txt experts")
            self._loaded = (n, img, txt, img_path)
            self._read_ahead()
        return self._loaded

    def _read_ahead(self):
        """Ask the kernel to start reading the next file of this pass (a hint: nothing waits for it)."""
        if not hasattr(os, "posix_fadvise") or self.file_pos + 1 >= len(self.pairs):
            return
        for path in self.pairs[self._order()[self.file_pos + 1]][1:]:
            with contextlib.suppress(OSError):
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
                finally:
                    os.close(fd)

    def next(self):
        """(img_trajectory, txt_trajectory, source path) of the next expert."""
        _, img, txt, path = self._file()
        out = (img[self.expert_pos], txt[self.expert_pos], path)
        self._advance(len(img))
        return out

    def skip(self):
        """Move past the next expert without loading it (another torchrun rank matches it)."""
        n, img_path, _ = self.pairs[self._order()[self.file_pos]]
        if n not in self._counts:  # read memory-mapped, without the tensors
            self._counts[n] = describe_file(img_path)[0]
        self._advance(self._counts[n])

    def _advance(self, experts_in_file):
        self.expert_pos += 1
        if self.expert_pos == experts_in_file:
            self.expert_pos, self.file_pos = 0, self.file_pos + 1
            if self.file_pos == len(self.pairs):
                self.file_pos, self.pass_idx = 0, self.pass_idx + 1

    def state_dict(self):
        return {"pass_idx": self.pass_idx, "file_pos": self.file_pos, "expert_pos": self.expert_pos,
                "files": [n for n, _, _ in self.pairs]}

    def load_state_dict(self, state):
        files = [n for n, _, _ in self.pairs]
        if state.get("files", files) != files:  # another set of experts would silently change the result
            raise UserError(f"--resume: the buffer {self.directory} holds experts {files}, the checkpoint was made "
                            f"with {state['files']}; resume with the buffer as it was")
        self.pass_idx, self.file_pos, self.expert_pos = state["pass_idx"], state["file_pos"], state["expert_pos"]
