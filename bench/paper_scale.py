"""The paper's configuration at its real tensor sizes: seconds and peak memory per distillation iteration.

    python -m bench.paper_scale --device cuda --out results/paper_scale   # one GPU, the paper's sizes
    python -m bench.paper_scale --device cpu --image_size 64 --steps 1 2 --extrapolate 8 20 \
        --expert_images 256 --out results/paper_scale_cpu                  # what 2 CPU cores manage (docs/paper_scale.md)
    python -m bench.paper_scale --quick --device cpu --out /tmp/ps          # smoke test of the script itself

A randomly initialised nfnet_l0 (32.8M parameters, the whole image encoder trained) at 224 px, random 768-d text
features through the projection head, the Flickr-500 phase-1 subset (200 pairs, full similarity), mini-batches
of 40, WBCE. For every --matching mode, every --steps value and each lever setting (strict float32; on CUDA
--tf32 and --tf32 --nondeterministic; --amp bf16 + --channels_last): seconds per iteration (both passes; median
of --repeats after a warm-up), peak memory (CUDA: max_memory_allocated, model and data included; CPU: the peak
resident set of a fresh process per setting) and the relative error of the levers' synthetic-data gradient
against strict float32 on the same iteration (same expert, minibatches, dropout masks). Then one expert epoch
over --expert_images real-sized images (InfoNCE, batches of 128, the short last batch dropped) and one
evaluation-student epoch on the 200 pairs (SGD momentum 0.9, soft targets), with each setting.

--extrapolate (CPU) adds rows marked "~" for other step counts: seconds per step at the largest measured
--steps, times the steps; memory is not extrapolated. Rows go to OUT/paper_scale.jsonl as measured and
OUT/paper_scale.md (for docs/paper_scale.md) is rewritten after each, so a run cut short keeps what it
measured. A CUDA out-of-memory error is reported as OOM in the table and the benchmark goes on.
"""
import argparse
import gc
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time

import torch

from bench.matching_problem import add_problem_flags, matching_problem
from bench.measure import Memory, is_oom, machine, sync
from bench.paper_scale_report import DATA_KEYS, extrapolated, markdown
from distill_utils import speed
from distill_utils.method.amp_guard import gradient_errors
from common.io import atomic_path
from distill_utils.method.matching import MATCHING, minibatch_schedule
from distill_utils.method.student import Student, make_sgd, train_epoch
from networks.image_encoders import build_image_encoder

# name: (--amp, --channels_last, --tf32, --nondeterministic); "float32" is the strict reference
LEVERS = {"float32": ("off", False, False, False), "tf32": ("off", False, True, False),
          "tf32+nondeterministic": ("off", False, True, True), "bf16+channels_last": ("bf16", True, False, False)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default: auto)")
    add_problem_flags(p, num_queries=200, mini_batch_size=40)
    p.add_argument("--steps", type=int, nargs="+", default=[2, 8, 20], help="--syn_steps values (default: 2 8 20)")
    p.add_argument("--extrapolate", type=int, nargs="*", default=[], help="step counts to extrapolate to (CPU)")
    p.add_argument("--modes", nargs="+", choices=list(MATCHING),
                   default=sorted(MATCHING, key=lambda m: (m == "unrolled", m != "constant")),
                   help="matching modes, run in this order (default: all in MATCHING, constant first, unrolled last: "
                        "under --budget_s the reference whose memory grows with the steps goes last)")
    p.add_argument("--levers", nargs="+", default=list(LEVERS), choices=list(LEVERS),
                   help="settings to compare; the kernel levers (tf32, nondeterministic) only on CUDA (default: all)")
    p.add_argument("--repeats", type=int, default=2, help="timed iterations per setting after a warm-up (default: 2)")
    p.add_argument("--expert_images", type=int, default=1000, help="images of the expert epoch (default: 1000)")
    p.add_argument("--batch_train", type=int, default=128, help="expert / evaluation batch size (default: 128)")
    p.add_argument("--tolerance", type=float, default=0.05,
                   help="relative gradient error a lever may add to count as safe (default: 0.05, --amp_tolerance's)")
    p.add_argument("--budget_s", type=float, default=float("inf"),
                   help="skip the distillation settings still to run once this many seconds have passed")
    p.add_argument("--compile", action="store_true",
                   help="also time the expert epoch with torch.compile on the student's loss (first epoch, with the "
                        "compilation, and a second one); not the distillation passes: they back-propagate through a "
                        "gradient, and a compiled function's gradient is not differentiable again (torch 2.14 returns "
                        "None for the second-order gradient)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads (default: all)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: check that the script runs, nothing else")
    p.add_argument("--out", default="results/paper_scale", help="output directory (default: results/paper_scale)")
    a = p.parse_args(argv)
    if a.quick:
        a.image_size, a.num_queries, a.mini_batch_size, a.steps = 32, 8, 4, [1, 2]
        a.expert_images, a.batch_train, a.repeats, a.text_dim = 16, 8, 1, 768
    a.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device)
    if a.device.type != "cuda":  # the kernel levers change nothing off CUDA
        a.levers = [lever for lever in a.levers if not any(LEVERS[lever][2:])]
    return a


class Bench:
    def __init__(self, a):
        self.a, self.device, self.memory = a, a.device, Memory(a.device)
        self.net, self.syn, self.start, self.target = matching_problem(a, self.device)

    @staticmethod
    def encoder_params(a):
        encoder, _ = build_image_encoder(a.image_encoder, a.image_size, False)
        return sum(p.numel() for p in encoder.parameters())

    def student(self, lever, loss_type="WBCE"):
        amp, channels_last, tf32, nondeterministic = LEVERS[lever]
        if self.device.type == "cuda":
            speed.kernels(self.device, tf32, nondeterministic)
        self.net.channels_last = channels_last
        return Student(self.net, loss_type, amp=amp)

    def matching(self, mode, steps, lever):
        """One row: (s/iter, peak GB, gradients of the first run) of `mode` at `steps` with `lever`."""
        student, syn = self.student(lever), self.syn
        schedule = minibatch_schedule(len(syn), self.a.mini_batch_size, steps, torch.Generator().manual_seed(steps))

        def run():
            torch.manual_seed(0)  # the same dropout masks in every setting
            MATCHING[mode](student, syn, self.start, self.target, schedule)

        run()  # warm-up; its gradients are the ones compared across settings
        grads = [t.grad.clone() for t in syn.tensors()]
        syn.zero_grad()
        self.memory.reset()
        times = []
        for _ in range(self.a.repeats):
            sync(self.device)
            tick = time.perf_counter()
            run()
            sync(self.device)
            times.append(time.perf_counter() - tick)
            syn.zero_grad()
        return statistics.median(times), self.memory.peak_gb(), grads

    def epoch(self, kind, lever, compiled=False):
        """Seconds of one expert epoch (real-sized random images, identity targets) or evaluation epoch (the subset);
        compiled: (seconds of a first epoch, compilation included, and of a second one)."""
        student = self.student(lever, "InfoNCE" if kind == "expert" else "WBCE")
        if compiled:
            student.loss = torch.compile(student.loss)
            return self._epoch(kind, student)[0], self._epoch(kind, student)[0]
        return self._epoch(kind, student)

    def _epoch(self, kind, student):
        a, device = self.a, self.device
        img, txt = (p.clone().requires_grad_(True) for p in self.start)
        momentum, decay = (0.0, 0.0) if kind == "expert" else (0.9, 5e-4)
        opt = make_sgd(img, txt, 0.1, 0.1, momentum, decay)
        g = torch.Generator(device=device).manual_seed(0)
        if kind == "expert":
            count = a.expert_images // a.batch_train
            batches = ((torch.randn(a.batch_train, 3, a.image_size, a.image_size, generator=g, device=device),
                        torch.randn(a.batch_train, a.text_dim, generator=g, device=device),
                        torch.eye(a.batch_train, device=device)) for _ in range(count))
        else:
            sim = self.syn.similarity.matrix([p.detach() for p in self.syn.sim_params])
            order = torch.randperm(len(self.syn), generator=g, device=device)
            batches = ((self.syn.image.detach()[i], self.syn.text.detach()[i], sim[i[:, None], i])
                       for i in torch.split(order, a.batch_train))
        self.memory.reset()
        sync(device)
        tick = time.perf_counter()
        train_epoch(student, img, txt, opt, batches)
        sync(device)
        return time.perf_counter() - tick, self.memory.peak_gb()


def _in_child(a, task, queue):
    torch.set_num_threads(a.threads)
    speed.deterministic(a.device)
    bench = Bench(a)
    if task[0] == "matching":
        seconds, peak, grads = bench.matching(*task[1:4])
        torch.save(grads, task[4])
        queue.put((seconds, peak))
    else:
        queue.put(bench.epoch(*task[1:]))


class Runner:
    """Runs each setting on a shared Bench (CUDA), or on CPU in a fresh process, so that every setting's peak
    resident set is its own."""

    def __init__(self, a):
        self.a, self.isolate = a, a.device.type == "cpu"
        self.bench = None if self.isolate else Bench(a)
        self.params = Bench.encoder_params(a)

    def matching(self, mode, steps, lever):
        if not self.isolate:
            return self.bench.matching(mode, steps, lever)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "grads.pt")
            seconds, peak = self._spawn(("matching", mode, steps, lever, path))
            return seconds, peak, torch.load(path, weights_only=True)

    def epoch(self, kind, lever, compiled=False):
        task = ("epoch", kind, lever, compiled)
        return self.bench.epoch(*task[1:]) if not self.isolate else self._spawn(task)

    def _spawn(self, task):
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        proc = ctx.Process(target=_in_child, args=(self.a, task, queue))
        proc.start()
        proc.join()
        if proc.exitcode != 0:
            raise RuntimeError(f"setting {task[:4]} failed in its process (exit code {proc.exitcode})")
        return queue.get()

    def free(self):
        if self.bench is not None:
            self.bench.syn.zero_grad()
        gc.collect()
        if self.a.device.type == "cuda":
            torch.cuda.empty_cache()


def measure_matching(runner, a, rows, emit, began):
    """All (mode, steps, lever) rows, float32 first for each (mode, steps) so the levers' error can be measured."""
    for mode in a.modes:
        for steps in a.steps:
            reference = None
            for lever in a.levers:
                row = {"kind": "matching", "mode": mode, "steps": steps, "levers": lever}
                if time.perf_counter() - began > a.budget_s:
                    emit({**row, "status": "skipped (time budget)"})
                    continue
                oom = False
                try:
                    seconds, peak, grads = runner.matching(mode, steps, lever)
                except (torch.OutOfMemoryError, RuntimeError) as err:
                    if not is_oom(err):
                        raise
                    oom = True
                if oom:  # outside the except block: its traceback no longer holds the step's tensors
                    runner.free()
                    emit({**row, "status": "OOM"})
                    continue
                row.update(status="ok", seconds=seconds, peak_gb=peak)
                if reference is None and lever == "float32":
                    reference = grads
                elif reference is not None:
                    errors = gradient_errors(grads, reference)
                    row.update({f"rel_err_{k}": v for k, v in errors.items()},
                               rel_err_data=max(errors[k] for k in DATA_KEYS))
                del grads
                emit(row)
            del reference
            runner.free()


def main(argv=None):
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    speed.deterministic(a.device)
    os.makedirs(a.out, exist_ok=True)
    jsonl, md = os.path.join(a.out, "paper_scale.jsonl"), os.path.join(a.out, "paper_scale.md")
    began = time.perf_counter()
    runner = Runner(a)
    header = (f"Paper-size benchmark on {machine(a.device)}: {a.image_encoder} ({runner.params / 1e6:.1f}M parameters, "
              f"random init) at {a.image_size} px, {a.text_dim}-d text features, {a.num_queries} synthetic pairs (full "
              f"similarity), mini-batches of {a.mini_batch_size}, WBCE; median of {a.repeats} iteration(s) after a "
              f"warm-up. `python -m bench.paper_scale {' '.join(sys.argv[1:] if argv is None else argv)}`")
    print(header, flush=True)
    rows = []
    open(jsonl, "w").close()

    def emit(row):
        rows.append(row)
        with open(jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
        with atomic_path(md) as tmp, open(tmp, "w") as f:
            f.write(markdown(a, rows + extrapolated(rows, a.extrapolate), header))

    measure_matching(runner, a, rows, emit, began)
    images_of = lambda kind: a.expert_images // a.batch_train * a.batch_train if kind == "expert" else a.num_queries
    for kind in ("expert", "eval"):
        images = images_of(kind)
        for lever in a.levers:
            seconds, peak = runner.epoch(kind, lever)
            emit({"kind": kind, "levers": lever, "images": images, "status": "ok", "seconds": seconds, "peak_gb": peak})
    if a.compile:
        first, second = runner.epoch("expert", "float32", compiled=True)
        emit({"kind": "expert", "levers": "float32+compile", "images": images_of("expert"), "status": "ok",
              "seconds": second, "first_epoch_seconds": first})
    print("\n" + open(md).read())
    print(f"total {time.perf_counter() - began:.0f} s; table in {md}")


if __name__ == "__main__":
    main()
