"""Runs distill_ptm-st.py under torchrun for tests/test_parallel.py and records, per rank, in PROBE_DIR/rank<r>.json:
the SHA-256 of the synthetic set (and its EMA copy) after every update, and every path under --runs_dir the rank
wrote. With PROBE_KILL_AT=n, update n raises KeyboardInterrupt, as Ctrl-C would.

    torchrun --nproc_per_node 2 tests/rank_probe.py PROBE_DIR RUNS_DIR [distill_ptm-st.py flags]
"""
import builtins
import importlib.util
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from distill_utils.method.learnable_set import SyntheticSet  # noqa: E402
from distill_utils.parallel import digest  # noqa: E402

probe_dir, runs_dir, argv = sys.argv[1], os.path.abspath(sys.argv[2]), sys.argv[3:]
rank, kill_at = int(os.environ["RANK"]), int(os.environ.get("PROBE_KILL_AT", "0"))
record = {"digests": [], "writes": []}


real_step = SyntheticSet.step


def probed_step(self):
    if len(record["digests"]) + 1 == kill_at:
        raise KeyboardInterrupt
    real_step(self)
    record["digests"].append(digest(self.tensors() + self.ema.shadow))


def watch(path):
    path = os.path.abspath(os.fspath(path))
    if path.startswith(runs_dir):
        record["writes"].append(path)


real_open, real_replace, real_makedirs = builtins.open, os.replace, os.makedirs


def probed_open(file, mode="r", *args, **kwargs):
    if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+"):
        watch(file)
    return real_open(file, mode, *args, **kwargs)


def probed_replace(src, dst, *args, **kwargs):
    watch(dst)
    return real_replace(src, dst, *args, **kwargs)


def probed_makedirs(name, *args, **kwargs):
    watch(name)
    return real_makedirs(name, *args, **kwargs)


SyntheticSet.step = probed_step
builtins.open, os.replace, os.makedirs = probed_open, probed_replace, probed_makedirs
spec = importlib.util.spec_from_file_location("distill_ptm_st", os.path.join(ROOT, "distill_ptm-st.py"))
distill = importlib.util.module_from_spec(spec)
spec.loader.exec_module(distill)
try:
    distill.main(argv)
finally:
    builtins.open, os.replace, os.makedirs = real_open, real_replace, real_makedirs
    with open(os.path.join(probe_dir, f"rank{rank}.json"), "w") as f:
        json.dump(record, f)
