"""Does a less noisy matching gradient reach the same quality in fewer iterations? Distills the built-in
dataset with --experts_per_it K = 1, 2, 4 in one process and K = 2, 4 over 2 CPU ranks (torchrun, gloo), saving
every --every iterations, and reports the val mean recall of each save against iterations and wall-clock time.

    python -m bench.experts_per_it                          # prints the table (docs/parallel.md quotes it)
    python -m bench.experts_per_it --report table.md        # also writes it to table.md

A small network (convnet_w16_d2) and one phase of 50 pairs keep it to about half an hour of two shared CPU
cores. The runs go one after the other (a 2-rank run is two processes, the others one, each on one thread); a
rerun continues from what --workdir holds. Wall-clock time is from each run's start (after data loading) to
the iteration's end, saves included.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

ENCODER, TEXT = "convnet_w16_d2", "minilm"  # TEXT: the recipe's
RECIPE = "recipes/synthetic_demo.yaml"  # every step is the demo's recipe with these overrides
EXPERTS = ["--config", RECIPE, "--num_experts", "2", "--train_epochs", "4"]
DISTILL = ["--config", RECIPE, "--subset_num", "1", "--min_start_epoch", "0", "--max_start_epoch", "2", "--num_queries",
           "50", "--ema_decay", "0", "--num_eval", "0", "--checkpoint_it", "10"]
PROTOCOL = ["--config", RECIPE, "--select_on", "val", "--seed", "0"]
CONFIGS = {"K=1": (1, 1), "K=2": (2, 1), "K=4": (4, 1), "K=2, 2 ranks": (2, 2), "K=4, 2 ranks": (4, 2)}  # (K, ranks)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="results/experts_per_it",
                   help="where the data, experts, runs and logs go (default: results/experts_per_it)")
    p.add_argument("--iterations", type=int, default=100, help="distillation iterations of every run (default: 100)")
    p.add_argument("--every", type=int, default=20, help="save and evaluate every N iterations (default: 20)")
    p.add_argument("--num_eval", type=int, default=2, help="students per evaluation (default: 2)")
    p.add_argument("--report", help="also write the table to this markdown file")
    return p.parse_args()


class Bench:
    def __init__(self, a):
        self.a, self.work = a, os.path.abspath(a.workdir)
        self.env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1", PYTHONUNBUFFERED="1")
        self.data = ["--dataset", "synthetic", "--ann_root", os.path.join(self.work, "data"), "--feature_cache",
                     os.path.join(self.work, "cache"), "--image_encoder", ENCODER, "--device", "cpu"]
        self.buffer = os.path.join(self.work, "buffer", "synthetic", f"{ENCODER}_{TEXT}", "InfoNCE", "normal")
        os.makedirs(os.path.join(self.work, "logs"), exist_ok=True)

    def call(self, name, cmd):
        with open(os.path.join(self.work, "logs", f"{name}.log"), "a") as log:
            log.write(" ".join(cmd) + "\n")
            log.flush()
            if subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env) != 0:
                raise SystemExit(f"bench: {name} failed; see {log.name}")

    def experts(self):
        self.call("experts", [sys.executable, "buffer.py", *EXPERTS, *self.data,
                              "--buffer_path", os.path.join(self.work, "buffer")])

    def run_dir(self, name):
        return os.path.join(self.work, "runs", "synthetic", _slug(name))

    def distill(self, name):
        k, ranks = CONFIGS[name]
        run_dir = self.run_dir(name)
        if os.path.isfile(os.path.join(run_dir, "distilled_0_final.pt")):
            return
        launcher = [sys.executable] if ranks == 1 else [sys.executable, "-m", "torch.distributed.run",
                                                        "--nproc_per_node", str(ranks)]
        resume = ["--resume"] if os.path.isfile(os.path.join(run_dir, "config.json")) else []
        self.call(_slug(name), [*launcher, "distill_ptm-st.py", *DISTILL, *self.data, "--buffer_path", self.buffer,
                                "--Iteration", str(self.a.iterations), "--eval_it", str(self.a.every),
                                "--experts_per_it", str(k), "--runs_dir", os.path.join(self.work, "runs"),
                                "--name", _slug(name), *resume])

    def evaluate(self, name, iteration):
        """Final-epoch val and test mean recall of a save, mean over the students (cached as JSON)."""
        out = os.path.join(self.work, "eval", f"{_slug(name)}_{iteration}.json")
        if not os.path.isfile(out):
            ckpt = os.path.join(self.run_dir(name), f"distilled_0_{iteration}.pt")
            self.call(f"eval_{_slug(name)}", [sys.executable, "evaluate.py", *PROTOCOL, *self.data, "--ckpt_path",
                                               ckpt, "--num_eval", str(self.a.num_eval), "--out", out])
        with open(out) as f:
            report = json.load(f)["results"]["distilled"]
        return (statistics.mean(run["points"][-1]["val"]["r_mean"] for run in report["runs"]),
                report["final"]["mean"]["r_mean"])

    def timing(self, name):
        """({iteration: seconds since the run started}, its phase_done record), from its metrics.jsonl."""
        with open(os.path.join(self.run_dir(name), "metrics.jsonl")) as f:
            records = [json.loads(line) for line in f]
        begin = min(r["time"] for r in records if r.get("event") == "runtime")
        done = next(r for r in records if r.get("event") == "phase_done")
        return {r["iteration"]: r["time"] - begin for r in records if "loss" in r and "iteration" in r}, done

    def main(self):
        tick = time.time()
        self.experts()
        points = range(self.a.every, self.a.iterations + 1, self.a.every)
        rows, speed = {}, {}
        for name in CONFIGS:
            self.distill(name)
            seconds, speed[name] = self.timing(name)
            rows[name] = [(it, seconds[it], *self.evaluate(name, it)) for it in points]
            print(f"  done: {name}", flush=True)
        report = table(rows, speed, self.a) + agreement(self) + [
            "", f"(`python -m bench.experts_per_it`, {os.cpu_count()} CPU cores, torch {torch.__version__}; this "
                f"invocation: {(time.time() - tick) / 60:.0f} min, the runs it found done not counted)"]
        print("\n".join(report))
        if self.a.report:
            with open(self.a.report, "w") as f:
                f.write("\n".join(report) + "\n")


def _slug(name):
    return name.replace("=", "").replace(", ", "_").replace(" ", "")


def table(rows, speed, a):
    iterations = [it for it, *_ in next(iter(rows.values()))]
    head = ["| run | " + " | ".join(f"it {it}" for it in iterations) + " | s/iteration | peak MB (rank 0) |",
            "|---" * (3 + len(iterations)) + "|"]
    body = [f"| {name} | " + " | ".join(f"{val:.1f} / {test:.1f} ({sec:.0f} s)" for _, sec, val, test in cells)
            + f" | {speed[name]['seconds_per_iteration']:.2f} | {speed[name]['peak_memory_mb']:.0f} |"
            for name, cells in rows.items()]
    return [f"Val / test mean recall (final epoch, mean of {a.num_eval} students) of the subset saved at each "
            "iteration, and wall-clock seconds since the run started:", "", *head, *body]


def agreement(bench):
    """How far the 2-rank runs end from the same K in one process (the same segments, summed in another order)."""
    load = lambda name: torch.load(os.path.join(bench.run_dir(name), "distilled_0_final.pt"), weights_only=True)
    lines = [""]
    for k in (2, 4):
        one, two = load(f"K={k}"), load(f"K={k}, 2 ranks")
        diff = {key: ((one[key] - two[key]).norm() / one[key].norm()).item()
                for key in ("image", "text", "similarity_mat")}
        lines.append(f"K={k} over 2 ranks against K={k} in one process, final subset after {bench.a.iterations} "
                     "iterations, relative difference ||a - b|| / ||a||: "
                     + ", ".join(f"{key} {v:.2g}" for key, v in diff.items()) + ".")
    return lines


if __name__ == "__main__":
    Bench(parse_args()).main()
