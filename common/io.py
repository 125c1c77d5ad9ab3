"""Atomic writes and safe loads: no half-written outputs, no pickled code execution."""
import contextlib
import errno
import json
import os
import pickle
import re
import shutil
import time
import zipfile

import torch

from .errors import UserError, one_line
from .procs import alive, host_id

# .<name>.tmp<pid>-<host>: a temporary of a writer; the legacy .<name>.tmp<pid> counts as this host's.
_TEMPORARY = re.compile(r"^\..+\.tmp(?P<pid>\d+)(?:-(?P<host>[0-9a-f]{8}))?$")
OTHER_HOST_GRACE_S = 3600  # another machine's temporary is only removed once untouched this long


def temporary_path(path):
    """A hidden sibling of `path` that names its writer (so a dead writer's leftovers can be recognised)."""
    path = os.fspath(path)
    return os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.tmp{os.getpid()}-{host_id()}")


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.remove(path)


def clean_temporaries(directory):
    """Remove the temporary files and directories that killed writers left in `directory`."""
    with contextlib.suppress(OSError):
        for name in os.listdir(directory):
            m = _TEMPORARY.match(name)
            if not m:
                continue
            path = os.path.join(directory, name)
            if m.group("host") in (None, host_id()):
                stale = not alive(int(m.group("pid")))
            else:
                stale = time.time() - os.path.getmtime(path) > OTHER_HOST_GRACE_S
            if stale:
                _remove(path)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it into place only on success. A failed write (a full disk,
    a read-only directory) leaves `path` as it was and is a one-line UserError naming it."""
    path = os.fspath(path)
    tmp = temporary_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or one_line(err)}") from None
    finally:
        _remove(tmp)


def save_torch(obj, path):
    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as err:  # torch's zip writer reports a full disk as a RuntimeError
            raise UserError(f"cannot write {path} (is the disk full? {one_line(err)[:120]})") from None


def json_text(obj):
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def dump_json(obj, path):
    with open(path, "w") as f:
        f.write(json_text(obj))


def create_exclusive(path, text):
    """Create `path` holding `text`, complete or not at all, unless it exists (then False: another writer was
    first). Written beside it and hard-linked into place; a filesystem without hard links gets an exclusive
    create, then the write."""
    tmp = temporary_path(path)
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return True
    finally:
        _remove(tmp)


def save_json(obj, path):
    with atomic_path(path) as tmp:
        dump_json(obj, tmp)


_LOAD_ERRORS = (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError,
                AttributeError, TypeError, KeyError, IndexError)


def load_torch(path, what="file", mmap=False):
    """torch.load with weights_only=True; any failure becomes a one-line UserError. With `mmap` the tensors
    stay on disk until touched (shapes of a large file cost nothing); files of the legacy format are read whole."""
    if not os.path.isfile(path):
        raise UserError(f"{what} {path}: no such file")
    try:
        if mmap and zipfile.is_zipfile(path):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return torch.load(path, map_location="cpu", weights_only=True)
    except _LOAD_ERRORS as err:
        why = ("garbage, or objects other than tensors and lists, which are never unpickled"
               if isinstance(err, pickle.UnpicklingError) else one_line(err)[:200])
        raise UserError(f"{what} {path}: not a readable torch file of tensors/lists ({why})") from None


def load_json(path, what="file"):
    if not os.path.isfile(path):
        raise UserError(f"{what} {path}: no such file")
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise UserError(f"{what} {path}: malformed JSON ({one_line(err)})") from None
    except OSError as err:
        raise UserError(f"{what} {path}: unreadable ({err.strerror})") from None


def load_json_object(path, what="file"):
    obj = load_json(path, what)
    if not isinstance(obj, dict):
        raise UserError(f"{what} {path}: expected a JSON object, found a {type(obj).__name__}")
    return obj


def ensure_writable_dir(path, flag, clean=True):
    """Create `path` if needed, check we can write there (else a UserError naming `flag`) and, with `clean`
    (a directory this program owns), clear the temporaries that killed writers left in it."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{flag} {path}: is a file, expected a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise UserError(f"{flag} {path}: cannot create directory ({err.strerror})") from None
    probe = temporary_path(os.path.join(path, ".write-check"))
    try:
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as err:
        raise UserError(f"{flag} {path}: directory is not writable ({err.strerror})") from None
    if clean:
        clean_temporaries(path)
    return path
