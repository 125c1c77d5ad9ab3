"""Does it work? The paper's ablation, baselines and cross-architecture check on the built-in dataset.

    python -m bench.ablation                 # about 20 minutes on 2 CPU cores; writes docs/results.md

Builds the experts and shortcut trajectories once, then at N = 20 and N = 50 synthetic pairs
distills the ablation rows (BASE, EMA, PTM, ST, PTM+ST, PTM+ST+EMA), and evaluates them, the
random and prototype coresets, the full training set, and the PTM+ST+EMA data on a second image
encoder, all under one protocol (fresh students, --num_eval seeds, final-epoch test scores).
The distillation hyper-parameters below were chosen on the val split, never on test.
"""
import argparse
import concurrent.futures as cf
import datetime
import json
import os
import subprocess
import sys
import time

from distill_utils.evaluation import COLUMNS as METRICS
from distill_utils.io import atomic_path

ENCODER, CROSS_ENCODER, TEXT = "convnet", "convnet_w32_d4_gn", "minilm"
EXPERTS = ["--num_experts", "4", "--train_epochs", "8", "--lr_teacher_img", "0.1", "--lr_teacher_txt", "0.1",
           "--batch_train", "128", "--eval_freq", "8", "--loss_type", "InfoNCE"]
ITERATIONS = 100  # per phase, as the paper's recipes give each phase its own iteration count
MINI_BATCH = "10"
DISTILL = ["--syn_steps", "8", "--expert_epochs", "1", "--lr_teacher_img", "0.03", "--lr_teacher_txt", "0.03",
           "--lr_img", "100", "--lr_txt", "10", "--lr_sim", "0.01", "--lr_lr", "1e-3", "--sim_type", "full",
           "--loss_type", "InfoNCE", "--num_eval", "0", "--checkpoint_it", "1000"]
EMA = "0.97"
PROTOCOL = ["--loss_type", "InfoNCE", "--epoch_eval_train", "100", "--batch_train", "128", "--select_on", "final"]
# distillation runs: name -> (phases as (trajectory, min start, max start), EMA?)
RUNS = {"normal": ([("normal", 0, 2)], True), "phased": ([("normal", 0, 2), ("normal", 1, 3)], False),
        "shortcut": ([("convexified_0_6", 0, 2)], False),
        "phased_shortcut": ([("convexified_0_6", 0, 2), ("convexified_0_8", 1, 3)], True)}
# ablation rows: (name, run, files). The EMA never feeds back into the optimisation, so a run with EMA
# also yields the row without it: its distilled_<p>_final_raw.pt files.
ROWS = [("BASE", "normal", "final_raw"), ("EMA", "normal", "final"), ("PTM", "phased", "final"),
        ("ST", "shortcut", "final"), ("PTM+ST", "phased_shortcut", "final_raw"),
        ("PTM+ST+EMA", "phased_shortcut", "final")]
WINDOWS = [(0, 6), (0, 8)]
PHASING_NOTE = (
    "Where phasing (the PTM rows) falls behind a single phase: the evaluation trains a fresh student on D_1, then "
    "on D_2, each for the full epoch budget, so the student ends near where the last subset alone (half the pairs) "
    "takes it and little of D_1 survives. We checked on the val split that the evaluation schedule is not the "
    "cause: keeping one optimiser across phases as the authors' evaluation does (momentum kept, lr x0.1 after half "
    "of the first phase) moved PTM+ST+EMA by less than 2 points of mean recall (N = 20: 15.6 -> 16.8, N = 50: "
    "42.6 -> 40.9; earlier settings with 40/60 phase sizes). Giving each phase its own iteration budget, as the "
    "paper's recipes do, helped (N = 20, val: 15.6 -> 19.0). The paper's setting differs in ways this CPU "
    "benchmark cannot follow (a pretrained NFNet, 200 + 299 pairs, 2000 iterations per phase); we report the "
    "rows as measured.")


class Bench:
    def __init__(self, a):
        self.a, self.work = a, os.path.abspath(a.workdir)
        self.data = ["--dataset", "synthetic", "--ann_root", os.path.join(self.work, "data"), "--feature_cache",
                     os.path.join(self.work, "cache"), "--text_encoder", TEXT, "--image_trainable", "--device", "cpu"]
        self.buffer_root = os.path.join(self.work, "buffer")
        self.traj = os.path.join(self.buffer_root, "synthetic", f"{ENCODER}_{TEXT}", "InfoNCE")
        self.env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1", PYTHONUNBUFFERED="1")
        os.makedirs(os.path.join(self.work, "logs"), exist_ok=True)

    def run(self, name, script, *args):
        """Run one step of the pipeline, its output to logs/<name>.log; stop the benchmark if it fails."""
        log = os.path.join(self.work, "logs", f"{name}.log")
        cmd = [sys.executable, script, *args]
        with open(log, "w") as f:
            f.write(" ".join(cmd) + "\n")
            f.flush()
            code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=self.env)
        if code != 0:
            raise SystemExit(f"bench: step {name} failed (exit {code}); see {log}")
        print(f"  done: {name}", flush=True)

    def parallel(self, jobs):
        with cf.ThreadPoolExecutor(self.a.jobs) as pool:
            for future in [pool.submit(self.run, *job) for job in jobs]:
                future.result()

    def experts(self):
        # a first baseline evaluation generates the dataset and the text features, which every later step shares
        os.makedirs(os.path.join(self.work, "eval"), exist_ok=True)
        n = self.a.sizes[0]
        self.run(*self.eval_job(f"random_N{n}", "--baseline", "random", "--num_pairs", str(n)))
        self.parallel([(f"experts_{k}", "buffer.py", *self.data, "--image_encoder", ENCODER, "--buffer_path",
                        self.buffer_root, *EXPERTS) for k in range(self.a.jobs)])
        for start, end in WINDOWS:
            if not os.path.isdir(os.path.join(self.traj, f"convexified_{start}_{end}")):
                self.run(f"convexify_{start}_{end}", "convexify.py", "--start", str(start), "--end", str(end),
                         "--normal_dir", os.path.join(self.traj, "normal"))

    def run_dir(self, run, n):
        return os.path.join(self.work, "runs", "synthetic", f"{run}_N{n}")

    def distill_job(self, run, n):
        phases, ema = RUNS[run]
        sizes = [n] if len(phases) == 1 else [n // 2, n - n // 2]
        args = [*self.data, "--image_encoder", ENCODER, *DISTILL, "--subset_num", str(len(phases)),
                "--buffer_path", *[os.path.join(self.traj, t) for t, _, _ in phases],
                "--min_start_epoch", *[str(lo) for _, lo, _ in phases], "--max_start_epoch", *[str(hi) for _, _, hi in phases],
                "--num_queries", *map(str, sizes), "--Iteration", *[str(ITERATIONS)] * len(phases),
                "--eval_it", str(ITERATIONS), "--mini_batch_size", MINI_BATCH, "--ema_decay", EMA if ema else "0",
                "--runs_dir", os.path.join(self.work, "runs"), "--name", os.path.basename(self.run_dir(run, n))]
        if os.path.isfile(os.path.join(self.run_dir(run, n), "config.json")):
            args.append("--resume")  # a rerun finishes (or skips) what is there
        return (f"distill_{run}_N{n}", "distill_ptm-st.py", *args)

    def files(self, row, n):
        _, run, kind = next(r for r in ROWS if r[0] == row)
        return [os.path.join(self.run_dir(run, n), f"distilled_{p}_{kind}.pt") for p in range(len(RUNS[run][0]))]

    def eval_job(self, name, *args, encoder=ENCODER):
        out = os.path.join(self.work, "eval", f"{name}.json")
        return (f"eval_{name}", "evaluate.py", *self.data, "--image_encoder", encoder, *PROTOCOL,
                "--num_eval", str(self.a.num_eval), "--seed", "0", "--out", out, *args)

    def evaluations(self):
        normal = os.path.join(self.traj, "normal")
        jobs = [self.eval_job("full", "--baseline", "full")]
        for n in self.a.sizes:
            if n != self.a.sizes[0]:  # the first size's random baseline ran with the experts
                jobs.append(self.eval_job(f"random_N{n}", "--baseline", "random", "--num_pairs", str(n)))
            jobs.append(self.eval_job(f"prototype_N{n}", "--baseline", "prototype", "--num_pairs", str(n),
                                      "--buffer_path", normal))
            jobs += [self.eval_job(f"{row}_N{n}", "--ckpt_path", *self.files(row, n)) for row, _, _ in ROWS]
            jobs += [self.eval_job(f"cross_PTM+ST+EMA_N{n}", "--ckpt_path", *self.files("PTM+ST+EMA", n),
                                   encoder=CROSS_ENCODER),
                     self.eval_job(f"cross_random_N{n}", "--baseline", "random", "--num_pairs", str(n),
                                   encoder=CROSS_ENCODER)]
        self.parallel(jobs)

    def main(self):
        tick = time.time()
        print("1/3 experts and shortcut trajectories", flush=True)
        self.experts()
        print("2/3 distillation", flush=True)
        self.parallel([self.distill_job(run, n) for n in self.a.sizes for run in RUNS])
        print("3/3 evaluation", flush=True)
        self.evaluations()
        minutes = (time.time() - tick) / 60
        write_report(self, minutes)
        print(f"bench: {minutes:.1f} min; results -> {self.a.out}")


def _report(bench, name):
    with open(os.path.join(bench.work, "eval", f"{name}.json")) as f:
        return next(iter(json.load(f)["results"].values()))


def _result(bench, name):
    report = _report(bench, name)
    return report["final"]["mean"], report["final"]["std"]


def _speed(bench, run, n):
    """Mean seconds per distillation iteration and peak memory over the run's phases."""
    with open(os.path.join(bench.run_dir(run, n), "metrics.jsonl")) as f:
        done = [r for r in map(json.loads, f) if r.get("event") == "phase_done"]
    if not done:
        return None
    return (sum(r["seconds_per_iteration"] for r in done) / len(done), max(r["peak_memory_mb"] for r in done))


def _cells(mean, std):
    return " | ".join(f"{mean[k]:.1f} ± {std[k]:.1f}" for _, k in METRICS)


def write_report(bench, minutes):
    head = "| method | " + " | ".join(label for label, _ in METRICS) + " | s/iter | peak MB |"
    rule = "|---" * (len(METRICS) + 3) + "|"
    lines = ["# Results on the built-in synthetic dataset", "",
             f"Regenerate with `python -m bench.ablation` ({minutes:.0f} min on this machine, "
             f"{datetime.date.today().isoformat()}). Every row: {bench.a.num_eval} fresh students (seeds fixed), "
             "test split, score after the final epoch, mean ± std over the students. "
             f"Image encoder `{ENCODER}` (trainable), text features `{TEXT}` (all-MiniLM-L6-v2 [CLS], 384-d).", ""]
    verdicts = []
    for n in bench.a.sizes:
        lines += [f"## N = {n} pairs", "", head, rule]
        rand = _result(bench, f"random_N{n}")
        for name, label in ((f"random_N{n}", "random real pairs"), (f"prototype_N{n}", "prototype coreset")):
            lines.append(f"| {label} | {_cells(*_result(bench, name))} | | |")
        for row, run, _ in ROWS:
            mean, std = _result(bench, f"{row}_N{n}")
            speed = _speed(bench, run, n)
            extra = f"{speed[0]:.2f} | {speed[1]:.0f}" if speed else " | "
            lines.append(f"| {row} | {_cells(mean, std)} | {extra} |")
        lines.append(f"| full train set ({_report(bench, 'full')['phases'][0]['pairs']} pairs) | "
                     f"{_cells(*_result(bench, 'full'))} | | |")
        lines += ["", f"Cross-architecture (`{CROSS_ENCODER}`: narrower, deeper, group norm), same protocol:", "",
                  "| method | " + " | ".join(label for label, _ in METRICS) + " |", "|---" * (len(METRICS) + 1) + "|",
                  f"| random real pairs | {_cells(*_result(bench, f'cross_random_N{n}'))} |",
                  f"| PTM+ST+EMA (distilled with `{ENCODER}`) | {_cells(*_result(bench, f'cross_PTM+ST+EMA_N{n}'))} |", ""]
        best = _result(bench, f"PTM+ST+EMA_N{n}")
        gap = best[0]["r_mean"] - rand[0]["r_mean"]
        bar = 2 * max(best[1]["r_mean"], rand[1]["r_mean"])
        verdicts.append(f"N = {n}: PTM+ST+EMA {best[0]['r_mean']:.1f} vs random {rand[0]['r_mean']:.1f}, "
                        f"gap {gap:.1f} {'>' if gap > bar else '<='} 2 std ({bar:.1f})")
    lines += ["## The bar", "", "PTM+ST+EMA must beat random real pairs on mean recall by more than two standard "
              "deviations (the larger of the two rows' std):", ""] + [f"- {v}" for v in verdicts]
    lines += ["", "## The paper's ablation order", "", "- paper (Table 4, Flickr30k): BASE < EMA < PTM < ST < PTM+ST < "
              "PTM+ST+EMA"]
    for n in bench.a.sizes:
        means = {row: _result(bench, f"{row}_N{n}")[0]["r_mean"] for row, _, _ in ROWS}
        lines.append(f"- measured, N = {n}: " + " < ".join(f"{r} ({means[r]:.1f})" for r in sorted(means, key=means.get)))
    lines += ["", PHASING_NOTE]
    lines += ["", "## Settings", "",
              f"- experts: `buffer.py {' '.join(EXPERTS)}`, shortcut windows {WINDOWS}",
              f"- distillation: `{' '.join(DISTILL)}`, {ITERATIONS} iterations per phase, two-phase rows split N "
              f"in halves, minibatches of {MINI_BATCH} pairs, EMA decay " + EMA + " where the row has EMA, else 0",
              "- rows: " + "; ".join(f"{r}: " + " then ".join(f"{t} start [{lo},{hi})" for t, lo, hi in RUNS[run][0])
                                      + (", no EMA" if kind == "final_raw" or not RUNS[run][1] else ", EMA")
                                      for r, run, kind in ROWS),
              "- a run with EMA gives two rows: its EMA subsets (`distilled_<p>_final.pt`) and its raw subsets "
              "(`distilled_<p>_final_raw.pt`, exactly what the same run without EMA ends with)",
              f"- evaluation: `evaluate.py {' '.join(PROTOCOL)} --num_eval {bench.a.num_eval}`; baselines use the "
              "teacher lrs (full set: 10 epochs at 0.1 x (1 - momentum))",
              "- hyper-parameters chosen on the val split: lr_img {10, 30, 100, 300}, lr_txt {1, 3, 10, 30}, "
              "lr_sim {0.01, 0.03, 0.1}, lr_lr {1e-4, 3e-4, 1e-3} on ST at N = 50; for the two-phase rows the "
              "iterations per phase (60 vs 120) and the phase split (8+12 vs 10+10) on PTM+ST+EMA at N = 20",
              "- s/iter and peak MB: one distillation iteration on one CPU thread while a second job shares the "
              "machine; peak memory is the process's peak resident set", ""]
    os.makedirs(os.path.dirname(os.path.abspath(bench.a.out)), exist_ok=True)
    with atomic_path(bench.a.out) as tmp, open(tmp, "w") as f:
        f.write("\n".join(lines))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="results/bench", help="where data, buffers, runs and logs go (default: results/bench)")
    p.add_argument("--out", default="docs/results.md", help="the markdown report (default: docs/results.md)")
    p.add_argument("--sizes", type=int, nargs="+", default=[20, 50], help="budgets N (default: 20 50)")
    p.add_argument("--num_eval", type=int, default=3, help="evaluation seeds per row (default: 3)")
    p.add_argument("--jobs", type=int, default=2, help="parallel single-thread jobs (default: 2)")
    Bench(p.parse_args()).main()


if __name__ == "__main__":
    main()
