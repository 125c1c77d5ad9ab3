"""Who is writing: this process's identity on a possibly shared filesystem, and whether a recorded writer
still runs. A writer is (host, pid, start time): the host id includes the boot id, so two machines
that share a hostname, or one machine after a reboot, never look alike; the start time tells a
reused pid from the process that recorded it."""
import functools
import hashlib
import os
import socket


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


@functools.lru_cache(maxsize=None)
def host_id():
    """8 hex digits naming this machine for this boot."""
    boot = _read("/proc/sys/kernel/random/boot_id")
    return hashlib.sha1(f"{socket.gethostname()}/{boot}".encode()).hexdigest()[:8]


def start_time(pid):
    """Start time of `pid` in clock ticks since boot (Linux), or None where it cannot be read."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return int(fields[19]) if len(fields) > 19 else None


def me():
    """{"host", "pid", "start"} of this process."""
    return {"host": host_id(), "pid": os.getpid(), "start": start_time(os.getpid())}


def alive(pid, start=None):
    """Whether process `pid` of this host runs and, when `start` is known, is the one that started then."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    except (OverflowError, ValueError):
        return False
    if start is None:
        return True
    now = start_time(pid)
    return now is None or now == start
