"""bench.ablation's report: a level not rerun keeps its section of the earlier report, and rows, modes and the
verdict's best rows are picked on val, never on test."""
import argparse
import json
import os

from bench import ablation
from distill_utils.evaluation.summary import COLUMNS

OLD = """# Results

Regenerate with `python -m bench.ablation` (these figures: 267 min of single-thread steps in all, 2026-11-26). Every row.

## `synthetic`

Expert learning curve:

| method | mean |
|---|---|
| ST | 56.1 ± 3.9 |

## `synthetic_hard`

| method | mean |
|---|---|
| ST | 40.4 ± 3.5 |

## Does phasing pay off?

The bar: no backticks here.

- `synthetic`, N = 50: best phased 51.9 vs ST 58.2
- `synthetic_hard`, N = 50: best phased 34.0 vs ST 40.4

How the same phased subsets add up (`synthetic`, N = 50): D_1 alone 35.5.

## The paper's ablation order

- paper (Table 4, Flickr30k): BASE < EMA
- measured, `synthetic`, N = 50: BASE (39.2) < ST (56.1)
- measured, `synthetic_hard`, N = 50: BASE (27.7) < ST (40.4)

## Settings

- experts: `buffer.py --num_experts 2`
"""


def _report(test, val):
    """An evaluate.py report whose every column is `test` (std 1) and whose final val mean recall is `val`."""
    keys = [k for _, k in COLUMNS]
    return {"final": {"mean": dict.fromkeys(keys, test), "std": dict.fromkeys(keys, 1.0)},
            "runs": [{"points": [{"val": {"r_mean": val}}]}], "phases": [{"pairs": 2000}]}


def _write(path, obj, lines=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in obj) if lines else json.dumps(obj))


def _bench(tmp_path, level="synthetic_hard", n=50):
    """A finished level and budget (default `synthetic_hard`, N = 50) with ST, PTM+ST (both modes) and the
    baselines, all made up."""
    a = argparse.Namespace(workdir=str(tmp_path / "work"), out=str(tmp_path / "results.md"), levels=[level],
                           sizes=[n], rows=["ST", "PTM+ST", "PTM+ST, conditioned"], num_eval=3, jobs=2, device="cpu")
    bench = ablation.Bench(a)
    curve = [{"expert": e, "epoch": ep, "r_mean": 10.0 * ep} for e in range(2) for ep in range(11)]
    _write(os.path.join(bench.traj(level), "normal", "metrics.jsonl"), curve, lines=True)
    evals = {f"random_N{n}": _report(10, 11), f"prototype_N{n}": _report(15, 17), "full": _report(80, 79),
             f"ST_N{n}": _report(45, 40),  # the best test, the worst val
             f"PTM+ST_sequential_N{n}": _report(44, 41), f"PTM+ST_union_N{n}": _report(30, 42)}
    for name, report in evals.items():
        _write(bench.eval_path(level, name), {"results": {"x": report}})
    for run in ("shortcut", "phased_shortcut"):
        done = {"event": "phase_done", "seconds_per_iteration": 2.0, "peak_memory_mb": 900}
        _write(os.path.join(bench.run_dir(level, run, n), "metrics.jsonl"), [done], lines=True)
    for step, seconds in ((f"{level}_experts_0", 60), (f"{level}_eval_ST_N{n}", 30)):
        with open(os.path.join(bench.work, "logs", f"{step}.seconds"), "w") as f:
            f.write(f"{seconds}\n")
        with open(os.path.join(bench.work, "logs", f"{step}.load"), "w") as f:
            f.write("1.00 3.00\n")
    return bench


def test_level_not_rerun_is_carried_over_and_the_rerun_one_regenerated(tmp_path):
    bench = _bench(tmp_path)
    with open(bench.a.out, "w") as f:
        f.write(OLD)
    ablation.write_report(bench)
    new = open(bench.a.out).read()
    old_section = OLD[OLD.index("## `synthetic`"):OLD.index("## `synthetic_hard`")]
    assert old_section.replace("## `synthetic`\n", "") in new  # the rows, verbatim
    assert "carried over unchanged from the earlier report (267 min of single-thread steps in all, 2026-11-26)" in new
    for line in ("- `synthetic`, N = 50: best phased 51.9 vs ST 58.2", "How the same phased subsets add up "
                 "(`synthetic`, N = 50): D_1 alone 35.5.", "- measured, `synthetic`, N = 50: BASE (39.2) < ST (56.1)"):
        assert new.count(line) == 1
    # the rerun level is regenerated from the workdir, never carried: its old figures are gone
    assert "40.4" not in new and "34.0" not in new
    assert "*Run:*" in new.split("## `synthetic_hard`")[1].split("###")[0]
    assert "1-min load average 2.0 (min 1.0, max 3.0)" in new
    assert "| PTM+ST, conditioned | not finished in this run |" in new
    # a second report over the first keeps the carried section once, with one provenance line
    ablation.write_report(bench)
    again = open(bench.a.out).read()
    assert again == new and again.count("*Run:*") == 2


def test_modes_and_verdict_pick_on_val_not_test(tmp_path):
    bench = _bench(tmp_path)
    mode, report, _ = ablation.chosen(bench, "synthetic_hard", "PTM+ST", 50)
    assert mode == "union" and report["final"]["mean"]["r_mean"] == 30  # val 42 > 41, though test 30 < 44
    picked = ablation.picked_rows(bench, "synthetic_hard", 50)
    assert set(picked) == {"ST", "PTM+ST"}
    assert ablation.best_phased(bench, "synthetic_hard", 50) == "PTM+ST"
    text = ablation.verdict("synthetic_hard", 50, picked, _report(80, 79))
    assert "best phased (on val) PTM+ST [union] 30.0 ± 1.0 vs best single-phase ST 45.0 ± 1.0: gap -15.0, phased " \
           "below by more than 2 std (2.0)" in text
    assert "70% of the full set's 80.0 is 56.0: best distilled 45.0 does not reach it" in text
    # a second single-phase row with the better val is picked even though its test score is lower
    picked["ST, late [0,3)"] = ("-", _report(20, 60))
    assert "best single-phase ST, late [0,3) 20.0" in ablation.verdict("synthetic_hard", 50, picked, None)


def test_lever_runs_and_rows():
    run = ablation.RUNS["late_0-3_3-6_40+60"]
    assert run.phases == [(ablation.LATE, 0, 3), (ablation.LATE, 3, 6)] and run.split == 0.4
    assert run.conditioning == "cumulative" and run.ema
    rows = dict((name, (r, kind)) for name, r, kind in ablation.ROWS)
    assert rows["PTM+ST+EMA, conditioned, late [0,3) then [3,6), split 40/60"] == ("late_0-3_3-6_40+60", "final")
    assert rows["ST, late [3,6)"] == ("late_3-6", "final_raw") and not ablation.phased("ST+EMA, late [0,6)")
    assert ablation.modes("PTM+ST, conditioned, late [0,3) then [6,9)") == ("cumulative", "union")
    split = ablation.RUNS["conditioned_60+40"]  # the standard windows, 30 + 20 pairs at N = 50
    assert split._replace(split=0.5) == ablation.RUNS["conditioned"] and split.split == 0.6
    assert "PTM+ST, conditioned, split 60/40" in ablation.LEVER_ROWS


OLD_BUDGETS = """# Results

## `synthetic`

*Run:* 2026-11-20 10:00-14:00 UTC, 267 min of single-thread steps.

Expert learning curve (old).

### N = 50 pairs

| method | mean |
|---|---|
| ST | 56.1 ± 3.9 |

### N = 20 pairs

| ST | not finished in this run |

## Does phasing pay off?

- `synthetic`, N = 50: best phased 51.9 vs ST 58.2
- `synthetic`, N = 20: not judged, the single-phase or the phased rows did not finish in this run

How the same phased subsets add up (`synthetic`, N = 50): D_1 alone 35.5.

## The paper's ablation order

- measured, `synthetic`, N = 50: BASE (39.2) < ST (56.1)
- measured, `synthetic`, N = 20: ST (30.5)
"""


def test_budget_not_rerun_is_carried_over_within_a_rerun_level(tmp_path):
    """`--levels synthetic --sizes 20`: N = 20 regenerated from the workdir, N = 50 kept with its provenance."""
    bench = _bench(tmp_path, "synthetic", 20)
    with open(bench.a.out, "w") as f:
        f.write(OLD_BUDGETS)
    ablation.write_report(bench)
    new = open(bench.a.out).read()
    fifty = new[new.index("### N = 50 pairs"):new.index("### N = 20 pairs")]
    assert "*Run:* not rerun in the latest run of the benchmark; carried over unchanged from the earlier report " \
           "(2026-11-20 10:00-14:00 UTC, 267 min of single-thread steps)." in fifty
    assert "| ST | 56.1 ± 3.9 |" in fifty and new.count("### N = 50 pairs") == 1
    assert "Expert learning curve (old)" not in new  # the level's head is regenerated (new curve, new *Run:*)
    assert "| ST | - | 45.0 ± 1.0 |" in new[new.index("### N = 20 pairs"):]
    for line in ("- `synthetic`, N = 50: best phased 51.9 vs ST 58.2", "How the same phased subsets add up "
                 "(`synthetic`, N = 50): D_1 alone 35.5.", "- measured, `synthetic`, N = 50: BASE (39.2) < ST (56.1)"):
        assert new.count(line) == 1
    assert "not judged" not in new and "ST (30.5)" not in new  # N = 20's old lines are replaced
    assert "- `synthetic`, N = 20: best phased (on val) PTM+ST [union] 30.0 ± 1.0 vs best single-phase ST" in new
    for part in ("- `synthetic`, N = {}: best", "measured, `synthetic`, N = {}"):  # budget by budget, 50 first
        assert new.index(part.format(50)) < new.index(part.format(20))
    ablation.write_report(bench)
    assert open(bench.a.out).read() == new
    # the report from the finished steps alone (--report_only, every budget) carries N = 50 the same way
    bench.a.sizes = None
    ablation.write_report(ablation.Bench(bench.a))
    assert open(bench.a.out).read() == new


def test_control_note_separates_the_budget_split_from_the_later_teacher(tmp_path):
    bench = _bench(tmp_path, "synthetic", 50)
    for name, report in (("PTM+ST_conditioned_both_phases_0_2_cumulative_N50", _report(40, 35)),
                         ("PTM+ST_conditioned_both_phases_0_2_union_N50", _report(38, 36)),  # val picks union
                         ("PTM+ST_conditioned_cumulative_N50", _report(42, 39)),
                         ("PTM+ST_conditioned_union_N50", _report(41, 30)),
                         ("PTM+ST+EMA_conditioned_both_phases_0_2_cumulative_N50", _report(43, 35)),
                         ("PTM+ST+EMA_conditioned_both_phases_0_2_union_N50", _report(20, 30)),
                         ("PTM+ST+EMA_conditioned_cumulative_N50", _report(44.5, 39)),
                         ("PTM+ST+EMA_conditioned_union_N50", _report(41, 30))):
        _write(bench.eval_path("synthetic", name), {"results": {"x": report}})
    text = ablation.control_note(bench, "synthetic", 50)[0]
    assert "same start window [0,2) give 38.0, against 45.0 for one phase" in text and "[1,3) (PTM+ST, conditioned)" in text
    assert "costs 7.0; the later teacher then moves it +4.0. With EMA: 43.0 and 44.5, so the later teacher moves it " \
           "+1.5." in text
