"""What checking a buffer file before a run costs: the memory-mapped shape check of
`BufferDir.check_network` (buffers.describe_file) against loading the file.

    python -m bench.buffer_check                       # one expert x 11 timestamps x 32.8M parameters (1.4 GB)
    python -m bench.buffer_check --params 1e6 --timestamps 3
"""
import argparse
import os
import tempfile
import time

import torch

from distill_utils.files.buffers import describe_file


def write_file(path, params, timestamps, tensors):
    sizes = [params // tensors] * (tensors - 1) + [params - params // tensors * (tensors - 1)]
    torch.save([[[torch.zeros(s) for s in sizes] for _ in range(timestamps)]], path)  # an expert as buffer.py writes it


def drop_page_cache():
    """Make the next read come from disk, as for a buffer not read lately (needs root; False if not allowed)."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def timed(fn):
    cold = drop_page_cache()
    tick = time.perf_counter()
    fn()
    return time.perf_counter() - tick, "from disk" if cold else "page cache may be warm"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", type=float, default=32.8e6, help="parameters per timestamp (default: NFNet-l0's 32.8M)")
    p.add_argument("--timestamps", type=int, default=11, help="timestamps per expert (default: 11)")
    p.add_argument("--tensors", type=int, default=200, help="parameter tensors per timestamp (default: 200)")
    p.add_argument("--dir", default=tempfile.gettempdir(), help="where to write the file (default: the temp dir)")
    a = p.parse_args()
    path = os.path.join(a.dir, f"bench_buffer_check_{os.getpid()}.pt")
    try:
        write_file(path, int(a.params), a.timestamps, a.tensors)
        size = os.path.getsize(path) / 2**30
        check, how = timed(lambda: describe_file(path))
        load, how_load = timed(lambda: torch.load(path, map_location="cpu", weights_only=True))
        print(f"file {size:.2f} GiB ({a.timestamps} timestamps x {int(a.params) / 1e6:.1f}M parameters, "
              f"{a.tensors} tensors each)")
        print(f"describe_file (memory-mapped shapes): {check:.3f} s ({how})")
        print(f"torch.load (the whole file):          {load:.3f} s ({how_load})")
    finally:
        if os.path.exists(path):
            os.remove(path)


if __name__ == "__main__":
    main()
