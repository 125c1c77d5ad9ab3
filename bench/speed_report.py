"""The tables bench.speed prints from its workers' rows: the iteration by phase against the device's dense rates,
the side-by-side ratio, the epochs against their compute floor, the gradients' agreement, and a profile."""
import os
import statistics
import tempfile

import torch

def rel_errors(ours, theirs):
    return {k: float((ours[k] - theirs[k]).norm() / theirs[k].norm()) for k in theirs}


def summarise(rows):
    """Median over rounds of every numeric field (the rates and FLOPs too)."""
    out = {k: statistics.median(r[k] for r in rows) for k in rows[0] if k != "rates"}
    out["rates"] = {k: statistics.median(r["rates"][k] for r in rows) for k in rows[0]["rates"]}
    return out


def print_report(a, sides):
    rates = sides[0][1]["rates"]
    print(f"device rates (same run): conv {rates['conv']:.1f} GFLOP/s, matmul {rates['matmul']:.1f} GFLOP/s")
    print("\n| side | expert loading | pass 1 | pass 2 / reverse | update | iteration | GFLOP | GFLOP/s | of conv rate |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in sides:
        for clock in ("wall", "cpu"):
            total = sum(r[f"{p}_{clock}"] for p in ("load", "match", "update"))
            rate = r["flops_match"] / (r[f"match_{clock}"] + r[f"load_{clock}"]) / 1e9
            print(f"| {name} ({clock}) | {r[f'load_{clock}']:.3f} | {r[f'pass1_{clock}']:.3f} | "
                  f"{r[f'match_{clock}'] - r[f'pass1_{clock}']:.3f} | {r[f'update_{clock}']:.3f} | {total:.3f} | "
                  f"{r['flops_match'] / 1e9:.1f} | {rate:.1f} | {rate / rates['conv']:.2f} |")
    if len(sides) == 2:
        for clock in ("wall", "cpu"):
            total = [sum(r[f"{p}_{clock}"] for p in ("load", "match", "update")) for _, r in sides]
            print(f"\niteration, this checkout / baseline ({clock} time): {total[0] / total[1]:.3f} "
                  f"(speed-up {total[1] / total[0]:.2f}x)", end="")
        print()
    if a.epochs:
        for name, r in sides:
            for kind in ("expert", "eval"):
                n, sec = r[f"{kind}_images"], r[f"{kind}_epoch_cpu"]
                floor = r[f"{kind}_flops"] / (rates["conv"] * 1e9)
                print(f"{name}: {kind} epoch, {n} images: {sec:.3f} s CPU ({r[f'{kind}_epoch_wall']:.3f} s wall), "
                      f"{n / sec:.0f} images/s; {r[f'{kind}_flops'] / 1e9:.1f} GFLOP, floor at the conv rate "
                      f"{floor:.3f} s: {floor / sec:.2f} of it")


def report_gradients(a, roots, tmp, run_worker):
    """The first iteration's gradient against the baseline's in float32 and float64, and how far each side's float32
    gradient is from the baseline's float64 one on the same inputs (float32 rounding)."""
    for name, root in roots:
        run_worker(a, root, "float64", os.path.join(tmp, f"{name}_float64.pt"), grads_only=True)
    load = lambda name, dtype: torch.load(os.path.join(tmp, f"{name}_{dtype}.pt"), weights_only=True)
    ours, base = roots[0][0], roots[1][0]
    for label, x, y in (("this checkout vs baseline, float32", load(ours, "float32"), load(base, "float32")),
                        ("this checkout vs baseline, float64", load(ours, "float64"), load(base, "float64")),
                        ("this checkout float32 vs baseline float64", load(ours, "float32"),
                         {k: v.float() for k, v in load(base, "float64").items()}),
                        ("baseline float32 vs its float64 (its float32 rounding)", load(base, "float32"),
                         {k: v.float() for k, v in load(base, "float64").items()})):
        print(f"gradient of the first iteration, {label}: " + ", ".join(f"{k} {v:.1e}" for k, v in rel_errors(x, y).items()))


def profile(a, top):
    """The operators of one iteration of this checkout by self CPU time (torch.profiler), as a share of the whole."""
    import distill_utils.startup  # noqa: F401
    from bench.speed import Workload, iteration
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Workload(a, tmp)
        iteration(work, a.mode, 1)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            start, target = work.segment()
            work.match(a.mode, work.schedule(), start, target)
            work.syn.step()
    ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in ops)
    print(f"\nprofile of one iteration ({total / 1e6:.3f} s under the profiler), operators by self CPU time:")
    for e in ops[:top]:
        print(f"  {e.key:<45} {e.self_cpu_time_total / total:6.1%}  ({e.count} calls)")
