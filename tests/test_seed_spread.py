"""bench.seed_spread: a seeded rerun is the ablation's step with --seed added, in run directories, evaluations and
step logs of its own (seed 0 is the ablation's own run); the spread over seeds and the per-seed differences are
those computed by hand; records are carried over."""
import json
import os
import statistics

import pytest

from bench import seed_spread
from bench.ablation.runner import Bench
from bench.ablation.plan import LEVELS, row
from distill_utils.evaluation.summary import COLUMNS

ROWS = ["PTM+ST+EMA, symmetric heads", "PTM+ST+EMA, symmetric heads, blending"]


def _args(tmp_path, *extra):
    return seed_spread.parse_args(["--workdir", str(tmp_path / "work"), "--level", "synthetic_hard", "--size", "50",
                                   "--rows", *ROWS, "--store", str(tmp_path / "store.jsonl"), *extra])


def test_a_seeded_step_is_the_ablation_step_with_its_seed_and_names_of_its_own(tmp_path):
    a = _args(tmp_path)
    plain, seed0, seed2 = Bench(a), seed_spread.SeededBench(a, 0), seed_spread.SeededBench(a, 2)
    run = row(ROWS[0])[1]
    base = plain.distill_job("synthetic_hard", run, 50)
    assert seed0.distill_job("synthetic_hard", run, 50)[:-2] == base[:-2]  # the same but the lazy --resume
    name, script, *args, done = seed2.distill_job("synthetic_hard", run, 50)
    strings = [x for x in args if isinstance(x, str)]
    assert name == "seed2_" + base[0] and strings[-2:] == ["--seed", "2"]
    assert not any(name.startswith(level + "_") for level in LEVELS)  # out of the level's run record (its logs)
    assert strings[strings.index("--name") + 1] == os.path.basename(plain.run_dir("synthetic_hard", run, 50)) + "_seed2"
    assert done == base[-1].replace(f"{run}_N50", f"{run}_N50_seed2")
    jobs0, jobs2 = plain.row_evals("synthetic_hard", ROWS[0], 50), seed2.row_evals("synthetic_hard", ROWS[0], 50)
    for j0, j2 in zip(jobs0, jobs2):
        folder, file = os.path.split(j0[-1])
        assert j2[0] == "seed2_" + j0[0] and j2[-1] == os.path.join(folder, "seed2", file)
        assert [x.replace("_seed2", "").replace("/seed2/", "/") for x in j2[2:-1]] == list(j0[2:-1])  # the seeded run's files


def _report(test, val):
    keys = [k for _, k in COLUMNS]
    return {"final": {"mean": dict.fromkeys(keys, test), "std": dict.fromkeys(keys, 1.0)},
            "runs": [{"points": [{"val": {"r_mean": val}}]}] * 3}


def test_spread_and_differences_are_the_hand_computed_ones_and_records_carry_over(tmp_path, capsys):
    tests = {0: (70.0, 72.0), 1: (71.0, 71.5), 2: (69.0, 72.5)}  # seed: (first row, second row), union mode
    a = _args(tmp_path, "--seeds", "0", "1", "2")
    for seed, scores in tests.items():
        bench = seed_spread.SeededBench(a, seed)
        for name, score in zip(ROWS, scores):
            for mode, shift in (("union", 0), ("sequential", -5)):  # val picks union
                path = bench.eval_path("synthetic_hard", f"{name}_{mode}_N50")
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w") as f:
                    json.dump({"results": {"x": _report(score + shift, score + shift + 1)}}, f)
        for run in dict.fromkeys(row(r)[1] for r in ROWS):  # the runs finished: no step is launched
            done = bench.distill_job("synthetic_hard", run, 50)[-1]
            os.makedirs(os.path.dirname(done), exist_ok=True)
            open(done, "w").close()
    seed_spread.main(["--workdir", a.workdir, "--level", "synthetic_hard", "--size", "50", "--rows", *ROWS,
                      "--store", a.store, "--seeds", "0", "1", "2"])
    out = capsys.readouterr().out
    first, second = [t[0] for t in tests.values()], [t[1] for t in tests.values()]
    assert f"| {ROWS[0]} | 70.0 / 71.0 / 69.0 | {statistics.mean(first):.1f} ± {statistics.stdev(first):.1f} |" in out
    assert f"| {ROWS[1]} | 72.0 / 71.5 / 72.5 | 72.0 ± {statistics.stdev(second):.1f} |" in out
    diff = [s - f for f, s in zip(first, second)]
    assert (f"+2.0 / +0.5 / +3.5; mean {statistics.mean(diff):+.1f} ± {statistics.stdev(diff):.1f}, above 0 at 3 of 3"
            in out)
    with open(a.store) as f:
        records = [json.loads(line) for line in f]
    assert len(records) == 6 and {r["mode"] for r in records} == {"union"}
    # carried over: with the work directory gone, the stored records still give the same table
    os.rename(a.workdir, a.workdir + "_gone")
    seed_spread.main(["--workdir", a.workdir, "--level", "synthetic_hard", "--size", "50", "--rows", *ROWS,
                      "--store", a.store, "--seeds", "0", "1", "2"])
    assert capsys.readouterr().out == out


def test_bad_rows_sizes_and_numbers_are_refused_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        seed_spread.parse_args(["--level", "synthetic_hard", "--size", "50", "--rows", "ST, exact gradient"])
    assert "--rows: not run at synthetic_hard N = 50: ST, exact gradient" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        seed_spread.parse_args(["--level", "synthetic_hard", "--size", "20", "--rows", ROWS[0]])
    assert "--size: synthetic_hard has budgets [50], not 20" in capsys.readouterr().err
    for flag, value in (("--jobs", "0"), ("--num_eval", "-1"), ("--iterations", "0"), ("--seeds", "-1")):
        with pytest.raises(SystemExit) as stop:
            seed_spread.main(["--level", "synthetic_hard", "--size", "50", "--rows", ROWS[0], flag, value])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and err.startswith(f"error: {flag} {value}: expected") and err.count("\n") == 1
