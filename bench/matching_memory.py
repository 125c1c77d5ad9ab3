"""Seconds and peak memory of one distillation iteration vs --syn_steps, in every matching mode.

    python -m bench.matching_memory                       # CPU or CUDA (auto), steps 2 8 32
    python -m bench.matching_memory --device cuda --image_size 64 --adjoint_store device

One fixed configuration (a ConvNet with a trainable image side, a projection head on 384-d text
features, N synthetic pairs), all settings in one fresh process: after one warm-up call per mode,
each step count runs --repeats rounds, every mode once per round, so the modes compared share the
machine's load; the median seconds are reported. Peak memory is the most one iteration adds over
what was live before it: CUDA max_memory_allocated, or on CPU the resident-set high-water mark
(VmHWM, reset before each call; large allocations are mmap-backed so that freed memory leaves the
resident set). adjoint runs once per --adjoint_store (on a CPU, cpu and device are the same), constant once per
--constant_store.
Targets: constant mode at the most steps within 1.15x of its peak at the fewest; adjoint within 1.2x
the time of constant at every step count and within 1.5x of its memory at the most steps.
"""
import argparse
import multiprocessing as mp
import os
import statistics
import time
from functools import partial

import torch

from distill_utils.method.matching import CONSTANT_STORES, MATCHING, STORES, minibatch_schedule
from distill_utils.method.similarity import make_similarity
from distill_utils.method.student import Student
from distill_utils.method.learnable_set import SynOptim, SyntheticSet
from networks.dual_encoder import NetConfig, NetworkFactory


def _rss_mb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024


def _reset_peak_rss():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _setup(cfg):
    torch.manual_seed(0)
    torch.set_num_threads(cfg["threads"])
    device = torch.device(cfg["device"])
    config = NetConfig(cfg["encoder"], cfg["image_size"], 384, True, image_pretrained=False)  # timing needs no weights
    net = NetworkFactory(config).build(0, device).train()
    n, side = cfg["num_queries"], cfg["image_size"]
    syn = SyntheticSet(torch.randn(n, 3, side, side, device=device), torch.randn(n, 384, device=device),
                       make_similarity("full", n, device=device), 0.1, 0.1, SynOptim(100, 100, 10, 1e-3))
    img, txt = net.initial_params()
    start = (img.to(device), txt.to(device))
    target = tuple(p + 0.01 * torch.randn_like(p) for p in start)
    return device, Student(net, "WBCE"), syn, start, target


def _timed(match, device, syn):
    """Seconds and peak memory (MB over what was live before) of one call."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        base = _rss_mb("VmRSS:")
        _reset_peak_rss()
    tick = time.perf_counter()
    match()
    syn.zero_grad()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - tick
    peak = ((torch.cuda.max_memory_allocated(device) - base) / 2**20 if device.type == "cuda"
            else _rss_mb("VmHWM:") - base)
    return seconds, peak


def measure(modes, steps_list, cfg, queue):
    """Every mode at every step count in one process, modes interleaved round by round."""
    device, student, syn, start, target = _setup(cfg)
    gen = torch.Generator().manual_seed(0)
    matches = {}
    for mode in modes:
        name, _, store = mode.partition("/")
        matches[mode] = partial(MATCHING[name], store=store) if store else MATCHING[name]
    calls = lambda mode, steps: lambda: matches[mode](student, syn, start, target,
                                                      minibatch_schedule(len(syn), cfg["batch"], steps, gen))
    for mode in modes:  # warm-up
        _timed(calls(mode, min(steps_list)), device, syn)
    for steps in steps_list:
        results = {mode: [] for mode in modes}
        for _ in range(cfg["repeats"]):
            for mode in modes:
                results[mode].append(_timed(calls(mode, steps), device, syn))
        for mode, runs in results.items():
            queue.put({"mode": mode, "steps": steps, "seconds": statistics.median(t for t, _ in runs),
                       "peak_mb": max(m for _, m in runs)})
    queue.put(None)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, nargs="+", default=[2, 8, 32], help="syn_steps values (default: 2 8 32)")
    p.add_argument("--modes", nargs="+", default=["constant", "adjoint", "unrolled"], choices=sorted(MATCHING),
                   help="matching modes (default: all)")
    p.add_argument("--adjoint_store", nargs="+", default=["cpu", "recompute"], choices=STORES,
                   help="how adjoint mode keeps the student points, one row each (default: cpu recompute)")
    p.add_argument("--constant_store", nargs="+", default=["replay"], choices=CONSTANT_STORES,
                   help="how constant mode gets each step's graph, one row each (default: replay)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--image_encoder", default="convnet", help="image encoder of the student (default: convnet)")
    p.add_argument("--image_size", type=int, default=32, help="image side (default: 32)")
    p.add_argument("--num_queries", type=int, default=100, help="synthetic pairs (default: 100)")
    p.add_argument("--mini_batch_size", type=int, default=50, help="pairs per student step (default: 50)")
    p.add_argument("--repeats", type=int, default=3, help="timed iterations per setting, median reported (default: 3)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads (default: all)")
    a = p.parse_args()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    cfg = {"device": device, "encoder": a.image_encoder, "image_size": a.image_size, "num_queries": a.num_queries,
           "batch": a.mini_batch_size, "repeats": a.repeats, "threads": a.threads}
    print(f"config: {cfg}")
    stores = {"adjoint": [f"adjoint/{s}" for s in a.adjoint_store],
              "constant": [f"constant/{s}" if s != "replay" else "constant" for s in a.constant_store]}
    modes = [m for mode in a.modes for m in stores.get(mode, [mode])]
    # Large CPU allocations straight from mmap, returned on free: the resident set then follows live tensors.
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", "0")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=measure, args=(modes, a.steps, cfg, queue))
    proc.start()
    rows = []
    while (r := queue.get()) is not None:
        rows.append(r)
        print(f"{r['mode']:>17} steps {r['steps']:>3}: {r['seconds']:8.3f} s/iteration  peak +{r['peak_mb']:8.1f} MB",
              flush=True)
    proc.join()
    print("\n| mode | " + " | ".join(f"{s} steps" for s in a.steps) + " |")
    print("|---|" + "---|" * len(a.steps))
    for mode in modes:
        cells = [f"{r['seconds']:.2f} s, {r['peak_mb']:.0f} MB" for r in rows if r["mode"] == mode]
        print(f"| {mode} | " + " | ".join(cells) + " |")
    report_targets(rows, a.steps, modes)


def report_targets(rows, steps, modes):
    by = {(r["mode"], r["steps"]): r for r in rows}
    lo, hi = min(steps), max(steps)
    if ("constant", lo) in by and ("constant", hi) in by and by["constant", lo]["peak_mb"] > 0:
        ratio = by["constant", hi]["peak_mb"] / by["constant", lo]["peak_mb"]
        print(f"\nconstant mode: peak at {hi} steps / peak at {lo} steps = {ratio:.3f} (target <= 1.15): "
              f"{'OK' if ratio <= 1.15 else 'MISSED'}")
    for mode, s in ((m, s) for m in modes if m.startswith("adjoint") for s in steps):
        if ("constant", s) in by and (mode, s) in by:
            t = by[mode, s]["seconds"] / by["constant", s]["seconds"]
            m = by[mode, s]["peak_mb"] / max(by["constant", s]["peak_mb"], 1e-9)
            print(f"{mode} / constant at {s:>3} steps: time {t:.3f} (target <= 1.2: {'OK' if t <= 1.2 else 'MISSED'}), "
                  f"peak {m:.3f}" + (f" (target <= 1.5: {'OK' if m <= 1.5 else 'MISSED'})" if s == hi else ""))


if __name__ == "__main__":
    main()
