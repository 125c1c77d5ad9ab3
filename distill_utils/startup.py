"""Imported first by every entry script: Ctrl-C while the libraries load prints one line and exits 130.
`cli_main` hands SIGINT back to Python's KeyboardInterrupt once the script's own code runs."""
import os
import signal
import sys


def _interrupted_while_loading(signum, frame):
    print("interrupted", file=sys.stderr, flush=True)
    os._exit(130)  # nothing has been written yet


if int(os.environ.get("RANK", "0")) > 0:  # under torchrun, one set of progress bars: rank 0's
    os.environ.setdefault("TQDM_DISABLE", "1")

if "pytest" not in sys.modules and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, _interrupted_while_loading)


def keep_freed_memory():
    """Ask glibc to keep freed memory for reuse instead of returning it to the system. By default every freed
    block above 128 KiB is unmapped (or the heap top trimmed) and the next allocation of it faults its pages in
    again, zeroed; a distillation step allocates and frees hundreds of full-size activations, and on a CPU that
    cost 15% of an iteration (docs/speed.md). The process's resident set then stays at its peak. Linux/glibc
    only; elsewhere nothing changes. Returns whether it applied."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 2**30) and libc.mallopt(m_trim_threshold, 2**31 - 1))


if "pytest" not in sys.modules:
    keep_freed_memory()
