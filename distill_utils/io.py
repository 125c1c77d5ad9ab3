"""Atomic writes and safe loads: no half-written outputs, no pickled code execution."""
import contextlib
import json
import os
import pickle
import zipfile

import torch

from .errors import UserError


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it into place only on success."""
    path = os.fspath(path)
    tmp = os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_torch(obj, path):
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def dump_json(obj, path):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def save_json(obj, path):
    with atomic_path(path) as tmp:
        dump_json(obj, tmp)


def load_torch(path, what="file"):
    """torch.load with weights_only=True; any failure becomes a one-line UserError."""
    if not os.path.isfile(path):
        raise UserError(f"{what} {path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{what} {path}: not a readable torch file of tensors/lists ({first[:200]})") from None


def load_json(path, what="file"):
    if not os.path.isfile(path):
        raise UserError(f"{what} {path}: no such file")
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{what} {path}: malformed JSON ({err})") from None


def ensure_writable_dir(path, flag):
    """Create `path` if needed and check we can write there; else a UserError naming `flag`."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise UserError(f"{flag} {path}: cannot create directory ({err.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: directory is not writable")
    return path
