"""Does it work? The paper's ablation, conditioned phases, baselines and a cross-architecture check on the built-in
dataset and its harder level (docs/results.md).

    python -m bench.ablation                    # runs what is missing, stores the rows, fills docs/results.md
    python -m bench.ablation --report_only      # fills the tables of docs/results.md from the stored rows alone
    python -m bench.ablation --facts            # prints the figures the report's prose is written from

For each dataset level and budget N: builds the experts (recall logged every epoch: the learning curves) and
shortcut trajectories, distills the ablation rows (BASE, EMA, PTM, ST, PTM+ST, PTM+ST+EMA), the rows distilled
with --phase_conditioning cumulative, and, where the matching mode is there, rows with the exact (adjoint) gradient;
on `synthetic_hard`, the levers of the phased method (start windows where its experts still improve, the budget
split) and one phase on the same windows (the *late* rows); on `synthetic` at N = 50, a control with both phases on
the same start window (the split without a later teacher); then evaluates every row, the random and prototype
coresets and the full training set under one protocol (fresh students, --num_eval seeds, final-epoch scores). Every
step is the demo's recipe with overrides (plan.py). A phased row is evaluated under the two --eval_modes it is
meant for and reported under the one with the better final-epoch mean recall on the val split; the distillation
hyper-parameters were chosen on the val split too, never on test.

runner.py runs the steps into --workdir (a rerun skips the steps whose outputs are there), collect.py turns the
finished ones into records of the results store (store.py, bench/results/ablation.jsonl: a rerun's rows replace the
stored ones, the others stay), report.py fills the tables of --out from the store, facts.py prints the figures.
"""
import argparse

from bench.ablation import collect, facts, report, store
from bench.ablation.plan import LEVELS, ROWS
from bench.ablation.runner import Bench


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.ablation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="results/bench", help="where data, buffers, runs and logs go (default: results/bench)")
    p.add_argument("--out", default="docs/results.md", help="the report whose tables are filled (default: docs/results.md)")
    p.add_argument("--store", default=store.PATH, help="the results store (default: bench/results/ablation.jsonl)")
    p.add_argument("--levels", nargs="+", default=list(LEVELS), choices=list(LEVELS),
                   help="dataset levels (default: synthetic synthetic_hard synthetic_paper)")
    p.add_argument("--sizes", type=int, nargs="+", help="only these budgets N (default: each level's)")
    p.add_argument("--rows", nargs="+", choices=[r[0] for r in ROWS], metavar="ROW",
                   help="only these rows (default: each budget's); one of: " + "; ".join(r[0] for r in ROWS))
    p.add_argument("--iterations", type=int, help="distillation iterations per phase (default: each level's: 100; "
                   "synthetic_paper: the paper's 2,000); fewer go to runs/<level>/<run>_N<n>_it<k>")
    p.add_argument("--curve_points", type=int, default=0,
                   help="save each phase's subset this many times (evenly) for the val curve (default: at the end)")
    p.add_argument("--num_eval", type=int, default=3, help="evaluation seeds per row (default: 3)")
    p.add_argument("--jobs", type=int, default=2, help="parallel single-thread jobs (default: 2)")
    p.add_argument("--device", default="cpu", help="device of every step (default: cpu; the figures here are CPU)")
    p.add_argument("--rerun_tag", metavar="TAG", help="store the records of rows, evaluations and curves the store "
                   "already has beside them, labelled (TAG), instead of over them (a rerun next to new rows)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--collect_only", action="store_true",
                      help="store the finished steps of --workdir and fill the report; run nothing")
    what.add_argument("--report_only", action="store_true", help="fill the report from the store alone")
    what.add_argument("--facts", action="store_true", help="print the figures the report's prose is written from")
    return p.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    if a.facts:
        print("\n".join(facts.lines(store.read(a.store))))
        return
    if not a.report_only:
        bench = Bench(a)
        if not a.collect_only:
            bench.main()
        old, new = store.read(a.store), collect.records(bench)
        store.write(store.merged(old, store.tagged(old, new, a.rerun_tag) if a.rerun_tag else new), a.store)
        print(f"bench: results -> {a.store}")
    report.write(store.read(a.store), a.out)
    print(f"bench: tables -> {a.out}")


if __name__ == "__main__":
    main()
