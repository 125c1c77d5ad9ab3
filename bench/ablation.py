"""Does it work? The paper's ablation, conditioned phases, baselines and a cross-architecture check on
the built-in dataset and its harder level.

    python -m bench.ablation                 # writes docs/results.md; see there for the time it took

For each dataset level and budget N: builds the experts (recall logged every epoch: the learning
curves) and shortcut trajectories, distills the ablation rows (BASE, EMA, PTM, ST, PTM+ST,
PTM+ST+EMA), the rows distilled with --phase_conditioning cumulative, and, where the matching mode
is there, rows with the exact (adjoint) gradient; on `synthetic_hard`, the levers of the phased method (start windows
where its experts still improve, the budget split) and one phase on the same windows (the *late* rows); on `synthetic`
at N = 50, a control with both phases on the same start window (the split without a later teacher); then evaluates every row, the random and prototype
coresets and the full training set under one protocol (fresh students, --num_eval seeds, final-epoch
scores). A phased row is evaluated under the two --eval_modes it is meant for (see `modes`) and
reported under the one with the better final-epoch mean recall on the val split. The distillation hyper-parameters were
chosen on the val split too, never on test. A rerun skips the steps whose outputs are there; a level or budget not rerun
(`--levels`, `--sizes`) keeps its section of the earlier report (--out), with the provenance of the run it came from.
"""
import argparse
import concurrent.futures as cf
import json
import os
import re
import statistics
import subprocess
import sys
import time
from typing import NamedTuple

from distill_utils.evaluation.sources import EVAL_MODES
from distill_utils.evaluation.summary import COLUMNS as METRICS
from common.io import atomic_path
from distill_utils.method.matching import MATCHING

ENCODER, CROSS_ENCODER, TEXT = "convnet", "convnet_w32_d4_gn", "minilm"
EXPERT_ARGS = ["--num_experts", "2", "--lr_teacher_img", "0.1", "--lr_teacher_txt", "0.1", "--batch_train", "128",
               "--eval_freq", "1", "--loss_type", "InfoNCE"]
ITERATIONS = 100  # per phase, as the paper's recipes give each phase its own iteration count
MINI_BATCH = "10"
DISTILL = ["--syn_steps", "8", "--expert_epochs", "1", "--lr_teacher_img", "0.03", "--lr_teacher_txt", "0.03",
           "--lr_img", "100", "--lr_txt", "10", "--lr_sim", "0.01", "--lr_lr", "1e-3", "--sim_type", "full",
           "--loss_type", "InfoNCE", "--num_eval", "0", "--checkpoint_it", "25"]
EMA = "0.97"
PROTOCOL = ["--loss_type", "InfoNCE", "--epoch_eval_train", "100", "--batch_train", "128", "--select_on", "val"]
SHORTCUT_PHASES = [("convexified_0_6", 0, 2), ("convexified_0_8", 1, 3)]
LATE = "convexified_0_11"  # `synthetic_hard`'s whole expert run (11 timestamps) as one shortcut window


class Run(NamedTuple):
    """A distillation run: phases as (trajectory, min start, max start); split: the first phase's share of N."""
    phases: list
    ema: bool = False
    conditioning: str = "none"
    matching: str = "constant"
    split: float = 0.5


RUNS = {"normal": Run([("normal", 0, 2)], ema=True),
        "phased": Run([("normal", 0, 2), ("normal", 1, 3)]),
        "shortcut": Run(SHORTCUT_PHASES[:1]),
        "phased_shortcut": Run(SHORTCUT_PHASES, ema=True),
        "conditioned": Run(SHORTCUT_PHASES, ema=True, conditioning="cumulative"),
        "shortcut_exact": Run(SHORTCUT_PHASES[:1], matching="adjoint"),
        "conditioned_exact": Run(SHORTCUT_PHASES, ema=True, conditioning="cumulative", matching="adjoint")}
# the levers of `synthetic_hard`: start windows on LATE where its experts still improve, the same windows as
# one phase (at the full budget), and the budget split between two conditioned phases: (starts, first share)
LEVERS = [([(0, 3)], 1), ([(3, 6)], 1), ([(0, 6)], 1), ([(0, 3), (3, 6)], 0.5), ([(0, 3), (6, 9)], 0.5),
          ([(0, 3), (3, 6)], 0.4), ([(0, 3), (3, 6)], 0.6)]


def _lever(starts, split):
    """(run name, row label) of a lever: e.g. late_0-3_3-6_20+30, 'late [0,3) then [3,6), 20+30 of 50'."""
    name = "late_" + "_".join(f"{lo}-{hi}" for lo, hi in starts)
    label = "late " + " then ".join(f"[{lo},{hi})" for lo, hi in starts)
    if split != 0.5 and len(starts) > 1:
        name += f"_{round(100 * split)}+{round(100 * (1 - split))}"
        label += f", split {round(100 * split)}/{round(100 * (1 - split))}"
    return name, label


for starts, split in LEVERS:
    name, _ = _lever(starts, split)
    RUNS[name] = Run([(LATE, lo, hi) for lo, hi in starts], ema=True, split=split,
                     conditioning="cumulative" if len(starts) > 1 else "none")
# ablation rows: (name, run, files). The EMA never feeds back into the optimisation, so a run with EMA
# also yields the row without it: its distilled_<p>_final_raw.pt files.
ROWS = [("BASE", "normal", "final_raw"), ("EMA", "normal", "final"), ("PTM", "phased", "final"),
        ("ST", "shortcut", "final"), ("PTM+ST", "phased_shortcut", "final_raw"),
        ("PTM+ST+EMA", "phased_shortcut", "final"), ("PTM+ST, conditioned", "conditioned", "final_raw"),
        ("PTM+ST+EMA, conditioned", "conditioned", "final"), ("ST, exact gradient", "shortcut_exact", "final"),
        ("PTM+ST+EMA, conditioned, exact gradient", "conditioned_exact", "final")]
for starts, split in LEVERS:
    name, label = _lever(starts, split)
    kind = "PTM+ST{}, conditioned" if len(starts) > 1 else "ST{}"
    ROWS += [(f"{kind.format('')}, {label}", name, "final_raw"), (f"{kind.format('+EMA')}, {label}", name, "final")]
for split in (0.6, 0.4):  # the budget split between the standard windows' conditioned phases
    tag = f"{round(100 * split)}/{round(100 * (1 - split))}"
    RUNS[f"conditioned_{tag.replace('/', '+')}"] = RUNS["conditioned"]._replace(split=split)
    ROWS += [(f"PTM+ST, conditioned, split {tag}", f"conditioned_{tag.replace('/', '+')}", "final_raw"),
             (f"PTM+ST+EMA, conditioned, split {tag}", f"conditioned_{tag.replace('/', '+')}", "final")]
# a control on `synthetic`: two conditioned phases on the same start window, so the budget split is there and the
# later teacher is not; it tells which of the two costs the phased rows their points
RUNS["conditioned_same"] = RUNS["conditioned"]._replace(phases=[SHORTCUT_PHASES[0]] * 2)
CONTROL_ROWS = ["PTM+ST, conditioned, both phases [0,2)", "PTM+ST+EMA, conditioned, both phases [0,2)"]
ROWS += [(CONTROL_ROWS[0], "conditioned_same", "final_raw"), (CONTROL_ROWS[1], "conditioned_same", "final")]
LEVER_ROWS = [r[0] for r in ROWS if r[1].startswith("late_") or "split" in r[0]]
STANDARD = [r[0] for r in ROWS if r[0] != "PTM" and r[0] not in LEVER_ROWS + CONTROL_ROWS]
# dataset levels: expert epochs, shortcut windows, budgets, the rows run at each budget
LEVELS = {"synthetic": {"epochs": 8, "windows": [(0, 6), (0, 8)], "sizes": {50: STANDARD + CONTROL_ROWS, 20: STANDARD}},
          "synthetic_hard": {"epochs": 10, "windows": [(0, 6), (0, 8), (0, 11)],
                             "sizes": {50: ["BASE", "EMA", "ST", "PTM+ST", "PTM+ST+EMA", "PTM+ST, conditioned",
                                            "PTM+ST+EMA, conditioned", *LEVER_ROWS]}}}
AUTHORS_ROWS = ("PTM+ST+EMA", "PTM+ST+EMA, conditioned")  # also evaluated under --protocol authors (`synthetic`)
CROSS_SIZE = 50  # the cross-architecture check runs at this budget


def modes(row):
    """The eval modes a phased row is meant for, one picked on val: the paper's sequential or the union for
    subsets distilled alone; the cumulative training they were distilled for or the union for conditioned ones."""
    return ("cumulative", "union") if RUNS[_row(row)[1]].conditioning == "cumulative" else ("sequential", "union")


def phased(row):
    return len(RUNS[_row(row)[1]].phases) > 1


def _row(name):
    return next(r for r in ROWS if r[0] == name)


class Bench:
    def __init__(self, a):
        self.a, self.work = a, os.path.abspath(a.workdir)
        self.env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1", PYTHONUNBUFFERED="1")
        self.late = []  # evaluations queued after the others
        self.rows = {}  # level -> {N: row names run}, adjoint rows only where MATCHING has the mode
        for level in a.levels:
            self.rows[level] = {n: [r for r in rows if RUNS[_row(r)[1]].matching in MATCHING and (not a.rows or r in a.rows)]
                                for n, rows in LEVELS[level]["sizes"].items() if not a.sizes or n in a.sizes}
        os.makedirs(os.path.join(self.work, "logs"), exist_ok=True)

    def data(self, level):
        return ["--dataset", level, "--ann_root", os.path.join(self.work, "data", level), "--feature_cache",
                os.path.join(self.work, "cache"), "--text_encoder", TEXT, "--image_trainable", "--device", self.a.device]

    def traj(self, level):
        return os.path.join(self.work, "buffer", level, f"{ENCODER}_{TEXT}", "InfoNCE")

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

    def experts(self, level):
        normal = os.path.join(self.traj(level), "normal")
        wanted = [os.path.join(normal, f"txt_replay_buffer_{k}.pt") for k in range(int(EXPERT_ARGS[1]))]
        if not all(map(os.path.isfile, wanted)):
            self.parallel([(f"{level}_experts_{k}", "buffer.py", *self.data(level), "--image_encoder", ENCODER,
                            "--buffer_path", os.path.join(self.work, "buffer"), "--train_epochs",
                            str(LEVELS[level]["epochs"]), *EXPERT_ARGS, None) for k in range(self.a.jobs)])
        while not all(map(os.path.isfile, wanted)):  # experts another process claimed are still training
            time.sleep(30)
        for start, end in LEVELS[level]["windows"]:
            out = os.path.join(self.traj(level), f"convexified_{start}_{end}")
            self.run(f"{level}_convexify_{start}_{end}", "convexify.py", "--start", str(start), "--end", str(end),
                     "--normal_dir", normal, done=out)

    def run_dir(self, level, run, n):
        return os.path.join(self.work, "runs", level, f"{run}_N{n}")

    def distill_job(self, level, run, n):
        phases, ema, conditioning, matching, split = RUNS[run]
        sizes = [n] if len(phases) == 1 else [round(n * split), n - round(n * split)]
        run_dir = self.run_dir(level, run, n)
        args = [*self.data(level), "--image_encoder", ENCODER, *DISTILL, "--subset_num", str(len(phases)),
                "--buffer_path", *[os.path.join(self.traj(level), t) for t, _, _ in phases],
                "--min_start_epoch", *[str(lo) for _, lo, _ in phases], "--max_start_epoch", *[str(hi) for _, _, hi in phases],
                "--num_queries", *map(str, sizes), "--Iteration", *[str(ITERATIONS)] * len(phases),
                "--eval_it", str(ITERATIONS), "--mini_batch_size", MINI_BATCH, "--ema_decay", EMA if ema else "0",
                "--phase_conditioning", conditioning, "--matching", matching,
                "--runs_dir", os.path.join(self.work, "runs"), "--name", os.path.basename(run_dir)]
        # decided at launch: a run that a killed bench (or anyone) started continues
        args.append(lambda: ["--resume"] if os.path.isfile(os.path.join(run_dir, "config.json")) else [])
        last = os.path.join(run_dir, f"distilled_{len(phases) - 1}_final.pt")
        return (f"{level}_distill_{run}_N{n}", "distill_ptm-st.py", *args, last)

    def files(self, level, row, n):
        _, run, kind = _row(row)
        return [os.path.join(self.run_dir(level, run, n), f"distilled_{p}_{kind}.pt") for p in range(len(RUNS[run].phases))]

    def eval_job(self, level, name, *args, encoder=ENCODER):
        out = self.eval_path(level, name)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        return (f"{level}_eval_{_slug(name)}", "evaluate.py", *self.data(level), "--image_encoder", encoder, *PROTOCOL,
                "--num_eval", str(self.a.num_eval), "--seed", "0", "--out", out, *args, out)

    def eval_path(self, level, name):
        return os.path.join(self.work, "eval", level, f"{_slug(name)}.json")

    def row_evals(self, level, row, n):
        files = ["--ckpt_path", *self.files(level, row, n)]
        if not phased(row):
            return [self.eval_job(level, f"{row}_N{n}", *files)]
        jobs = [self.eval_job(level, f"{row}_{mode}_N{n}", *files, "--eval_mode", mode) for mode in modes(row)]
        if row in AUTHORS_ROWS and level == "synthetic":  # after the rest
            self.late.append(self.eval_job(level, f"{row}_authors_N{n}", *files, "--protocol", "authors"))
        return jobs

    def evaluations(self, level, n):
        """Rows first, then the checks; with --rows only those rows and the baselines."""
        rows = self.rows[level][n]
        jobs = [self.eval_job(level, f"random_N{n}", "--baseline", "random", "--num_pairs", str(n)),
                self.eval_job(level, f"prototype_N{n}", "--baseline", "prototype", "--num_pairs", str(n),
                              "--buffer_path", os.path.join(self.traj(level), "normal"))]
        jobs += [job for row in rows for job in self.row_evals(level, row, n)]
        if level == "synthetic" and n == CROSS_SIZE and "PTM+ST+EMA" in rows:
            jobs += [self.eval_job(level, f"PTM+ST+EMA_D{p + 1}_alone_N{n}", "--ckpt_path", f)
                     for p, f in enumerate(self.files(level, "PTM+ST+EMA", n))]
        jobs, self.late = jobs + self.late, []
        if level == "synthetic" and n == CROSS_SIZE and not self.a.rows:
            jobs += [self.eval_job(level, f"cross_PTM+ST+EMA_N{n}", "--ckpt_path", *self.files(level, "PTM+ST+EMA", n),
                                   encoder=CROSS_ENCODER),
                     self.eval_job(level, f"cross_random_N{n}", "--baseline", "random", "--num_pairs", str(n),
                                   encoder=CROSS_ENCODER)]
        self.parallel(jobs + self.late + [self.eval_job(level, "full", "--baseline", "full")])  # the longest, last
        self.late = []

    def analysis(self, level, n):
        """How the val-best phased row's subsets add up: each D_p alone, and in sequence where its modes lack it."""
        row = best_phased(self, level, n)
        if row is None:
            return
        files = self.files(level, row, n)
        jobs = [self.eval_job(level, f"{row}_D{p + 1}_alone_N{n}", "--ckpt_path", f) for p, f in enumerate(files)]
        if "sequential" not in modes(row):
            jobs.append(self.eval_job(level, f"{row}_sequential_N{n}", "--ckpt_path", *files))
        self.parallel(jobs)

    def distillations(self, level, n):
        runs = dict.fromkeys(_row(r)[1] for r in self.rows[level][n])
        self.parallel([self.distill_job(level, run, n) for run in runs])

    def main(self):
        done = set()
        # the largest budget of every level first: the bar is judged at N = 50
        for n, level in sorted((-n, level) for level in self.a.levels for n in self.rows[level]):
            if level not in done:
                print(f"{level}: experts and shortcut trajectories", flush=True)
                self.experts(level)
                done.add(level)
            print(f"{level}, N = {-n}: distillation and evaluation", flush=True)
            self.distillations(level, -n)
            self.evaluations(level, -n)
            self.analysis(level, -n)
        write_report(self)
        print(f"bench: results -> {self.a.out}")


def _slug(name):
    return re.sub(r"[^A-Za-z0-9+.=@-]+", "_", name).strip("_")


def _load(bench, level, name):
    with open(bench.eval_path(level, name)) as f:
        return next(iter(json.load(f)["results"].values()))


def _load_or_none(bench, level, name):
    try:
        return _load(bench, level, name)
    except FileNotFoundError:
        return None


def _test(report, key="final"):
    return report[key]["mean"], report[key]["std"]


def _val(report):
    """Final-epoch val mean recall, averaged over the students."""
    return statistics.mean(run["points"][-1]["val"]["r_mean"] for run in report["runs"])


def _speed(bench, level, run, n):
    """Mean seconds per distillation iteration and peak memory over the run's phases."""
    with open(os.path.join(bench.run_dir(level, run, n), "metrics.jsonl")) as f:
        done = [r for r in map(json.loads, f) if r.get("event") == "phase_done"]
    return (sum(r["seconds_per_iteration"] for r in done) / len(done), max(r["peak_memory_mb"] for r in done))


def _cells(mean, std):
    return " | ".join(f"{mean[k]:.1f} ± {std[k]:.1f}" for _, k in METRICS)


def chosen(bench, level, row, n):
    """(eval mode, its report, {mode: report}) of a row: phased rows under their val-best mode."""
    if not phased(row):
        report = _load(bench, level, f"{row}_N{n}")
        return "-", report, {}
    by_mode = {mode: _load(bench, level, f"{row}_{mode}_N{n}") for mode in modes(row)}
    mode = max(by_mode, key=lambda m: _val(by_mode[m]))
    return mode, by_mode[mode], by_mode


def expert_curve(bench, level):
    """Test mean recall after each epoch, mean over the experts (from buffer.py's metrics.jsonl)."""
    with open(os.path.join(bench.traj(level), "normal", "metrics.jsonl")) as f:
        records = [r for r in map(json.loads, f) if "r_mean" in r and r.get("expert", 1e9) < int(EXPERT_ARGS[1])]
    epochs = sorted({r["epoch"] for r in records if r["epoch"] > 0})
    return {e: statistics.mean(r["r_mean"] for r in records if r["epoch"] == e) for e in epochs}, \
        len({r["expert"] for r in records})


def level_section(bench, level, verdicts, old, plan):
    """The level's section: the budgets the plan regenerates from the workdir, the others carried from `old`."""
    lines = _curve_lines(bench, level)
    for n in plan.budgets[level]:
        if (level, n) not in plan.regen:
            lines += carried_size(old, level, n)
            continue
        try:
            lines += size_section(bench, level, n, verdicts)
        except FileNotFoundError as e:
            lines += [f"### N = {n} pairs", "", f"Not finished in this run ({os.path.basename(e.filename)} missing).", ""]
    return lines


def _curve_lines(bench, level):
    curve, experts = expert_curve(bench, level)
    lines = [f"## `{level}`", "", f"Expert learning curve (test mean recall after each epoch, mean of {experts} "
             "experts):", "", "| epoch | " + " | ".join(map(str, curve)) + " |", "|---" * (len(curve) + 1) + "|",
             "| mean recall | " + " | ".join(f"{v:.1f}" for v in curve.values()) + " |", ""]
    return lines


def size_section(bench, level, n, verdicts):
    rows, lines = bench.rows[level][n], []
    head = ("| method | eval mode | " + " | ".join(label for label, _ in METRICS) +
            " | val mean | test mean: sequential / cumulative / union | s/iter | peak MB |")
    full = _load_or_none(bench, level, "full")
    lines += [f"### N = {n} pairs", "", head, "|---" * (len(METRICS) + 6) + "|"]
    for name, label in ((f"random_N{n}", "random real pairs"), (f"prototype_N{n}", "prototype coreset")):
        report = _load(bench, level, name)
        lines.append(f"| {label} | - | {_cells(*_test(report))} | {_val(report):.1f} | | | |")
    picked = {}
    for row in rows:
        try:
            mode, report, by_mode = chosen(bench, level, row, n)
        except FileNotFoundError:
            lines.append(f"| {row} | not finished in this run |" + " |" * (len(METRICS) + 4))
            continue
        picked[row] = (mode, report)
        cells = " / ".join(f"{_test(by_mode[m])[0]['r_mean']:.1f}" if m in by_mode else "-" for m in EVAL_MODES)
        speed = _speed(bench, level, _row(row)[1], n)
        lines.append(f"| {row} | {mode} | {_cells(*_test(report))} | {_val(report):.1f} | {cells if by_mode else ''} | "
                     f"{speed[0]:.2f} | {speed[1]:.0f} |")
    if full:
        lines.append(f"| full train set ({full['phases'][0]['pairs']} pairs) | - | {_cells(*_test(full))} | "
                     f"{_val(full):.1f} | | | |")
    authors = [r for r in AUTHORS_ROWS if r in rows and level == "synthetic"]
    if authors:
        lines += ["", "The authors' protocol (`--protocol authors`: one SGD with the last subset's lrs, one x0.1 "
                  "drop, best test score over all evaluation points of all phases: selects on test, optimistic), "
                  "sequential:", "", "| method | " + " | ".join(label for label, _ in METRICS) + " |",
                  "|---" * (len(METRICS) + 1) + "|"]
        for r in authors:
            report = _load_or_none(bench, level, f"{r}_authors_N{n}")
            lines.append(f"| {r} | " + (_cells(*_test(report, "best")) if report else "not finished in this run") + " |")
    cross = [_load_or_none(bench, level, f"cross_{k}_N{n}") for k in ("random", "PTM+ST+EMA")]
    if level == "synthetic" and n == CROSS_SIZE and all(cross):
        lines += ["", f"Cross-architecture (`{CROSS_ENCODER}`: narrower, deeper, group norm), sequential:", "",
                  "| method | " + " | ".join(label for label, _ in METRICS) + " |",
                  "|---" * (len(METRICS) + 1) + "|",
                  f"| random real pairs | {_cells(*_test(cross[0]))} |",
                  f"| PTM+ST+EMA (distilled with `{ENCODER}`) | {_cells(*_test(cross[1]))} |"]
    lines.append("")
    verdicts.append(verdict(level, n, picked, full))
    return lines


def _best_on_val(picked, rows):
    """The row of `rows` whose chosen report ({row: (mode, report)}) has the best final val mean recall."""
    return max(rows, key=lambda r: _val(picked[r][1]))


def picked_rows(bench, level, n, rows=None):
    """{row: (eval mode, report)} of the finished rows, each under its val-best mode."""
    picked = {}
    for row in bench.rows[level][n] if rows is None else rows:
        try:
            picked[row] = chosen(bench, level, row, n)[:2]
        except FileNotFoundError:
            pass
    return picked


def best_phased(bench, level, n):
    picked = picked_rows(bench, level, n, [r for r in bench.rows[level][n] if phased(r)])
    return _best_on_val(picked, picked) if picked else None


def verdict(level, n, picked, full):
    """Best single-phase vs best phased (each selected on val), tested at the same budget; 70% of full."""
    singles, multis = [r for r in picked if not phased(r)], [r for r in picked if phased(r)]
    if not singles or not multis:
        return f"`{level}`, N = {n}: not judged, the single-phase or the phased rows did not finish in this run"
    single, multi = _best_on_val(picked, singles), _best_on_val(picked, multis)
    (sm, ss), (pm, ps) = _test(picked[single][1]), _test(picked[multi][1])
    gap, bar = pm["r_mean"] - sm["r_mean"], 2 * max(ss["r_mean"], ps["r_mean"])
    best = max(sm["r_mean"], pm["r_mean"])
    text = (f"`{level}`, N = {n}: best phased (on val) {multi} [{picked[multi][0]}] {pm['r_mean']:.1f} ± "
            f"{ps['r_mean']:.1f} vs best single-phase {single} {sm['r_mean']:.1f} ± {ss['r_mean']:.1f}: gap "
            f"{gap:+.1f}, {'more than' if gap > bar else 'phased below by more than' if gap < -bar else 'not more than'} "
            f"2 std ({bar:.1f})")
    if not full:
        return text + "; the full-set baseline did not finish in this run"
    target = 0.7 * full["final"]["mean"]["r_mean"]
    return (text + f"; 70% of the full set's {full['final']['mean']['r_mean']:.1f} is {target:.1f}: best distilled "
            f"{best:.1f} {'reaches' if best >= target else 'does not reach'} it")


def phasing_note(bench, level="synthetic", n=CROSS_SIZE):
    """How the same phased subsets add up under each use, from the measurements (corrects an earlier note)."""
    m = lambda name: _test(_load(bench, level, name))[0]["r_mean"]
    try:
        one, two = m(f"PTM+ST+EMA_D1_alone_N{n}"), m(f"PTM+ST+EMA_D2_alone_N{n}")
        seq, union = m(f"PTM+ST+EMA_sequential_N{n}"), m(f"PTM+ST+EMA_union_N{n}")
        cum_c, union_c = m(f"PTM+ST+EMA_conditioned_cumulative_N{n}"), m(f"PTM+ST+EMA_conditioned_union_N{n}")
    except FileNotFoundError:
        return []
    return [f"How the same phased subsets add up (`{level}`, N = {n}, PTM+ST+EMA, test mean recall): D_1 alone "
            f"{one:.1f}, D_2 alone {two:.1f}, D_1 then D_2 (sequential) {seq:.1f}, D_1 and D_2 as one set (union) "
            f"{union:.1f}. A student trained on D_2 after D_1 does {'not ' if seq - two > 2 else ''}end near where "
            f"D_2 alone takes it ({seq - two:+.1f} points; an earlier version of this note said it did, which "
            f"measurements on the demo's subsets contradicted), and training on the union instead of in sequence "
            f"moves it by {union - seq:+.1f}. Distilled with `--phase_conditioning cumulative` (D_2 learned beside "
            f"the frozen D_1), the two subsets give {cum_c:.1f} (cumulative) and {union_c:.1f} (union).", ""]


def why_note(bench, level="synthetic", n=CROSS_SIZE):
    """What the measurements say about why phasing does or does not pay off here."""
    m = lambda name: _test(_load(bench, level, name))[0]["r_mean"]
    try:
        curve, _ = expert_curve(bench, level)
        st, union, cum_c, union_c = (m(f"ST_N{n}"), m(f"PTM+ST_union_N{n}"), m(f"PTM+ST_conditioned_cumulative_N{n}"),
                                     m(f"PTM+ST_conditioned_union_N{n}"))
    except FileNotFoundError:
        return []
    last = max(curve)
    return [f"What the evidence says (`{level}`, N = {n}, test mean recall). Data side: two 25-pair subsets each "
            f"distilled alone (PTM+ST, no EMA) reach {union:.1f} trained on as one set, against {st:.1f} for 50 pairs "
            f"distilled in one phase (ST): splitting the budget into halves distilled apart costs {st - union:.1f} "
            f"points. Distilling D_2 beside the frozen D_1 (`--phase_conditioning cumulative`) gives {cum_c:.1f} "
            f"(cumulative) / {union_c:.1f} (union), {max(cum_c, union_c) - union:+.1f} over the unconditioned "
            f"subsets. Teacher side: the experts reach {curve[3]:.1f} of their final {curve[last]:.1f} mean recall "
            f"by epoch 3, and the two phases match start epochs [0,2) and [1,3): both phases' targets lie where the "
            f"experts have already done most of their learning; `synthetic_hard`'s experts are still at {_curve_at(bench)} by "
            "epoch 3, which is why that level was added; its notes below measure whether later phases then add "
            "more (they did not).", ""]


def _curve_at(bench, level="synthetic_hard"):
    try:
        curve, _ = expert_curve(bench, level)
    except FileNotFoundError:
        return "(not run)"
    return f"{curve[3]:.1f} of {curve[max(curve)]:.1f}"


def subsets_note(bench, level, n):
    """How the val-best phased row's subsets add up, beside the single phases on the same start windows."""
    row, m = best_phased(bench, level, n), lambda name: _test(_load(bench, level, name))[0]["r_mean"]
    if row is None:
        return []
    try:
        alone = [m(f"{row}_D{p + 1}_alone_N{n}") for p in range(len(RUNS[_row(row)[1]].phases))]
        uses = {mode: m(f"{row}_{mode}_N{n}") for mode in ("sequential", *modes(row))}
    except FileNotFoundError:
        return []
    sizes = [f"D_{p + 1} alone {v:.1f}" for p, v in enumerate(alone)]
    text = (f"How the subsets of the best phased row add up (`{level}`, N = {n}, {row}, test mean recall): "
            f"{', '.join(sizes)}; " + ", ".join(f"{mode} {v:.1f}" for mode, v in uses.items()) +
            f". Training on D_2 too moves a student {max(uses.values()) - alone[0]:+.1f} over D_1 alone.")
    same = [(lo, hi) for _, lo, hi in RUNS[_row(row)[1]].phases]
    singles = {r: _test(rep)[0]["r_mean"] for r, (_, rep) in picked_rows(bench, level, n).items()
               if not phased(r) and RUNS[_row(r)[1]].phases[0][1:] in same and RUNS[_row(r)[1]].phases[0][0] ==
               RUNS[_row(row)[1]].phases[0][0]}
    if singles:
        best = max(singles, key=singles.get)
        text += (" One phase on the same windows at the full budget: " +
                 ", ".join(f"{r} {v:.1f}" for r, v in singles.items()) + f". Distilling {round(n * RUNS[_row(row)[1]].split)} of the {n} pairs for "
                 f"phase 1 costs {singles[best] - alone[0]:.1f} ({best} against D_1 alone); D_2 gives back "
                 f"{max(uses.values()) - alone[0]:.1f} of it.")
    return [text, ""] + levers_note(bench, level, n)


def levers_note(bench, level, n):
    """The lever rows (late windows, budget splits) beside the best single-phase and phased rows of the others."""
    picked = picked_rows(bench, level, n)
    late = {r: p for r, p in picked.items() if r in LEVER_ROWS + CONTROL_ROWS}
    rest = {r: p for r, p in picked.items() if r not in late}
    if not late or not rest:
        return []
    cell = lambda r, p: f"{r}{f' [{p[0]}]' if p[0] != '-' else ''} {_test(p[1])[0]['r_mean']:.1f} (val {_val(p[1]):.1f})"
    groups = [[r for r in rest if phased(r) == ph] for ph in (False, True)]
    best = [cell(r, rest[r]) for r in (_best_on_val(rest, g) for g in groups if g)]
    skipped = [r for r in LEVELS[level]["sizes"][n] if r not in bench.rows[level][n]]
    where = f"; *late*: start windows on `{LATE}`" if any(r in LEVER_ROWS for r in late) else ""
    return [f"Levers (`{level}`, N = {n}, test mean recall and val{where}): " +
            "; ".join(cell(r, p) for r, p in late.items()) + ". Best of the other rows, on val: " +
            "; ".join(best) + "." + (f" Not run this time (`--rows`): {'; '.join(skipped)}." if skipped else ""), ""]


def control_note(bench, level, n):
    """Budget split or later teacher: the same-window control beside one phase and the standard two phases."""
    m = lambda row: _test(chosen(bench, level, row, n)[1])[0]["r_mean"]
    try:
        same, two, one = m(CONTROL_ROWS[0]), m("PTM+ST, conditioned"), m("ST")
        same_ema, two_ema = m(CONTROL_ROWS[1]), m("PTM+ST+EMA, conditioned")
    except FileNotFoundError:
        return []
    ema = f" With EMA: {same_ema:.1f} and {two_ema:.1f}, so the later teacher moves it {two_ema - same_ema:+.1f}."
    return [f"Budget split or later teacher (`{level}`, N = {n}, test mean recall, each phased row under its val-picked "
            f"mode): two conditioned phases on the same start window [0,2) give {same:.1f}, against {one:.1f} for one "
            f"phase on that window at the full budget (ST) and {two:.1f} with the second phase on [1,3) (PTM+ST, "
            f"conditioned). Splitting the budget alone, with no later teacher, costs {one - same:.1f}; the later "
            f"teacher then moves it {two - same:+.1f}.{ema}", ""]


def teacher_note(bench, level, row, n):
    """Where the expert learning curve stands at the start windows of a row's phases, and where D_1 leaves a student."""
    try:
        curve, _ = expert_curve(bench, level)
    except FileNotFoundError:
        return []
    last, phases = max(curve), RUNS[_row(row)[1]].phases
    at = [f"[{lo},{hi}) targets epochs {lo + 1}-{hi} of its shortcut line ({', '.join(f'{curve[e]:.1f}' for e in range(lo + 1, hi + 1) if e in curve)})"
          for _, lo, hi in phases]
    text = (f"Teacher side (`{level}`, N = {n}): the experts' test mean recall goes from {curve[1]:.1f} after epoch 1 to "
            f"{curve[last]:.1f} after epoch {last}; the phases of {row}: " + "; ".join(at) + ".")
    d1 = _load_or_none(bench, level, f"{row}_D1_alone_N{n}")
    if d1 and len(phases) > 1:
        reached = _test(d1)[0]["r_mean"]
        passed = [e for e in curve if curve[e] <= reached]
        text += (f" A student trained on D_1 alone reaches {reached:.1f}, " +
                 (f"about the experts' level after epoch {max(passed)} ({curve[max(passed)]:.1f})" if passed
                  else "below the experts' level after epoch 1") +
                 f", while phase 2 was distilled from expert states at start epochs [{phases[1][1]},{phases[1][2]}).")
    return [text, ""]


def _step_minutes(bench, level=None):
    steps = _steps(bench, level)
    return sum(seconds for seconds, _, _ in steps) / 60


def _steps(bench, level=None):
    """(seconds, end time, loads) of the finished steps (of one level's, where given)."""
    logs, steps = os.path.join(bench.work, "logs"), []
    for f in os.listdir(logs):
        if not f.endswith(".seconds") or (level and _level_of(f) != level):
            continue
        path = os.path.join(logs, f)
        load = path[:-len(".seconds")] + ".load"
        loads = [float(x) for x in open(load).read().split()] if os.path.isfile(load) else []
        steps.append((float(open(path).read()), os.path.getmtime(path), loads))
    return steps


def _level_of(step):
    return max((lv for lv in LEVELS if step.startswith(lv + "_")), key=len, default=None)


def provenance(bench, level):
    """The run a level's section comes from: when, how long, how loaded the machine was."""
    steps = _steps(bench, level)
    start, end = min(t - s for s, t, _ in steps), max(t for _, t, _ in steps)
    loads = [x for _, _, ls in steps for x in ls]
    when = f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(start))}-{time.strftime('%H:%M', time.gmtime(end))} UTC"
    load = f", 1-min load average {statistics.mean(loads):.1f} (min {min(loads):.1f}, max {max(loads):.1f}) at the " \
           "steps' starts and ends" if loads else ""
    return (f"*Run:* {when}, {_step_minutes(bench, level):.0f} min of single-thread steps, {bench.a.jobs} at a time, on "
            f"a 2-core machine shared with other work{load}; step logs: `<workdir>/logs/{level}_*`.")


class Earlier(NamedTuple):
    """An earlier report cut up by level and budget N, so that what a run does not redo is carried over verbatim."""
    heads: dict  # level -> its section's lines before the first budget (title, *Run:*, expert curve)
    sizes: dict  # (level, N) -> the budget's subsection
    verdicts: dict  # (level, N) -> its bullets under "Does phasing pay off?" (N None: lines naming no budget)
    notes: dict  # (level, N) -> its paragraphs there, each followed by a blank line
    order: dict  # (level, N) -> its "- measured" lines of the ablation order
    run: str  # the whole report's provenance, in the format before levels had their own


def earlier(text):
    heads, sizes, verdicts, notes, order, chapter, key = {}, {}, {}, {}, {}, "", None
    for line in text.splitlines():
        if line.startswith("## "):
            chapter, key = line, None
        level, n = _first_tick(line), _budget(line)
        if chapter.startswith("## `") and line.startswith("### N = "):
            key = (_first_tick(chapter), n)
        if chapter.startswith("## `"):
            (sizes.setdefault(key, []) if key else heads.setdefault(_first_tick(chapter), [])).append(line)
        elif chapter == "## Does phasing pay off?" and level in LEVELS and line:
            if line.startswith("- "):
                verdicts.setdefault((level, n), []).append(line)
            else:
                notes.setdefault((level, n), []).extend([line, ""])
        elif chapter == "## The paper's ablation order" and line.startswith("- measured") and level in LEVELS:
            order.setdefault((level, n), []).append(line)
    run = re.search(r"\(these figures: ([^)]*)\)", text)
    return Earlier(heads, sizes, verdicts, notes, order, run.group(1) if run else "its run is not recorded")


def _first_tick(line):
    found = re.search(r"`([^`]*)`", line or "")
    return found.group(1) if found else None


def _budget(line):
    found = re.search(r"N = (\d+)", line)
    return int(found.group(1)) if found else None


NOT_RERUN = "*Run:* not rerun in the latest run of the benchmark; carried over unchanged from the earlier report"


def carried_head(old, level):
    """A level not rerun: its old head, with the provenance line older reports lack."""
    head = list(old.heads[level])
    if not any(line.startswith("*Run:*") for line in head):
        head[1:1] = ["", f"{NOT_RERUN} ({old.run})."]
    return head


def carried_size(old, level, n):
    """A budget not rerun within a rerun level: its old subsection under the provenance of the run it came from."""
    section = list(old.sizes[(level, n)])
    if not any(line.startswith("*Run:*") for line in section):
        run = next(x for x in carried_head(old, level) if x.startswith("*Run:*"))
        if not run.startswith(NOT_RERUN):
            run = f"{NOT_RERUN} ({run[len('*Run:* '):].rstrip('.')})."
        section[1:1] = ["", run]
    return section + ([""] if section[-1] else [])


def fresh_size(bench, level, n, old):
    """Whether budget N of a rerun level is reported from the workdir: run this time, or not in the old report."""
    return n in bench.rows[level] and (os.path.isfile(bench.eval_path(level, f"random_N{n}")) or
                                       (level, n) not in old.sizes)


def report_sizes(bench, level, old):
    return [n for n in LEVELS[level]["sizes"] if n in bench.rows[level] or (level, n) in old.sizes]


def write_report(bench):
    old = earlier(open(bench.a.out).read() if os.path.isfile(bench.a.out) else "")
    fresh = [lv for lv in LEVELS if lv in bench.a.levels and os.path.isfile(
        os.path.join(bench.traj(lv), "normal", "metrics.jsonl"))]
    levels = [lv for lv in LEVELS if lv in fresh or lv in old.heads]
    # (level, N) of every budget reported, and whether it is regenerated or carried
    budgets = {lv: report_sizes(bench, lv, old) if lv in fresh else [n for v, n in old.sizes if v == lv]
               for lv in levels}
    regen = {(lv, n) for lv in fresh for n in budgets[lv] if fresh_size(bench, lv, n, old)}
    kept = {(lv, n) for lv in fresh for n in budgets[lv] if (lv, n) not in regen} | \
        {key for part in (old.sizes, old.verdicts, old.notes, old.order) for key in part if key[0] not in fresh}
    plan = Plan(budgets, regen, kept)
    lines = ["# Results on the built-in synthetic dataset and its harder level", "",
             "Regenerate with `python -m bench.ablation` (a level or budget not rerun keeps its section of the earlier "
             "report; each section says which run it comes from). "
             f"Every row: {bench.a.num_eval} fresh students (seeds fixed), score after the final epoch, mean ± std "
             "over the students, on the test split unless marked val. Image encoder "
             f"`{ENCODER}` (trainable), text features `{TEXT}` (all-MiniLM-L6-v2 [CLS], 384-d). `synthetic_hard` draws "
             "two shapes per image (captions name both).", "",
             "Phased rows are evaluated under the two `--eval_mode`s they are meant for (subsets distilled alone: "
             "the paper's sequential, or union; conditioned subsets: cumulative, or union; test mean recall of each "
             "in the column 'sequential / cumulative / union') and reported under the one with the better val mean "
             "recall. "
             "Rows marked *conditioned* were distilled with `--phase_conditioning cumulative`; *exact gradient*: "
             "`--matching adjoint` (the other rows: `constant`); *late*: the shortcut window "
             f"`{LATE}` (the hard level's whole expert run), start epochs as given, EMA rows with EMA; *split a/b*: "
             "the phases' shares of N (other two-phase rows: halves). Same settings otherwise.", ""]
    verdicts = {}
    for level in levels:
        if level not in fresh:
            head = carried_head(old, level)
            lines += head + ([""] if head[-1] else []) + [x for n in budgets[level] for x in old.sizes[(level, n)]]
            continue
        section = level_section(bench, level, verdicts.setdefault(level, []), old, plan)
        lines += section[:1] + ["", provenance(bench, level)] + section[1:]
    lines += ["## Does phasing pay off?", "", "The bar: the best phased method (selected on val) beats the best "
              "single-phase method at the same budget by more than two standard deviations on test, and distilled "
              "data reach 70% of the full-data mean recall.", ""]
    for level in levels:
        lines += plan.lines(old.verdicts, level, lambda n: [f"- {v}" for v in verdicts.get(level, [])
                                                              if v.startswith(f"`{level}`, N = {n}:")])
    missing = [f"`{lv}` N = {n}" for lv, n in sorted(regen)
               if not any(v.startswith(f"`{lv}`, N = {n}:") for v in verdicts.get(lv, []))]
    if missing:
        lines.append(f"- not judged: {', '.join(missing)}: not finished in this run (a machine shared with "
                     "other work: see the s/iter column); `python -m bench.ablation` runs them")
    lines.append("")
    for level in levels:
        lines += plan.lines(old.notes, level, lambda n: notes(bench, level, n))
    lines += ["## The paper's ablation order", "", "- paper (Table 4, Flickr30k): BASE < EMA < PTM < ST < PTM+ST < "
              "PTM+ST+EMA"]
    for level in levels:
        lines += plan.lines(old.order, level, lambda n: ablation_order(bench, level, n))
    lines += ["", "## Settings", ""] + settings(bench)
    os.makedirs(os.path.dirname(os.path.abspath(bench.a.out)), exist_ok=True)
    with atomic_path(bench.a.out) as tmp, open(tmp, "w") as f:
        f.write("\n".join(lines))


class Plan(NamedTuple):
    """Which budgets of which levels a report regenerates from the workdir and which it carries over."""
    budgets: dict  # level -> its budgets N in report order
    regen: set  # (level, N) regenerated
    kept: set  # (level, N) carried from the earlier report (N None: its lines naming no budget)

    def lines(self, part, level, regenerate):
        """A part's lines (verdicts, notes, order) for a level, budget by budget: `regenerate(N)` or the old ones."""
        keys = [(level, n) for n in self.budgets[level]] + [k for k in part if k[0] == level and
                                                             k[1] not in self.budgets[level]]
        return [x for key in keys for x in (regenerate(key[1]) if key in self.regen else
                                            part.get(key, []) if key in self.kept else [])]


def ablation_order(bench, level, n):
    means = {r: _test(rep)[0]["r_mean"] for r, (_, rep) in picked_rows(bench, level, n).items()}
    return [f"- measured, `{level}`, N = {n}: " + " < ".join(f"{r} ({means[r]:.1f})" for r in sorted(means, key=means.get))
            ] if means else []


def notes(bench, level, n):
    """The paragraphs under the verdicts for one level and budget."""
    text = phasing_note(bench) + why_note(bench) if level == "synthetic" and n == CROSS_SIZE else []
    best = best_phased(bench, level, n)
    return (text + subsets_note(bench, level, n) + control_note(bench, level, n) +
            (teacher_note(bench, level, best, n) if best else []))


def settings(bench):
    runs = [f"{name}: " + " then ".join(f"{t} start [{lo},{hi})" for t, lo, hi in run.phases) +
            f", conditioning {run.conditioning}, matching {run.matching}" + (", EMA" if run.ema else "") +
            (f", split {run.split:g}" if len(run.phases) > 1 and run.split != 0.5 else "") for name, run in RUNS.items()]
    return [f"- experts: `buffer.py {' '.join(EXPERT_ARGS)}`, `--train_epochs` " +
            ", ".join(f"{LEVELS[lv]['epochs']} (`{lv}`)" for lv in LEVELS) + "; shortcut windows " +
            ", ".join(f"{LEVELS[lv]['windows']} (`{lv}`)" for lv in LEVELS),
            f"- distillation: `{' '.join(DISTILL)}`, {ITERATIONS} iterations per phase, two-phase rows split N "
            f"in halves unless a split is given, minibatches of {MINI_BATCH} pairs, EMA decay {EMA} where the run "
            "has EMA, else 0; every run distills all its phases itself",
            "- runs: " + "; ".join(runs),
            "- rows -> runs: " + "; ".join(f"{r}: {run} ({kind})" for r, run, kind in ROWS),
            "- PTM (normal trajectories, two phases) is left out of this version for time",
            "- a run with EMA gives two rows: its EMA subsets (`distilled_<p>_final.pt`) and its raw subsets "
            "(`distilled_<p>_final_raw.pt`, exactly what the same run without EMA ends with)",
            f"- evaluation: `evaluate.py {' '.join(PROTOCOL)} --num_eval {bench.a.num_eval}` (`--eval_mode` per "
            "phased row as above); baselines use the teacher lrs (full set: 10 epochs at 0.1 x (1 - momentum))",
            "- hyper-parameters, all chosen on the val split only, never on test: in earlier runs of this benchmark "
            "lr_img {10, 30, 100, 300}, lr_txt {1, 3, 10, 30}, lr_sim {0.01, 0.03, 0.1}, lr_lr {1e-4, 3e-4, 1e-3} "
            "on ST at N = 50 (`synthetic`) and, for the two-phase rows, the iterations per phase (60 vs 120) and "
            "the phase split (8+12 vs 10+10) on PTM+ST+EMA at N = 20; on `synthetic_hard` the *late* and *split* rows "
            "are the levers tried (start windows, one or two phases, the budget split), each with its val score in the "
            "table; in every run the eval mode of each phased row and the best single-phase and best phased rows "
            "of the verdicts. The other settings are not tuned per level",
            "- s/iter and peak MB: one distillation iteration on one CPU thread while other jobs share the "
            "machine; peak memory is the process's peak resident set", ""]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="results/bench", help="where data, buffers, runs and logs go (default: results/bench)")
    p.add_argument("--out", default="docs/results.md", help="the markdown report (default: docs/results.md)")
    p.add_argument("--levels", nargs="+", default=list(LEVELS), choices=list(LEVELS),
                   help="dataset levels (default: synthetic synthetic_hard)")
    p.add_argument("--sizes", type=int, nargs="+", help="only these budgets N (default: each level's)")
    p.add_argument("--rows", nargs="+", choices=[r[0] for r in ROWS], metavar="ROW",
                   help="only these rows (default: each budget's); one of: " + "; ".join(r[0] for r in ROWS))
    p.add_argument("--num_eval", type=int, default=3, help="evaluation seeds per row (default: 3)")
    p.add_argument("--jobs", type=int, default=2, help="parallel single-thread jobs (default: 2)")
    p.add_argument("--device", default="cpu", help="device of every step (default: cpu; the figures here are CPU)")
    p.add_argument("--report_only", action="store_true", help="write the report from the finished steps only")
    a = p.parse_args()
    bench = Bench(a)
    if a.report_only:
        write_report(bench)
    else:
        bench.main()


if __name__ == "__main__":
    main()
