"""Where the time of a distillation iteration, an expert epoch and an evaluation epoch goes, against the
device's own dense rates; with --baseline, side by side with another checkout of this repository.

    python -m bench.speed                                   # the CPU benchmark configuration, one thread
    python -m bench.speed --baseline /path/to/b1e3fad       # the same, and the same on an older checkout
    python -m bench.speed --preset paper --device cuda      # the paper's size (nfnet_l0 at 224 px, 200 pairs)

Presets (flags override them): `cpu`, the CPU benchmark configuration (convnet at 32 px, 384-d text, 50 pairs,
--syn_steps 8, mini-batches of 10, InfoNCE, one thread); `paper`, Flickr-500 phase 1 (nfnet_l0, 224 px, 200 pairs).

An iteration is split as distill_ptm-st.py runs it: expert loading (`segments.expert_segment` on an expert written
to a temporary directory), pass 1 (the student's steps without a graph: constant's pass 1, adjoint's forward
sweep), pass 2 or the reverse sweep (the whole matching step minus pass 1), and the update (SGD and EMA).
FLOPs are counted by torch.utils.flop_counter and divided by the seconds; the device's rates are measured in the
same run on a dense 3x3 convolution (128 channels, batch 10, 32 px; CUDA: batch 64, 56 px) and a square matmul
(1024; CUDA: 8192). Epochs: images per second and the seconds the counted FLOPs take at the convolution rate.
Each side runs in its own process, interleaved round by round so that both share the machine's load; CPU time
is printed beside wall time (the steadier on a shared machine). With --baseline, the first iteration's
synthetic-data gradient (same seeds, data, expert, minibatches, dropout masks) is compared in float32 and float64.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

PRESETS = {
    "cpu": dict(image_encoder="convnet", image_size=32, text_dim=384, num_queries=50, mini_batch_size=10,
                syn_steps=8, loss_type="InfoNCE", lr_teacher=0.03, threads=1, expert_images=1024, batch_train=128),
    "paper": dict(image_encoder="nfnet_l0", image_size=224, text_dim=768, num_queries=200, mini_batch_size=40,
                  syn_steps=8, loss_type="WBCE", lr_teacher=0.1, threads=None, expert_images=512, batch_train=128),
}
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # this checkout
GRADS = ("image", "text", "similarity", "lr_img", "lr_txt")


def timed(fn, device):
    """(wall seconds, process seconds, result) of fn()."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu, out


def dense_rates(device, dtype, repeats=5):
    """GFLOP/s of a dense 3x3 convolution and a square matmul on this device, median of `repeats`."""
    big = device.type == "cuda"
    n, c, side, m = (64, 128, 56, 8192) if big else (10, 128, 32, 1024)
    x, w = torch.randn(n, c, side, side, device=device, dtype=dtype), torch.randn(c, c, 3, 3, device=device, dtype=dtype)
    a, b = torch.randn(m, m, device=device, dtype=dtype), torch.randn(m, m, device=device, dtype=dtype)
    rate = {}
    for name, fn, flop in (("conv", lambda: torch.nn.functional.conv2d(x, w, padding=1), 2 * n * c * c * 9 * side * side),
                           ("matmul", lambda: a @ b, 2 * m ** 3)):
        fn()
        rate[name] = flop / statistics.median(timed(fn, device)[0] for _ in range(repeats)) / 1e9
    return rate


def flops_of(fn):
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def write_expert(directory, img, txt):
    """Save one expert (img and txt trajectories) in `directory` and return an ExpertStream over it, through whichever buffer API the
    checkout on the path has (BufferDir since the refactor of issue 23; module functions before it)."""
    try:
        from distill_utils.files.buffers import BufferDir
        from distill_utils.files.expert_stream import ExpertStream
    except ImportError:
        from distill_utils.files.buffers import ExpertStream, save_pair
        save_pair(directory, 0, [img], [txt])
        return ExpertStream(directory, seed=0)
    BufferDir(directory).save_pair(0, [img], [txt])
    return ExpertStream(BufferDir(directory), seed=0)


class Workload:
    """One fixed set of inputs, built from seeds only: the same in every checkout whose code builds it the same way."""

    def __init__(self, a, tmp):
        from distill_utils.method.learnable_set import SynOptim, SyntheticSet
        from distill_utils.method.similarity import make_similarity
        from distill_utils.method.student import Student
        from networks.dual_encoder import NetConfig, NetworkFactory
        self.a, self.device, dtype = a, torch.device(a.device), getattr(torch, a.dtype)
        torch.manual_seed(0)
        net = NetworkFactory(NetConfig(a.image_encoder, a.image_size, a.text_dim, True, image_pretrained=False)).build(0)
        self.net = net.to(self.device, dtype).train()
        g = torch.Generator().manual_seed(0)
        n, side = a.num_queries, a.image_size
        like = dict(dtype=dtype, device=self.device)
        self.syn = SyntheticSet(torch.randn(n, 3, side, side, generator=g).to(**like),
                                torch.randn(n, a.text_dim, generator=g).to(**like),
                                make_similarity("full", n), a.lr_teacher, a.lr_teacher, SynOptim(100, 10, 0.01, 1e-3))
        self.syn.sim_params[0] = self.syn.sim_params[0].to(**like).detach().requires_grad_(True)
        self.syn.optimizer.param_groups[3]["params"] = self.syn.sim_params
        self.student = Student(self.net, a.loss_type)
        start = [p.detach().clone() for p in self.net.img_module.parameters()], \
                [p.detach().clone() for p in self.net.txt_module.parameters()]
        stamps = [[[p + 0.01 * k * torch.randn(p.shape, generator=g).to(**like) for p in side_]
                   for k in range(3)] for side_ in start]
        self.stream = write_expert(tmp, *[[[p.cpu() for p in stamp] for stamp in side_] for side_ in stamps])
        self.schedule_gen = torch.Generator().manual_seed(1)

    def segment(self):
        from distill_utils import segments
        phase = argparse.Namespace(min_start_epoch=0, max_start_epoch=2)
        start, target, _ = segments.expert_segment(self.stream, phase, torch.Generator().manual_seed(2), 1, self.device)
        dtype = self.syn.image.dtype  # expert_segment reads float32
        return tuple(t.to(dtype) for t in start), tuple(t.to(dtype) for t in target)

    def schedule(self):
        from distill_utils.method.matching import minibatch_schedule
        return minibatch_schedule(len(self.syn), self.a.mini_batch_size, self.a.syn_steps, torch.Generator().manual_seed(1))

    def match(self, mode, schedule, start, target):
        from distill_utils.method.matching import MATCHING
        torch.manual_seed(3)  # the student's dropout masks
        name, _, store = mode.partition("/")
        return MATCHING[name](self.student, self.syn, start, target, schedule, **({"store": store} if store else {}))

    def pass1(self, schedule, start, target):
        from distill_utils.method.matching import matching_loss
        torch.manual_seed(3)
        return matching_loss(self.student, self.syn, start, target, schedule)

    def grads(self):
        s = self.syn  # the learned student lrs were named lr_img/lr_txt before the refactor of issue 23
        lrs = (s.student_lr_img, s.student_lr_txt) if hasattr(s, "student_lr_img") else (s.lr_img, s.lr_txt)
        return dict(zip(GRADS, (s.image.grad, s.text.grad, s.sim_params[0].grad, *(lr.grad for lr in lrs))))


def medians(runs):
    """{part: (wall, cpu)} lists -> {part_wall: median, part_cpu: median}, the first run (warm-up) dropped."""
    out = {}
    for part, pairs in runs.items():
        out[f"{part}_wall"] = statistics.median(w for w, _ in pairs[1:])
        out[f"{part}_cpu"] = statistics.median(c for _, c in pairs[1:])
    return out


def iteration(work, mode, repeats):
    """Seconds of each part of an iteration (medians of `repeats` after a warm-up) and the FLOPs of the matching step."""
    device, runs = work.device, {"load": [], "pass1": [], "match": [], "update": []}
    for _ in range(repeats + 1):
        wall, cpu, (start, target) = timed(work.segment, device)
        runs["load"].append((wall, cpu))
        schedule = work.schedule()
        runs["pass1"].append(timed(lambda: work.pass1(schedule, start, target), device)[:2])
        runs["match"].append(timed(lambda: work.match(mode, schedule, start, target), device)[:2])
        runs["update"].append(timed(work.syn.step, device)[:2])
    out = medians(runs)
    start, target = work.segment()
    schedule = work.schedule()
    out["flops_pass1"] = flops_of(lambda: work.pass1(schedule, start, target))
    out["flops_match"] = flops_of(lambda: work.match(mode, schedule, start, target))
    work.syn.zero_grad()
    return out


def epochs(work, repeats):
    """Seconds and FLOPs of one expert epoch (random real-sized images, identity targets) and one evaluation epoch
    (the synthetic set, soft targets), as buffer.py and evaluate.py train."""
    from distill_utils.method.student import make_sgd, train_epoch
    a, device, dtype = work.a, work.device, work.syn.image.dtype
    g = torch.Generator().manual_seed(4)
    count = a.expert_images // a.batch_train
    real = [(torch.randn(a.batch_train, 3, a.image_size, a.image_size, generator=g).to(device, dtype),
             torch.randn(a.batch_train, a.text_dim, generator=g).to(device, dtype),
             torch.eye(a.batch_train, dtype=dtype, device=device)) for _ in range(count)]
    sim = work.syn.sim_params[0].detach()
    syn = [(work.syn.image.detach()[i], work.syn.text.detach()[i], sim[i[:, None], i])
           for i in torch.split(torch.randperm(len(work.syn), generator=g), a.batch_train)]
    out = {"expert_images": count * a.batch_train, "eval_images": len(work.syn)}
    for kind, batches, momentum, decay in (("expert", real, 0.0, 0.0), ("eval", syn, 0.9, 5e-4)):
        img, txt = (p.clone().requires_grad_(True) for p in work.net.initial_params())
        opt = make_sgd(img, txt, 0.1, 0.1, momentum, decay)
        run = lambda: train_epoch(work.student, img, txt, opt, iter(batches))
        out.update({f"{kind}_{k}": v for k, v in medians({"epoch": [timed(run, device)[:2] for _ in range(repeats + 1)]}).items()})
        out[f"{kind}_flops"] = flops_of(run)
    return out


def worker(a):
    """Measure one checkout (the code on sys.path) and print one JSON line; gradients of the first iteration to a file."""
    import distill_utils.startup  # noqa: F401  (first, as in the entry scripts: process-level settings)
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Workload(a, tmp)
        start, target = work.segment()
        work.match(a.mode, work.schedule(), start, target)
        torch.save({k: v.detach().cpu() for k, v in work.grads().items()}, a.grads_out)
        work.syn.zero_grad()
        if a.grads_only:
            print("ROW {}", flush=True)
            return
        row = {"rates": dense_rates(work.device, getattr(torch, a.dtype)), **iteration(work, a.mode, a.repeats)}
        if a.epochs:
            row.update(epochs(work, max(1, a.repeats // 2)))
    print("ROW " + json.dumps(row), flush=True)


def run_worker(a, root, dtype, grads_out, grads_only=False):
    """Run `worker` in a fresh process with `root`'s code on the path; returns its row."""
    flags = [f"--{k}={v}" for k, v in vars(a).items() if k in PRESETS["cpu"] or k in ("device", "repeats")]
    flags.append(f"--mode={a.baseline_mode if a.baseline_mode and root != HERE else a.mode}")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", f"--dtype={dtype}", f"--grads_out={grads_out}", *flags]
    cmd += ["--epochs"] * (a.epochs and not grads_only) + ["--grads_only"] * grads_only
    return row_of(cmd, root)


def row_of(cmd, root):
    """Run a worker command in `root`, its code first on the path, and return the JSON of its `ROW ` line."""
    env = {**os.environ, "PYTHONPATH": root, "TQDM_DISABLE": "1"}
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    rows = [line[4:] for line in done.stdout.splitlines() if line.startswith("ROW ")]
    if done.returncode or not rows:
        raise SystemExit(f"worker in {root} failed:\n{done.stderr[-2000:]}")
    return json.loads(rows[0])


def add_preset_flags(p):
    """--preset, one override flag per preset field, --device (bench.authors shares them)."""
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS), help="configuration (default: cpu)")
    for key, value in PRESETS["cpu"].items():
        p.add_argument(f"--{key}", type=type(value) if value is not None else int, default=None,
                       help=f"override the preset's {key}")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default: auto)")


def apply_preset(a):
    """Fill the fields a command line left unset from its preset; --device auto and unset threads resolved."""
    for key, value in PRESETS[a.preset].items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    if a.threads is None:
        a.threads = torch.get_num_threads()
    if a.device == "auto":
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    return a


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_preset_flags(p)
    p.add_argument("--mode", default="constant", help="--matching mode, or MODE/STORE with its --constant_store or "
                   "--adjoint_store (default: constant)")
    p.add_argument("--baseline_mode", help="the baseline's mode, where it differs (e.g. --mode constant/graphs "
                   "--baseline_mode constant)")
    p.add_argument("--rounds", type=int, default=3, help="rounds, each side once per round (default: 3)")
    p.add_argument("--repeats", type=int, default=3, help="timed iterations per round after a warm-up (default: 3)")
    p.add_argument("--epochs", action="store_true", help="also time one expert epoch and one evaluation epoch")
    p.add_argument("--baseline", help="a checkout of another revision of this repository, measured side by side")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="also print the N operators that take most of an iteration's CPU time (this checkout)")
    p.add_argument("--out", help="write the measured rows as JSON to this file")
    for hidden, kw in (("worker", dict(action="store_true")), ("dtype", dict(default="float32")),
                       ("grads_out", {}), ("grads_only", dict(action="store_true"))):
        p.add_argument(f"--{hidden}", help=argparse.SUPPRESS, **kw)
    return apply_preset(p.parse_args(argv))


def main(argv=None):
    a = parse_args(argv)
    if a.worker:
        return worker(a)
    from bench.speed_report import print_report, profile, report_gradients, summarise  # not in a worker: another checkout's path
    roots = [("this checkout", HERE)] + ([("baseline", os.path.abspath(a.baseline))] if a.baseline else [])
    print(f"config: {json.dumps({k: v for k, v in vars(a).items() if k not in ('worker', 'grads_out', 'dtype')})}")
    rows = {name: [] for name, _ in roots}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            for name, root in roots:
                rows[name].append(run_worker(a, root, "float32", os.path.join(tmp, f"{name}_float32.pt")))
                print(f"round {r + 1}, {name}: iteration {sum(rows[name][-1][f'{p}_wall'] for p in ('load', 'match', 'update')):.3f} s wall",
                      flush=True)
        sides = [(name, summarise(rows[name])) for name, _ in roots]
        print_report(a, sides)
        if a.baseline:
            report_gradients(a, roots, tmp, run_worker)
    if a.profile:
        profile(a, a.profile)
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"config": vars(a), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
