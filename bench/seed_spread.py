"""How much of a difference between ablation rows is the distillation's seed? Reruns the distillation of rows of
`python -m bench.ablation` with other --seed values (the same experts, recipe and settings: the synthetic set's
initialisation, the start epochs and minibatches drawn, blending's draws), evaluates each as the ablation does (its
students, phased rows under the eval mode val picks) and prints each row's spread over the seeds and, seed by seed,
its difference from the first row given. Seed 0 is the ablation's own run; the others go to `<run>_seed<s>`.

    python -m bench.seed_spread --workdir results/bench --level synthetic_hard --size 50 --seeds 0 1 2 3 \\
        --rows "PTM+ST+EMA, symmetric heads" "PTM+ST+EMA, symmetric heads, blending"

Records (one per row and seed) go to --store and are carried over: a rerun adds what is missing and keeps what is
there, so the work directory may be deleted once they are stored.
"""
import argparse
import os
import statistics

from bench.ablation import collect, store
from bench.ablation.plan import LEVELS, ROWS, level_iterations, row
from bench.ablation.runner import Bench
from common.errors import cli_main
from distill_utils import cli_args

STORE = "bench/results/seed_spread.jsonl"


class SeededBench(Bench):
    """The ablation's steps with --seed `seed` added, in run directories of their own (<run>_seed<s>); their
    evaluations go to eval/<level>/seed<s>/ and their step logs to logs/seed<s>_<step>, where the ablation's records
    of the level (collect.records) do not take them in."""

    def __init__(self, a, seed: int):
        super().__init__(a)
        self.seed, self.suffix, self.prefix = seed, f"_seed{seed}" if seed else "", f"seed{seed}" if seed else ""

    def run_dir(self, level, run, n):
        return super().run_dir(level, run, n) + self.suffix

    def distill_job(self, level, run, n):
        name, script, *args, done = super().distill_job(level, run, n)
        return (self.log(name), script, *args, *(["--seed", str(self.seed)] if self.seed else []), done)

    def log(self, step):
        return f"{self.prefix}_{step}" if self.seed else step

    def eval_path(self, level, name):
        directory, file = os.path.split(super().eval_path(level, name))
        return os.path.join(directory, self.prefix, file)

    def eval_job(self, level, name, *args, **kw):
        name_, *rest = super().eval_job(level, name, *args, **kw)
        return (self.log(name_), *rest)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.seed_spread", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="results/bench", help="the ablation's work directory (default: results/bench)")
    p.add_argument("--level", required=True, choices=list(LEVELS), help="dataset level")
    p.add_argument("--size", type=int, required=True, help="the budget N")
    p.add_argument("--rows", nargs="+", required=True, choices=[r[0] for r in ROWS], metavar="ROW",
                   help="ablation rows (python -m bench.ablation --help lists them); the first is the reference")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="distillation seeds (default: 0 1 2)")
    p.add_argument("--iterations", type=int, help="iterations per phase, as bench.ablation's (default: the level's)")
    p.add_argument("--num_eval", type=int, default=3, help="students per evaluation (default: 3)")
    p.add_argument("--jobs", type=int, default=2, help="single-thread steps at a time (default: 2)")
    p.add_argument("--device", default="cpu", help="cpu | cuda (default: cpu)")
    p.add_argument("--store", default=STORE, help=f"the records (default: {STORE})")
    a = p.parse_args(argv)
    cli_args.positive(a, "iterations", "num_eval", "jobs")
    cli_args.check_seed(a, "seeds")
    if a.size not in LEVELS[a.level]["sizes"]:
        p.error(f"--size: {a.level} has budgets {sorted(LEVELS[a.level]['sizes'])}, not {a.size}")
    missing = [r for r in a.rows if r not in LEVELS[a.level]["sizes"][a.size]]
    if missing:
        p.error(f"--rows: not run at {a.level} N = {a.size}: {'; '.join(missing)}")
    # the fields Bench reads
    a.levels, a.sizes, a.curve_points = [a.level], [a.size], 0
    return a


def measure(a, seed: int) -> list:
    """Distil and evaluate every row at one seed (skipping finished steps); one record per row."""
    bench = SeededBench(a, seed)
    runs = dict.fromkeys(row(r)[1] for r in a.rows)
    bench.parallel([bench.distill_job(a.level, run, a.size) for run in runs])
    bench.parallel([job for name in a.rows for job in bench.row_evals(a.level, name, a.size)])
    out = []
    for name in a.rows:
        mode, report, _ = collect.chosen(bench, a.level, name, a.size)
        out.append({"level": a.level, "n": a.size, "row": name, "iterations": bench.iterations(a.level), "seed": seed,
                    "mode": mode, "test": report["final"]["mean"]["r_mean"],
                    "test_std": report["final"]["std"]["r_mean"], "val": collect.val_of(report),
                    "students": len(report["runs"])})
    return out


def key(r):
    return r["level"], r["n"], r["row"], r["iterations"], r["seed"]


def _sd(xs):
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def table(records, a, its) -> list:
    """Markdown: each row's test mean recall per seed and over the seeds, then its per-seed difference from the
    first row."""
    by = {(r["row"], r["seed"]): r for r in records if (r["level"], r["n"], r["iterations"]) == (a.level, a.size, its)}
    seeds = [s for s in a.seeds if all((name, s) in by for name in a.rows)]
    lines = [f"{a.level}, N = {a.size}, {its} iterations per phase, seeds {' '.join(map(str, seeds))} "
             "(test mean recall, each the mean of its students):", "",
             "| row | per seed | mean ± std over seeds | val, mean over seeds |", "|---|---|---|---|"]
    for name in a.rows:
        test = [by[name, s]["test"] for s in seeds]
        val = [by[name, s]["val"] for s in seeds]
        lines.append(f"| {name} | {' / '.join(f'{t:.1f}' for t in test)} | {statistics.mean(test):.1f} ± "
                     f"{_sd(test):.1f} | {statistics.mean(val):.1f} |")
    ref = a.rows[0]
    for name in a.rows[1:]:
        diff = [by[name, s]["test"] - by[ref, s]["test"] for s in seeds]
        lines.append(f"\n{name} minus {ref}, seed by seed: {' / '.join(f'{d:+.1f}' for d in diff)}; mean "
                     f"{statistics.mean(diff):+.1f} ± {_sd(diff):.1f}, above 0 at {sum(d > 0 for d in diff)} of "
                     f"{len(diff)} seeds")
    return lines


@cli_main
def main(argv=None) -> None:
    a = parse_args(argv)
    stored = store.read(a.store)
    have = {key(r) for r in stored}
    its = a.iterations or level_iterations(a.level)
    for seed in a.seeds:
        if all((a.level, a.size, name, its, seed) in have for name in a.rows):
            continue
        new = [r for r in measure(a, seed) if key(r) not in have]
        stored += new
        have |= {key(r) for r in new}
        store.write(stored, a.store)
    print("\n".join(table(stored, a, its)))


if __name__ == "__main__":
    main()
