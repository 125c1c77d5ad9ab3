"""Exclusive, leased claims of work items (expert indices) in a directory that several processes, on one
host or many sharing a filesystem, fill together.

The claim of item n is the file .claim_<n>.<g> with the highest generation g. A claim file is created
complete and exclusively (written aside, then hard-linked into place: the link fails if it exists), and
records its owner (host id, pid, process start time) and a lease that the owner's heartbeat thread
renews. A claim whose lease expired, or whose owner on this host is gone (a dead or reused pid), is
stale: it is taken over by creating generation g + 1, which only one process can do. A process that
finds a higher generation than its own after creating it backs off, so an item never has two owners.
"""
import contextlib
import json
import os
import re
import threading
import time
from typing import Callable, List, Optional, Sequence, Tuple

from common.errors import UserError
from common.io import atomic_path, create_exclusive
from common.procs import alive, host_id, me

LEASE_S = 600.0      # another host's claim is taken over once its owner has not renewed it for this long
RENEW_S = 60.0       # how often an owner renews its lease
WRITE_GRACE_S = 10.0  # an unreadable claim younger than this may still be being written
_NAME = re.compile(r"^\.claim_(\d+)\.(\d+)$")


def claim_path(directory: str, n: int, gen: int) -> str:
    return os.path.join(directory, f".claim_{n}.{gen}")


def generations(directory: str, n: int) -> List[int]:
    """The generations of item n's claim files present now, ascending."""
    found = []
    with contextlib.suppress(OSError):
        for name in os.listdir(directory):
            m = _NAME.match(name)
            if m and int(m.group(1)) == n:
                found.append(int(m.group(2)))
    return sorted(found)


def read_claim(path: str) -> Optional[dict]:
    """The owner record of a claim file; None if it vanished meanwhile; {} if it is not ours to read."""
    try:
        with open(path) as f:
            record = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def is_stale(record: Optional[dict], now: Optional[float] = None, path: Optional[str] = None) -> bool:
    """Expired, malformed (and not just being written), or owned by a process of this host that no longer runs."""
    if not record and path is not None:
        with contextlib.suppress(OSError):
            return time.time() - os.path.getmtime(path) > WRITE_GRACE_S
    try:
        if (now or time.time()) > float(record["expires"]):
            return True
        if record["host"] == host_id():
            return not alive(int(record["pid"]), record.get("start"))
    except (KeyError, TypeError, ValueError):
        return True
    return False


class Claim:
    """Ownership of item n (generation `gen`) with a renewed lease; a context manager that releases it."""

    def __init__(self, directory: str, n: int, gen: int, lease_s: float = LEASE_S, renew_s: float = RENEW_S):
        self.directory, self.n, self.gen = directory, n, gen
        self.path = claim_path(directory, n, gen)
        self.lease_s, self.renew_s = lease_s, renew_s
        self._stop = threading.Event()
        self._thread = None

    def _record(self):
        return json.dumps({**me(), "n": self.n, "gen": self.gen, "expires": time.time() + self.lease_s}) + "\n"

    def create(self) -> bool:
        """Create the claim file exclusively and complete; False if this generation exists already."""
        return create_exclusive(self.path, self._record())

    def _renew(self):
        while not self._stop.wait(self.renew_s):
            if not os.path.exists(self.path):
                return  # released, or taken over after our lease ran out
            with contextlib.suppress(UserError), atomic_path(self.path) as tmp:
                with open(tmp, "w") as f:
                    f.write(self._record())

    def start(self) -> "Claim":
        self._thread = threading.Thread(target=self._renew, name=f"claim-{self.n}", daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with contextlib.suppress(OSError):
            os.remove(self.path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def try_claim(directory: str, n: int, lease_s: float = LEASE_S, renew_s: float = RENEW_S) -> Optional[Claim]:
    """A started Claim of item n, or None while another live process holds it."""
    gens = generations(directory, n)
    gen = 0
    if gens:
        path = claim_path(directory, n, gens[-1])
        record = read_claim(path)
        if record is None or not is_stale(record, path=path):
            return None  # held (or changing hands right now)
        gen = gens[-1] + 1
    claim = Claim(directory, n, gen, lease_s, renew_s)
    if not claim.create():
        return None
    for g in generations(directory, n):
        if g > gen:  # someone took a later generation while we were creating ours: theirs stands
            claim.release()
            return None
        if g < gen:
            with contextlib.suppress(OSError):
                os.remove(claim_path(directory, n, g))
    return claim.start()


def live_claims(directory: str, exclude: Sequence[int] = ()) -> List[int]:
    """Items whose newest claim is live (held by a running owner), other than `exclude`."""
    items = set()
    with contextlib.suppress(OSError):
        for name in os.listdir(directory):
            m = _NAME.match(name)
            if m:
                items.add(int(m.group(1)))
    held = []
    for n in sorted(items - set(exclude)):
        gens = generations(directory, n)
        path = claim_path(directory, n, gens[-1]) if gens else None
        record = read_claim(path) if path else None
        if record is not None and not is_stale(record, path=path):
            held.append(n)
    return held


def claim_next(directory: str, limit: int, done: Callable[[int], bool], lease_s: float = LEASE_S,
               renew_s: float = RENEW_S) -> Tuple[Optional[Claim], List[int]]:
    """(Claim of the lowest item < limit that is neither done(n) nor held, or None; the items others hold)."""
    held = []
    for n in range(limit):
        if done(n):
            continue
        claim = try_claim(directory, n, lease_s, renew_s)
        if claim is None:
            held.append(n)
        elif done(n):  # finished by its previous owner between our check and our claim
            claim.release()
        else:
            return claim, held
    return None, held
