"""Runs the ablation's steps (experts, shortcut trajectories, distillations, evaluations) as single-thread
subprocesses, `--jobs` at a time, into a work directory; a rerun skips the steps whose outputs are there."""
import concurrent.futures as cf
import os
import subprocess
import sys
import time

from bench.ablation import collect
from bench.ablation.plan import (AUTHORS_ROWS, CROSS_ENCODER, CROSS_SIZE, DISTILL, ENCODER, EXPERTS, LEVELS,
                                 NUM_EXPERTS, PROTOCOL, RUNS, TEXT, heads, level_iterations, modes, phase_sizes,
                                 phased, row, slug)
from distill_utils.files.buffers import BufferDir
from distill_utils.method.matching import MATCHING


class Bench:
    """The work directory of one benchmark and the steps it runs. `a`: the command line (see __main__.py)."""

    def __init__(self, a):
        self.a, self.work = a, os.path.abspath(a.workdir)
        self.env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1", PYTHONUNBUFFERED="1")
        self.late = []  # evaluations queued after the others
        self.rows = {}  # level -> {N: row names run}, adjoint rows only where MATCHING has the mode
        for level in a.levels:
            self.rows[level] = {n: [r for r in rows if RUNS[row(r)[1]].matching in MATCHING and (not a.rows or r in a.rows)]
                                for n, rows in LEVELS[level]["sizes"].items() if not a.sizes or n in a.sizes}
        os.makedirs(os.path.join(self.work, "logs"), exist_ok=True)

    def data(self, level):
        return ["--dataset", level, "--ann_root", os.path.join(self.work, "data", level), "--feature_cache",
                os.path.join(self.work, "cache"), "--device", self.a.device]

    def traj(self, level, heads=False):
        """The trajectories of the full-encoder experts, or of the symmetric heads' (heads=True)."""
        return os.path.join(self.work, "buffer_heads" if heads else "buffer", level, f"{ENCODER}_{TEXT}", "InfoNCE")

    def encoder(self, level):
        """The frozen encoder of the symmetric heads: expert 0's trained image encoder (prepare_data.py encoder)."""
        return os.path.join(self.work, "encoders", f"{level}_{ENCODER}.pt")

    def net(self, level, heads):
        return ["--no-image_trainable", "--image_checkpoint", self.encoder(level)] if heads else []

    def uses_heads(self, level):
        return any(heads(r) for rows in self.rows[level].values() for r in rows)

    def run(self, name, script, *args, done=None):
        """Run one step of the pipeline, its output to logs/<name>.log; skipped when `done` exists.
        An argument may be a function returning a list of arguments, called at launch."""
        log = os.path.join(self.work, "logs", f"{name}.log")
        if done and os.path.exists(done):
            return
        cmd = [sys.executable, script, *[x for a in args for x in (a() if callable(a) else [a])]]
        tick, load = time.time(), os.getloadavg()[0]
        with open(log, "w") as f:
            f.write(" ".join(cmd) + "\n")
            f.flush()
            code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=self.env)
        if code != 0:
            raise SystemExit(f"bench: step {name} failed (exit {code}); see {log}")
        with open(os.path.join(self.work, "logs", f"{name}.seconds"), "w") as f:
            f.write(f"{time.time() - tick:.1f}\n")
        with open(os.path.join(self.work, "logs", f"{name}.load"), "w") as f:  # the machine's load, start and end
            f.write(f"{load:.2f} {os.getloadavg()[0]:.2f}\n")
        print(f"  done: {name}", flush=True)

    def parallel(self, jobs):
        with cf.ThreadPoolExecutor(self.a.jobs) as pool:
            for future in [pool.submit(lambda j: self.run(*j[:-1], done=j[-1]), job) for job in jobs]:
                future.result()

    def expert_jobs(self, level, heads=False):
        tag = "heads_experts" if heads else "experts"
        return [(f"{level}_{tag}_{k}", "buffer.py", *EXPERTS, *self.data(level), *self.net(level, heads),
                 "--buffer_path", os.path.join(self.work, "buffer_heads" if heads else "buffer"), "--train_epochs",
                 str(LEVELS[level]["epochs"]), None) for k in range(self.a.jobs)]

    def experts(self, level):
        for heads in (False, True) if self.uses_heads(level) else (False,):
            if heads:
                self.run(f"{level}_encoder", "prepare_data.py", "encoder", "--normal_dir",
                         os.path.join(self.traj(level), "normal"), "--out", self.encoder(level), done=self.encoder(level))
            normal = BufferDir(os.path.join(self.traj(level, heads), "normal"))
            if not all(map(normal.expert_done, range(NUM_EXPERTS))):
                self.parallel(self.expert_jobs(level, heads))
            while not all(map(normal.expert_done, range(NUM_EXPERTS))):  # experts another process claimed still train
                time.sleep(30)
            for start, end in LEVELS[level]["windows"]:
                out = os.path.join(self.traj(level, heads), f"convexified_{start}_{end}")
                self.run(f"{level}_{'heads_' if heads else ''}convexify_{start}_{end}", "convexify.py", "--start",
                         str(start), "--end", str(end), "--normal_dir", normal.path, done=out)

    def iterations(self, level):
        """Iterations per phase: --iterations, else the level's."""
        return self.a.iterations or level_iterations(level)

    def tag(self, level):
        """'_it<k>' for runs with fewer iterations than the level's, '' otherwise: their run directories and
        evaluations are their own, never taken for (or resumed as) the full ones."""
        return f"_it{self.iterations(level)}" if self.iterations(level) != level_iterations(level) else ""

    def run_dir(self, level, run, n):
        return os.path.join(self.work, "runs", level, f"{run}_N{n}{self.tag(level)}")

    def distill_job(self, level, run, n):
        r = RUNS[run]
        phases = r.phases
        sizes, its = phase_sizes(level, run, n), self.iterations(level)
        run_dir = self.run_dir(level, run, n)
        args = [*DISTILL, *self.data(level), "--subset_num", str(len(phases)), "--eval_it", str(self.eval_it(level)),
                "--buffer_path", *[os.path.join(self.traj(level, r.heads), t) for t, _, _ in phases],
                "--min_start_epoch", *[str(lo) for _, lo, _ in phases], "--max_start_epoch", *[str(hi) for _, _, hi in phases],
                "--num_queries", *map(str, sizes), "--Iteration", *[str(its)] * len(phases),
                "--ema_decay", str(r.ema), "--phase_conditioning", r.conditioning, "--matching", r.matching,
                "--runs_dir", os.path.join(self.work, "runs"), "--name", os.path.basename(run_dir),
                *self.net(level, r.heads), *(["--blend", str(r.blend)] if r.blend else []),
                *[x for flag, value in r.lrs for x in (f"--{flag}", str(value))]]
        # decided at launch: a run that a killed bench (or anyone) started continues
        args.append(lambda: ["--resume"] if os.path.isfile(os.path.join(run_dir, "config.json")) else [])
        last = os.path.join(run_dir, f"distilled_{len(phases) - 1}_final.pt")
        return (f"{level}_distill_{run}_N{n}{self.tag(level)}", "distill_ptm-st.py", *args, last)

    def eval_it(self, level):
        """Subsets saved every eval_it iterations: at the end only, or --curve_points times per phase (the val curve)."""
        its = self.iterations(level)
        return max(1, its // self.a.curve_points) if self.a.curve_points else its

    def files(self, level, name, n):
        _, run, kind = row(name)
        return [os.path.join(self.run_dir(level, run, n), f"distilled_{p}_{kind}.pt") for p in range(len(RUNS[run].phases))]

    def eval_job(self, level, name, *args, encoder=ENCODER, num_eval=None):
        out = self.eval_path(level, name)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        return (f"{level}_eval_{slug(name)}", "evaluate.py", *PROTOCOL, *self.data(level), "--image_encoder", encoder,
                "--num_eval", str(num_eval or self.a.num_eval), "--out", out, *args, out)

    def eval_path(self, level, name):
        return os.path.join(self.work, "eval", level, f"{slug(name)}.json")

    def row_evals(self, level, name, n):
        files = ["--ckpt_path", *self.files(level, name, n), *self.net(level, heads(name))]
        if not phased(name):
            return [self.eval_job(level, f"{name}_N{n}{self.tag(level)}", *files)]
        jobs = [self.eval_job(level, f"{name}_{mode}_N{n}{self.tag(level)}", *files, "--eval_mode", mode)
                for mode in modes(name)]
        if name in AUTHORS_ROWS and level == "synthetic":  # after the rest
            self.late.append(self.eval_job(level, f"{name}_authors_N{n}", *files, "--protocol", "authors"))
        return jobs

    def evaluation_jobs(self, level, n):
        """Rows first, then the checks, the full set last (the longest); with --rows only those rows and the
        baselines."""
        rows = self.rows[level][n]
        jobs = [self.eval_job(level, f"random_N{n}", "--baseline", "random", "--num_pairs", str(n)),
                self.eval_job(level, f"prototype_N{n}", "--baseline", "prototype", "--num_pairs", str(n),
                              "--buffer_path", os.path.join(self.traj(level), "normal"))]
        if any(map(heads, rows)):  # the baseline of the rows on the frozen encoder
            jobs.append(self.eval_job(level, f"random_heads_N{n}", "--baseline", "random", "--num_pairs", str(n),
                                      *self.net(level, True)))
        jobs += [job for name in rows for job in self.row_evals(level, name, n)]
        if level == "synthetic" and n == CROSS_SIZE and "PTM+ST+EMA" in rows:
            jobs += [self.eval_job(level, f"PTM+ST+EMA_D{p + 1}_alone_N{n}", "--ckpt_path", f)
                     for p, f in enumerate(self.files(level, "PTM+ST+EMA", n))]
        jobs, self.late = jobs + self.late, []
        if level == "synthetic" and n == CROSS_SIZE and not self.a.rows:
            jobs += [self.eval_job(level, f"cross_PTM+ST+EMA_N{n}", "--ckpt_path", *self.files(level, "PTM+ST+EMA", n),
                                   encoder=CROSS_ENCODER),
                     self.eval_job(level, f"cross_random_N{n}", "--baseline", "random", "--num_pairs", str(n),
                                   encoder=CROSS_ENCODER)]
        if any(map(heads, rows)):
            jobs.append(self.eval_job(level, "full_heads", "--baseline", "full", *self.net(level, True)))
        return jobs + [self.eval_job(level, "full", "--baseline", "full")]

    def analysis(self, level, n):
        """How the val-best phased row's subsets add up: each D_p alone, and in sequence where its modes lack it."""
        name = collect.best_phased(self, level, n)
        if name is None:
            return
        files, net, tag = self.files(level, name, n), self.net(level, heads(name)), self.tag(level)
        jobs = [self.eval_job(level, f"{name}_D{p + 1}_alone_N{n}{tag}", "--ckpt_path", f, *net)
                for p, f in enumerate(files)]
        if "sequential" not in modes(name):
            jobs.append(self.eval_job(level, f"{name}_sequential_N{n}{tag}", "--ckpt_path", *files, *net))
        self.parallel(jobs)

    def curve_jobs(self, level, n):
        """With --curve_points: each row's last phase evaluated (1 student, val and test) at each saved iteration,
        after the earlier phases' final subsets, under the row's first eval mode: its val curve."""
        if not self.a.curve_points:
            return []
        jobs, step, its = [], self.eval_it(level), self.iterations(level)
        for name in self.rows[level][n]:
            files = self.files(level, name, n)
            for k in range(step, its + 1, step):
                last = files[-1].replace("_final_raw.pt", f"_{k}.pt").replace("_final.pt", f"_{k}.pt")
                mode = ["--eval_mode", modes(name)[0]] if phased(name) else []
                jobs.append(self.eval_job(level, f"curve_{name}_N{n}_it{k}", "--ckpt_path", *files[:-1], last, *mode,
                                          num_eval=1))
        return jobs

    def distill_jobs(self, level, n):
        runs = dict.fromkeys(row(r)[1] for r in self.rows[level][n])
        return [self.distill_job(level, run, n) for run in runs]

    def main(self):
        done = set()
        # the largest budget of every level first: the bar is judged at N = 50
        for n, level in sorted((-n, level) for level in self.a.levels for n in self.rows[level]):
            if level not in done:
                print(f"{level}: experts and shortcut trajectories", flush=True)
                self.experts(level)
                done.add(level)
            print(f"{level}, N = {-n}: distillation and evaluation", flush=True)
            self.parallel(self.distill_jobs(level, -n))
            self.parallel(self.evaluation_jobs(level, -n))
            self.parallel(self.curve_jobs(level, -n))
            self.analysis(level, -n)
