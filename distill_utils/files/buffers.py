"""Expert trajectory buffers (SPEC section 3), compatible with the published PTM-ST buffers: the file format, and
`BufferDir`, the one API of a buffer directory (the scripts, bench/ and the tests read and write buffers through it).

<buffer_path>/<dataset>/<image_encoder>_<text_encoder>/<loss_type>/normal/ holds pairs
img_replay_buffer_<n>.pt / txt_replay_buffer_<n>.pt. Each file is a list of experts; an expert
is a list of timestamps; a timestamp is a list of parameter tensors in module.parameters()
order. manifest.json beside them records how they were made; published buffers have none.
The processes that fill a directory (buffer.py) claim its experts (claims.py); a distillation reads one
through files/expert_stream.py.
"""
import os
import re
import time
from typing import List, Optional, Sequence, Tuple

import torch

from common.errors import UserError
from common.io import create_exclusive, json_text, load_json_object, load_torch, save_json, save_torch
from distill_utils.files.claims import Claim, claim_next, live_claims
from networks.dual_encoder import DualEncoder
from networks.names import same_setting, slug
from networks.params import ParamLayout

MANIFEST = "manifest.json"
FORMAT = "ptm-st-buffer/1"
_FILE = re.compile(r"^(img|txt)_replay_buffer_(\d+)\.pt$")
# Manifest fields that must agree between writers of one directory and with a reader's network.
IDENTITY_FIELDS = ("dataset", "image_encoder", "text_encoder", "image_size", "image_trainable",
                   "out_embedding", "loss_type", "img_params", "txt_params", "train_epochs")
# Fields that change the experts; compared where the manifest records them (older manifests do not).
TRAINING_FIELDS = ("lr_teacher_img", "lr_teacher_txt", "mom", "l2", "batch_train", "image_pretrained",
                   "image_checkpoint", "text_encoder_weights", "data_seed", "synthetic_train_images")
POLL_S = 10.0  # how often a process that has nothing left to claim looks whether the others have finished


# --- one buffer file ---

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


def load_experts(path: str, mmap: bool = False) -> list:
    return _check_structure(load_torch(path, what="buffer file", mmap=mmap), path)


def check_experts(experts: list, path: str) -> Tuple[int, int, list]:
    """(experts, timestamps per expert, shapes of one timestamp) of a loaded file, refused if its experts differ in
    length or shapes."""
    length, shapes = len(experts[0]), shapes_of(experts[0][0])
    for e, expert in enumerate(experts):
        if len(expert) != length:
            raise UserError(f"buffer file {path}: expert {e} has {len(expert)} timestamps but expert 0 has {length}")
        if shapes_of(expert[0]) != shapes:
            raise UserError(f"buffer file {path}: expert {e} has tensor shapes unlike expert 0")
    return len(experts), length, shapes


def describe_file(path: str) -> Tuple[int, int, list]:
    """check_experts of a buffer file read without loading its tensors (memory-mapped): cheap even for 20 experts
    x 32.8M parameters."""
    return check_experts(load_experts(path, mmap=True), path)


def shapes_of(stamp: Sequence[torch.Tensor]) -> List[list]:
    return [list(p.shape) for p in stamp]


def check_shapes(found_shapes: Sequence, layout: ParamLayout, side: str, where: str) -> None:
    """Refuse a trajectory whose parameter shapes differ from the network's, naming both."""
    want = [list(s) for s in layout.shapes]
    if [list(s) for s in found_shapes] != want:
        first = next((i for i, (a, b) in enumerate(zip(found_shapes, want)) if list(a) != b), min(len(found_shapes), len(want)))
        got = list(found_shapes[first]) if first < len(found_shapes) else "nothing"
        exp = f"{layout.names[first]} {want[first]}" if first < len(want) else "nothing"
        raise UserError(f"{where}: {side} parameters do not match the network: buffer has {len(found_shapes)} tensors, "
                        f"network {len(want)}; first difference at #{first}: buffer {got} vs network {exp}")



# --- a buffer directory ---

class BufferDir:
    """One buffer directory: its expert files, manifest.json and the claims of the processes that fill it, checked
    against the network of a script that reads it. `flag` names it in errors."""

    def __init__(self, path: str, flag: str = "--buffer_path"):
        self.path, self.flag = path, flag

    @classmethod
    def of_network(cls, root: str, dataset: str, image_encoder: str, text_encoder: str, loss_type: str) -> "BufferDir":
        """<root>/<dataset>/<image_encoder>_<text_encoder>/<loss_type>/normal, where buffer.py writes."""
        return cls(os.path.join(root, dataset, f"{slug(image_encoder)}_{slug(text_encoder)}", loss_type, "normal"))

    def __str__(self):
        return self.path

    def pair_paths(self, n: int) -> Tuple[str, str]:
        return (os.path.join(self.path, f"img_replay_buffer_{n}.pt"),
                os.path.join(self.path, f"txt_replay_buffer_{n}.pt"))

    def pairs(self) -> List[Tuple[int, str, str]]:
        """[(n, img_path, txt_path)] sorted by n; refuses an empty directory or unmatched files."""
        if not os.path.isdir(self.path):
            raise UserError(f"{self.flag} {self.path}: no such directory")
        found = {"img": set(), "txt": set()}
        for name in os.listdir(self.path):
            m = _FILE.match(name)
            if m:
                found[m.group(1)].add(int(m.group(2)))
        if not found["img"] and not found["txt"]:
            raise UserError(f"{self.flag} {self.path}: no img_replay_buffer_<n>.pt / txt_replay_buffer_<n>.pt files")
        unmatched = sorted(found["img"] ^ found["txt"])
        if unmatched:
            n = unmatched[0]
            side = "txt" if n in found["img"] else "img"
            raise UserError(f"{self.flag} {self.path}: {side}_replay_buffer_{n}.pt is missing (img and txt files must "
                            "pair up)")
        return [(n, *self.pair_paths(n)) for n in sorted(found["img"])]

    def has_experts(self) -> bool:
        return any(_FILE.match(name) for name in os.listdir(self.path))

    # --- filling it (buffer.py) ---

    def expert_done(self, n: int) -> bool:
        return os.path.exists(self.pair_paths(n)[0])  # the img file is written last

    def next_expert(self, num_experts: int) -> Optional[Claim]:
        """Claim the next expert to train; waits while others train the last ones. None when none is left."""
        said = False
        while True:
            claim, held = claim_next(self.path, num_experts, self.expert_done)
            if claim is not None or not held:
                return claim
            if not said:
                print(f"waiting for experts {held} that other processes are training", flush=True)
                said = True
            time.sleep(POLL_S)

    def save_pair(self, n: int, img_experts: list, txt_experts: list) -> None:
        """Write one pair atomically (txt first, so an img file always has its twin)."""
        img_path, txt_path = self.pair_paths(n)
        save_torch(txt_experts, txt_path)
        save_torch(img_experts, img_path)

    def write_manifest(self, manifest: dict, holding: Optional[int] = None) -> dict:
        """Create manifest.json (atomically, first writer wins), or check that it agrees on IDENTITY_FIELDS and, where
        it records them, TRAINING_FIELDS. `holding`: the expert this process has claimed. A manifest that no expert
        file and no other live claim backs was left by a run that trained nothing: it is replaced rather than obeyed."""
        path = os.path.join(self.path, MANIFEST)
        live_others = holding is not None and bool(live_claims(self.path, exclude=[holding]))
        if os.path.exists(path) and not self.has_experts() and not live_others:
            save_json(manifest, path)
        elif not os.path.exists(path):
            create_exclusive(path, json_text(manifest))  # the first writer's manifest stands
        found = load_json_object(path, what="buffer manifest")
        diff = [k for k in IDENTITY_FIELDS if found.get(k) != manifest.get(k)]
        diff += [k for k in TRAINING_FIELDS if k in found and found[k] != manifest.get(k)]
        if diff:
            k = diff[0]
            raise UserError(f"--buffer_path: {path} was made with {k}={found.get(k)!r}, this run has "
                            f"{manifest.get(k)!r}; experts of different settings would be mixed: use another "
                            "--buffer_path")
        return found

    def check_complete(self, num_experts: int, timestamps: int) -> None:
        """Every expert file exists and loads with the recorded number of timestamps."""
        for n in range(num_experts):
            for path in self.pair_paths(n):
                _, length, _ = describe_file(path)
                if length != timestamps:
                    raise UserError(f"buffer file {path}: {length} timestamps per expert, this buffer's experts have "
                                    f"{timestamps}; move it away and rerun to retrain expert {n}")

    # --- reading it ---

    def read_manifest(self) -> Optional[dict]:
        path = os.path.join(self.path, MANIFEST)
        return load_json_object(path, what="buffer manifest") if os.path.isfile(path) else None

    def check_identity(self, identity: dict, where: Optional[str] = None) -> None:
        """Refuse a buffer whose manifest disagrees with `identity` (NetworkSpec.identity(), or any {field: value})
        on a field both record; model names are compared as models. A buffer without a manifest (published) passes."""
        manifest = self.read_manifest() or {}
        for key, value in identity.items():
            if key in manifest and value is not None and not same_setting(key, manifest[key], value):
                raise UserError(f"{where or f'{self.flag} {self.path}'}: experts were trained with "
                                f"{key}={manifest[key]!r}, this run has {value!r}")

    def check_network(self, net: DualEncoder) -> Tuple[int, str]:
        """Check every pair before any work: img and txt twins agree and their shapes fit `net` (read without
        loading the tensors). Returns (timestamps of the shortest expert, its file)."""
        shortest = None
        for _, img_path, txt_path in self.pairs():
            (n_img, len_img, img_shapes), (n_txt, len_txt, txt_shapes) = describe_file(img_path), describe_file(txt_path)
            if (n_img, len_img) != (n_txt, len_txt):
                raise UserError(f"{self.flag} {self.path}: {os.path.basename(img_path)} holds {n_img} experts of "
                                f"{len_img} timestamps, its txt twin {n_txt} of {len_txt}")
            where = f"{self.flag} {self.path} ({os.path.basename(img_path)})"
            check_shapes(img_shapes, net.img_layout, "img", where)
            check_shapes(txt_shapes, net.txt_layout, "txt", where)
            if shortest is None or len_img < shortest[0]:
                shortest = (len_img, img_path)
        return shortest

    def final_expert(self, net: DualEncoder, identity: dict) -> Tuple[torch.Tensor, torch.Tensor]:
        """(img_flat, txt_flat): the last timestamp of the first expert, checked against `net` and `identity`; a
        buffer without a manifest (published) is checked by parameter shapes only."""
        self.check_identity(identity)
        _, img_path, txt_path = self.pairs()[0]
        img, txt = load_experts(img_path)[0][-1], load_experts(txt_path)[0][-1]
        check_shapes(shapes_of(img), net.img_layout, "img", f"{self.flag} {img_path}")
        check_shapes(shapes_of(txt), net.txt_layout, "txt", f"{self.flag} {txt_path}")
        img, txt = net.img_layout.flatten(img).float(), net.txt_layout.flatten(txt).float()
        if not (torch.isfinite(img).all() and torch.isfinite(txt).all()):
            raise UserError(f"{self.flag} {img_path} (or its txt twin): the final expert parameters hold NaN or inf")
        return img, txt
