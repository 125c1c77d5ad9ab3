"""Symmetric heads against full-encoder matching at the paper's network (issue 22): what a buffer takes on disk and
what a distillation iteration costs.

    python -m bench.heads_scale --threads 1                       # CPU, reduced batch (docs/results.md)
    python -m bench.heads_scale --device cuda --mini_batch_size 40 --num_queries 200 --steps 8   # the paper's sizes
    python -m bench.heads_scale --quick                           # smoke test of the script itself

The paper's network: nfnet_l0 (randomly initialised; weights change no size or time) at --image_size px, 768-d text
features (BERT-base) through the text head, --out_embedding 768. Full encoder: the whole image encoder and the text
head are matched (PTM-ST's buffers); symmetric heads: an image projection head on the frozen encoder and the text
head (RepBlend's). For each: the matched parameters; the bytes of an expert file of --timestamps timestamps written
as buffer.py writes them (torch.save of lists of tensors), per timestamp; and seconds per distillation iteration of
each --modes matching mode (median of --repeats after a warm-up, the two networks interleaved round by round so that
a shared machine's load hits both alike). Rows go to OUT/heads_scale.jsonl as they are measured.
"""
import argparse
import json
import os
import statistics
import tempfile
import time

import torch

from bench.measure import sync
from bench.matching_problem import add_problem_flags, matching_problem
from common.io import save_torch
from distill_utils.method.matching import MATCHING, minibatch_schedule
from distill_utils.method.student import Student

KINDS = {"full encoder": True, "symmetric heads": False}  # name: --image_trainable


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu | cuda[:N] (default: cpu)")
    add_problem_flags(p, num_queries=8, mini_batch_size=4)
    p.add_argument("--out_embedding", type=int, default=768, help="embedding width of the heads (default: 768)")
    p.add_argument("--steps", type=int, default=2, help="--syn_steps (default: 2; paper: 8)")
    p.add_argument("--modes", nargs="+", default=["constant", "adjoint"], choices=list(MATCHING))
    p.add_argument("--repeats", type=int, default=3, help="timed rounds after a warm-up (default: 3)")
    p.add_argument("--timestamps", type=int, default=2, help="timestamps of the expert file written (default: 2)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default: 1)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: check that the script runs")
    p.add_argument("--out", default="results/heads_scale", help="output directory (default: results/heads_scale)")
    a = p.parse_args(argv)
    if a.quick:
        a.image_encoder, a.image_size, a.num_queries, a.mini_batch_size, a.repeats = "convnet", 32, 4, 2, 1
    return a


class Setting:
    """A network of one kind, its synthetic set and an expert segment around its own initial parameters."""

    def __init__(self, a, trainable):
        self.a = a
        self.net, self.syn, self.start, self.target = matching_problem(a, torch.device(a.device), trainable,
                                                                       a.out_embedding)
        self.student = Student(self.net, "WBCE")
        self.schedule = minibatch_schedule(a.num_queries, a.mini_batch_size, a.steps, torch.Generator().manual_seed(1))

    def params(self):
        return self.net.img_layout.numel + self.net.txt_layout.numel

    def file_bytes(self, directory, name):
        """Bytes of one expert file of a.timestamps timestamps, as buffer.py writes it."""
        stamp = lambda: [[t.detach().cpu().clone() for t in self.net.img_layout.split(self.start[0])]]
        path = os.path.join(directory, f"{name}.pt")
        save_torch([[stamp()[0] for _ in range(self.a.timestamps)]], path)
        size = os.path.getsize(path)
        os.remove(path)
        return size

    def iteration(self, mode):
        device = torch.device(self.a.device)
        torch.manual_seed(0)
        sync(device)
        tick = time.perf_counter()
        MATCHING[mode](self.student, self.syn, self.start, self.target, self.schedule)
        sync(device)
        self.syn.zero_grad()
        return time.perf_counter() - tick


def main(argv=None):
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    os.makedirs(a.out, exist_ok=True)
    rows_path = os.path.join(a.out, "heads_scale.jsonl")
    settings = {name: Setting(a, trainable) for name, trainable in KINDS.items()}
    shape = {k: getattr(a, k) for k in ("image_encoder", "image_size", "text_dim", "out_embedding", "num_queries",
                                         "mini_batch_size", "steps", "threads", "device")}
    rows = []
    with tempfile.TemporaryDirectory(dir=a.out) as tmp:
        for name, s in settings.items():
            img_bytes = s.file_bytes(tmp, "img")
            txt = s.net.txt_layout.numel
            rows.append({"what": "size", "kind": name, "params": s.params(), "img_params": s.net.img_layout.numel,
                         "txt_params": txt, "img_file_bytes": img_bytes, "timestamps": a.timestamps, **shape})
    for mode in a.modes:
        times = {name: [] for name in settings}
        for round_ in range(a.repeats + 1):  # round 0: warm-up
            for name, s in settings.items():
                seconds = s.iteration(mode)
                if round_:
                    times[name].append(seconds)
        for name in settings:
            rows.append({"what": "iteration", "kind": name, "mode": mode, "seconds": statistics.median(times[name]),
                         "all": times[name], "load": os.getloadavg()[0], **shape})
            print(json.dumps(rows[-1]), flush=True)
    with open(rows_path, "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    print("\n".join(summary(rows)))


def summary(rows):
    size = {r["kind"]: r for r in rows if r["what"] == "size"}
    full, heads = size["full encoder"], size["symmetric heads"]
    # a timestamp on disk: the img file's bytes per timestamp, the txt head's the same in both kinds (4 bytes each)
    per_stamp = {k: r["img_file_bytes"] / r["timestamps"] + 4 * r["txt_params"] for k, r in size.items()}
    out = ["| | full encoder | symmetric heads | heads / full |", "|---|---|---|---|",
           f"| matched parameters | {full['params']:,} | {heads['params']:,} | {heads['params'] / full['params']:.3f} |",
           f"| MB per timestamp (img file measured, txt head 4 B/param) | {per_stamp['full encoder'] / 1e6:.1f} | "
           f"{per_stamp['symmetric heads'] / 1e6:.1f} | {per_stamp['symmetric heads'] / per_stamp['full encoder']:.3f} |"]
    for mode in dict.fromkeys(r["mode"] for r in rows if r["what"] == "iteration"):
        t = {r["kind"]: r["seconds"] for r in rows if r["what"] == "iteration" and r["mode"] == mode}
        out.append(f"| s/iteration, {mode} | {t['full encoder']:.2f} | {t['symmetric heads']:.2f} | "
                   f"{t['symmetric heads'] / t['full encoder']:.3f} |")
    return out


if __name__ == "__main__":
    main()
