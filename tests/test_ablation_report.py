"""bench.ablation: the report's tables come from the results store alone (today's tables from the stored rows, bit
for bit), the prose around them is left alone; rows, modes and the best rows are picked on val, never on test; a
rerun's rows replace the stored ones and a budget kept from another run says so; every step's command line is the
demo's recipe with overrides and resolves to the flags the benchmark used before the recipes were files."""
import argparse
import importlib
import json
import os

import pytest

import buffer
import evaluate
from bench.ablation import collect, facts, plan, report, store
from bench.ablation.runner import Bench
from bench.ablation.plan import phase_sizes
from distill_utils import settings
from distill_utils.evaluation.summary import COLUMNS
from tests.helpers import ROOT

distill = importlib.import_module("distill_ptm-st")


def _report(test, val):
    """An evaluate.py report whose every column is `test` (std 1) and whose final val mean recall is `val`."""
    keys = [k for _, k in COLUMNS]
    return {"final": {"mean": dict.fromkeys(keys, test), "std": dict.fromkeys(keys, 1.0)},
            "runs": [{"points": [{"val": {"r_mean": val}}]}] * 3, "phases": [{"pairs": 2000}]}  # 3 students


def _write(path, obj, lines=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in obj) if lines else json.dumps(obj))


def _bench(tmp_path, level="synthetic_hard", n=50, rows=("ST", "PTM+ST", "PTM+ST, conditioned"), seconds=60):
    """A finished level and budget with ST, PTM+ST (both modes) and the baselines, all made up."""
    a = argparse.Namespace(workdir=str(tmp_path / "work"), out=str(tmp_path / "results.md"), levels=[level],
                           sizes=[n], rows=list(rows), num_eval=3, jobs=2, device="cpu", iterations=None,
                           curve_points=0)
    bench = Bench(a)
    curve = [{"expert": e, "epoch": ep, "r_mean": 10.0 * ep} for e in range(2) for ep in range(11)]
    _write(os.path.join(bench.traj(level), "normal", "metrics.jsonl"), curve, lines=True)
    evals = {f"random_N{n}": _report(10, 11), f"prototype_N{n}": _report(15, 17), "full": _report(80, 79),
             f"ST_N{n}": _report(45, 40),  # the best test, the worst val
             f"PTM+ST_sequential_N{n}": _report(44, 41), f"PTM+ST_union_N{n}": _report(30, 42)}
    for name, r in evals.items():
        _write(bench.eval_path(level, name), {"results": {"x": r}})
    for run in ("shortcut", "phased_shortcut"):
        done = {"event": "phase_done", "seconds_per_iteration": 2.0, "peak_memory_mb": 900}
        _write(os.path.join(bench.run_dir(level, run, n), "metrics.jsonl"), [done], lines=True)
    for step in (f"{level}_experts_0", f"{level}_eval_ST_N{n}"):
        for ext, text in ((".seconds", f"{seconds}\n"), (".load", "1.00 3.00\n")):
            with open(os.path.join(bench.work, "logs", step + ext), "w") as f:
                f.write(text)
    return bench


PROSE = "# Results\n\nWritten by people.\n\n{begin}\nold tables\n{end}\n## Does phasing pay off?\n\n- a verdict\n"


def test_todays_tables_are_regenerated_from_the_stored_rows():
    text = open(os.path.join(ROOT, "docs", "results.md")).read()
    records = store.read()
    assert report.fill(text, records, "docs/results.md") == text
    lines = text.split("\n")
    assert lines[lines.index(report.BEGIN) + 1:lines.index(report.END)] == report.tables(records)
    # rows imported from the markdown report say so; measured ones (synthetic_paper, issue 21) name their run
    runs = store.runs(records)
    assert all(r.get("source") or r["kind"] == "run" or r["run"] in runs for r in records)


def test_the_report_fills_its_tables_from_the_store_and_leaves_the_prose(tmp_path):
    bench = _bench(tmp_path)
    path = tmp_path / "store.jsonl"
    store.write(collect.records(bench), path)
    out = tmp_path / "results.md"
    out.write_text(PROSE.format(begin=report.BEGIN, end=report.END))
    report.write(store.read(path), str(out))
    text = out.read_text()
    assert text.startswith("# Results\n\nWritten by people.\n\n") and text.endswith("## Does phasing pay off?\n\n- a verdict\n")
    assert "old tables" not in text and "## `synthetic_hard`" in text and "### N = 50 pairs" in text
    assert "1-min load average 2.0 (min 1.0, max 3.0)" in text and "2 min of single-thread steps, 2 at a time" in text
    assert "| ST | - | 45.0 ± 1.0 | 45.0 ± 1.0 |" in text and "| 40.0 |  | 2.00 | 900 |" in text
    assert "| PTM+ST | union | 30.0 ± 1.0 |" in text and "| 42.0 | 44.0 / - / 30.0 | 2.00 | 900 |" in text
    assert "| random real pairs | - | 10.0 ± 1.0 |" in text and "| full train set (2000 pairs) | - | 80.0 ± 1.0 |" in text
    one = {**_report(70, 71), "runs": _report(70, 71)["runs"][:1]}  # fewer students than the rows: the label says
    _write(bench.eval_path("synthetic_hard", "full"), {"results": {"x": one}})
    assert "full train set (2000 pairs, 1 student)" in {r["label"] for r in collect.records(bench) if r["kind"] == "row"}
    assert "PTM+ST, conditioned" not in text  # not finished: not stored, not shown
    report.write(store.read(path), str(out))
    assert out.read_text() == text
    (tmp_path / "new.md").unlink(missing_ok=True)
    report.write(store.read(path), str(tmp_path / "new.md"))  # a new report: a title and the tables
    assert report.tables(store.read(path))[0] in (tmp_path / "new.md").read_text()
    (tmp_path / "bare.md").write_text("# no markers\n")
    with pytest.raises(SystemExit, match="has no tables to fill"):
        report.write(store.read(path), str(tmp_path / "bare.md"))


def test_a_rerun_replaces_its_rows_and_a_budget_from_another_run_says_so(tmp_path):
    old = collect.records(_bench(tmp_path / "a", "synthetic", 20))
    new = collect.records(_bench(tmp_path / "b", "synthetic", 50, rows=("ST",), seconds=120))
    both = store.merged(old, new)
    assert {r["n"] for r in both if r["kind"] == "row"} == {20, 50}
    curves = [r for r in both if r["kind"] == "curve"]
    assert len(curves) == 1 and curves[0]["run"] == new[0]["id"]  # the level's curve: the latest run's
    assert len(store.runs(both)) == 2  # the curve's run (the new one) and the run N = 20 came from
    text = "\n".join(report.tables(both))
    twenty = text[text.index("### N = 20 pairs"):]
    assert twenty.startswith("### N = 20 pairs\n\n*Run:* from another run than the level's curve: ")
    assert "*Run:*" not in text[text.index("### N = 50 pairs"):text.index("### N = 20 pairs")]
    assert text.index("### N = 50 pairs") < text.index("### N = 20 pairs")
    again = store.merged(both, new)
    assert again == both
    replaced = store.merged(both, [{**r, "val": 99.0} if r.get("label") == "ST" and r.get("n") == 20 else r
                                   for r in old])
    assert [r["val"] for r in store.rows(replaced, "synthetic", 20, "main") if r["label"] == "ST"] == [99.0]


def test_modes_rows_and_the_verdict_are_picked_on_val_not_test(tmp_path):
    bench = _bench(tmp_path)
    mode, chosen, _ = collect.chosen(bench, "synthetic_hard", "PTM+ST", 50)
    assert mode == "union" and chosen["final"]["mean"]["r_mean"] == 30  # val 42 > 41, though test 30 < 44
    assert set(collect.picked_rows(bench, "synthetic_hard", 50)) == {"ST", "PTM+ST"}
    assert collect.best_phased(bench, "synthetic_hard", 50) == "PTM+ST"
    records = collect.records(bench)
    v = facts.verdict(store.rows(records, "synthetic_hard", 50, "main"))
    assert (v["phased"]["label"], v["single"]["label"], v["gap"], v["bar"], v["target"]) == ("PTM+ST", "ST", -15.0,
                                                                                            2.0, 56.0)
    lines = facts.lines(records)
    assert lines[0].startswith("`synthetic_hard`, N = 50: best phased (on val) PTM+ST [union] 30.0 ± 1.0 vs best "
                               "single-phase ST 45.0 ± 1.0: gap -15.0")
    assert lines[1] == "  order: PTM+ST (30.0) < ST (45.0)"
    assert "  PTM+ST_sequential_N50: 44.0 ± 1.0 (val 41.0)" in lines
    # a second single-phase row with the better val is picked even though its test score is lower
    late = {**store.rows(records, "synthetic_hard", 50, "main")[2], "label": "ST, late [0,3)", "val": 60.0}
    late["mean"] = {**late["mean"], "r_mean": 20.0}
    assert facts.verdict(store.rows(records, "synthetic_hard", 50, "main") + [late])["single"]["label"] == "ST, late [0,3)"
    # RepBlend's rows stay out of the phasing verdict, also when a short run labels them with its iterations
    heads = {**late, "label": f"{plan.REPBLEND_ROWS[3]}, 500 iterations per phase", "iterations": 500, "val": 90.0}
    assert facts.verdict(store.rows(records, "synthetic_hard", 50, "main") + [heads])["single"]["label"] == "ST"


def test_lever_runs_and_rows():
    run = plan.RUNS["late_0-3_3-6_40+60"]
    assert run.phases == [(plan.LATE, 0, 3), (plan.LATE, 3, 6)] and run.split == 0.4
    assert run.conditioning == "cumulative" and run.ema
    rows = {name: (r, kind) for name, r, kind in plan.ROWS}
    assert rows["PTM+ST+EMA, conditioned, late [0,3) then [3,6), split 40/60"] == ("late_0-3_3-6_40+60", "final")
    assert rows["ST, late [3,6)"] == ("late_3-6", "final_raw") and not plan.phased("ST+EMA, late [0,6)")
    assert plan.modes("PTM+ST, conditioned, late [0,3) then [6,9)") == ("cumulative", "union")
    split = plan.RUNS["conditioned_60+40"]  # the standard windows, 30 + 20 pairs at N = 50
    assert split._replace(split=0.5) == plan.RUNS["conditioned"] and split.split == 0.6
    assert "PTM+ST, conditioned, split 60/40" in plan.LEVER_ROWS


# the flag lists of bench/ablation.py before the recipes were files
OLD_EXPERTS = ["--num_experts", "2", "--lr_teacher_img", "0.1", "--lr_teacher_txt", "0.1", "--batch_train", "128",
               "--eval_freq", "1", "--loss_type", "InfoNCE"]
OLD_DISTILL = ["--syn_steps", "8", "--expert_epochs", "1", "--lr_teacher_img", "0.03", "--lr_teacher_txt", "0.03",
               "--lr_img", "100", "--lr_txt", "10", "--lr_sim", "0.01", "--lr_lr", "1e-3", "--sim_type", "full",
               "--loss_type", "InfoNCE", "--num_eval", "0", "--checkpoint_it", "25",
               "--constant_store", "graphs"]  # added since: the same bits (test_distill), faster
OLD_PROTOCOL = ["--loss_type", "InfoNCE", "--epoch_eval_train", "100", "--batch_train", "128", "--select_on", "val"]


def _old_data(bench, level):
    return ["--dataset", level, "--ann_root", os.path.join(bench.work, "data", level), "--feature_cache",
            os.path.join(bench.work, "cache"), "--text_encoder", "minilm", "--image_trainable", "--device", "cpu"]


def _resolved(script, argv):
    module = {"buffer.py": buffer, "distill_ptm-st.py": distill, "evaluate.py": evaluate}[script]
    old_cwd = os.getcwd()
    os.chdir(ROOT)  # the recipe's path is relative to the repository, where the bench runs its steps
    try:
        args = vars(settings.parse_args(module.make_parser(), [x for a in argv for x in (a() if callable(a) else [a])]))
    finally:
        os.chdir(old_cwd)
    return {k: v for k, v in args.items() if k != "config"}


def test_every_step_is_the_recipe_with_overrides_and_resolves_to_the_old_flags(tmp_path):
    older = ["synthetic", "synthetic_hard"]  # the paper level's splits and iterations: the test below
    a = argparse.Namespace(workdir=str(tmp_path), out=None, levels=older, sizes=None, rows=None,
                           num_eval=3, jobs=2, device="cpu", iterations=None, curve_points=0)
    bench = Bench(a)
    for level, spec in ((lv, plan.LEVELS[lv]) for lv in older):
        step = bench.expert_jobs(level)[0]
        old = [*_old_data(bench, level), "--image_encoder", "convnet", "--buffer_path", os.path.join(bench.work, "buffer"),
               "--train_epochs", str(spec["epochs"]), *OLD_EXPERTS]
        assert step[2:4] == ("--config", plan.RECIPE) and _resolved("buffer.py", step[2:-1]) == _resolved("buffer.py", old)
        for n in spec["sizes"]:
            for step in bench.distill_jobs(level, n):
                name = step[0].split("_distill_")[1].rsplit("_N", 1)[0]
                run = plan.RUNS[name]
                new = _resolved("distill_ptm-st.py", step[2:-1])
                sizes = [n] if len(run.phases) == 1 else [round(n * run.split), n - round(n * run.split)]
                old = [*_old_data(bench, level), "--image_encoder", "convnet", *OLD_DISTILL, "--subset_num",
                       str(len(run.phases)), "--buffer_path", *[os.path.join(bench.traj(level, run.heads), t) for t, _, _ in run.phases], "--min_start_epoch",
                       *[str(lo) for _, lo, _ in run.phases], "--max_start_epoch", *[str(hi) for _, _, hi in run.phases],
                       "--num_queries", *map(str, sizes), "--Iteration", *["100"] * len(run.phases), "--eval_it", "100",
                       "--mini_batch_size", "10", "--ema_decay", "0.97" if run.ema else "0", "--phase_conditioning",
                       run.conditioning, "--matching", run.matching, "--runs_dir", os.path.join(bench.work, "runs"),
                       "--name", f"{name}_N{n}", *bench.net(level, run.heads),
                       *(["--blend", str(run.blend)] if run.blend else [])]
                assert new == _resolved("distill_ptm-st.py", old), name
            for step in bench.evaluation_jobs(level, n):
                encoder = step[step.index("--image_encoder") + 1]
                rest = list(step[step.index("--out"):-1])
                old = [*_old_data(bench, level), "--image_encoder", encoder, *OLD_PROTOCOL, "--num_eval", "3",
                       "--seed", "0", *rest]
                assert _resolved("evaluate.py", step[2:-1]) == _resolved("evaluate.py", old), step[0]


def test_a_tagged_rerun_stores_beside_the_rows_it_repeats():
    from bench.ablation import store
    row = lambda label, order, mean, run="s": {"kind": "row", "level": "synthetic", "n": 50, "table": "main",
                                               "label": label, "order": order, "run": run, "mean": {"r_mean": mean}}
    old = [row("ST", 0, 56.1, "r"), {"kind": "curve", "level": "synthetic", "run": "r"},
           {"kind": "eval", "level": "synthetic", "name": "ST_N50", "run": "r"}, {"kind": "run", "id": "r"}]
    new = [{"kind": "run", "id": "s"}, {"kind": "curve", "level": "synthetic", "run": "s"}, row("ST", 0, 55.0),
           row("ST, blending", 1, 57.0), {"kind": "eval", "level": "synthetic", "name": "ST_N50", "run": "s"}]
    merged = store.merged(old, store.tagged(old, new, "rerun"))
    rows = {r["label"]: (r["order"], r["mean"]["r_mean"]) for r in merged if r["kind"] == "row"}
    assert rows == {"ST": (0, 56.1), "ST (rerun)": (1000, 55.0), "ST, blending": (1001, 57.0)}
    assert [r["run"] for r in merged if r["kind"] == "curve"] == ["r"]
    assert {r["name"] for r in merged if r["kind"] == "eval"} == {"ST_N50", "ST_N50 (rerun)"}
    assert {r["id"] for r in merged if r["kind"] == "run"} == {"r", "s"}
    again = store.merged(merged, store.tagged(merged, new, "rerun"))  # the same run stored twice: no new labels
    assert sorted(r["label"] for r in again if r["kind"] == "row") == ["ST", "ST (rerun)", "ST, blending"]


def test_the_paper_level_runs_the_papers_splits_and_keeps_short_runs_apart(tmp_path):
    assert phase_sizes("synthetic_paper", "phased_shortcut", 200) == [99, 100]
    assert phase_sizes("synthetic_paper", "conditioned", 500) == [200, 299]
    assert phase_sizes("synthetic_paper", "shortcut", 500) == [499]  # one phase: the phased rows' whole budget
    assert phase_sizes("synthetic", "phased_shortcut", 50) == [25, 25]
    a = argparse.Namespace(workdir=str(tmp_path), levels=["synthetic_paper"], sizes=[200], rows=["ST", "PTM+ST+EMA"],
                           num_eval=3, jobs=1, device="cpu", iterations=None, curve_points=0)
    full = Bench(a)
    assert full.run_dir("synthetic_paper", "shortcut", 200).endswith("shortcut_N200")
    job = full.distill_job("synthetic_paper", "phased_shortcut", 200)
    flags = " ".join(x for x in job[2:-1] if isinstance(x, str))
    assert "--num_queries 99 100" in flags and "--Iteration 2000 2000" in flags and "--eval_it 2000" in flags
    short = Bench(argparse.Namespace(**{**vars(a), "iterations": 300, "curve_points": 3}))
    assert short.run_dir("synthetic_paper", "shortcut", 200).endswith("shortcut_N200_it300")
    assert short.distill_job("synthetic_paper", "shortcut", 200)[0] == "synthetic_paper_distill_shortcut_N200_it300"
    flags = " ".join(x for x in short.distill_job("synthetic_paper", "shortcut", 200)[2:-1] if isinstance(x, str))
    assert "--num_queries 199" in flags and "--Iteration 300" in flags and "--eval_it 100" in flags
    curve = [job[0] for job in short.curve_jobs("synthetic_paper", 200)]
    assert curve == [f"synthetic_paper_eval_curve_{r}_N200_it{k}" for r in ("ST", "PTM+ST+EMA") for k in (100, 200, 300)]
    last = short.curve_jobs("synthetic_paper", 200)[-1]
    assert list(last[last.index("--ckpt_path") + 1:][:2]) == [
        os.path.join(short.run_dir("synthetic_paper", "phased_shortcut", 200), f) for f in
        ("distilled_0_final.pt", "distilled_1_300.pt")]


def test_the_papers_100_pair_recipe_is_one_phase_of_99_pairs_with_its_ema(tmp_path):
    a = argparse.Namespace(workdir=str(tmp_path), levels=["synthetic_paper"], sizes=[99], rows=None, num_eval=3,
                           jobs=1, device="cpu", iterations=None, curve_points=0)
    (job,) = Bench(a).distill_jobs("synthetic_paper", 99)
    flags = " ".join(x for x in job[2:-1] if isinstance(x, str))
    assert "--subset_num 1" in flags and "--num_queries 99" in flags and "--ema_decay 0.99" in flags
    assert "convexified_0_6 --min_start_epoch 0 --max_start_epoch 2" in flags and "--Iteration 2000" in flags


def test_the_lr_rows_override_only_the_recipes_image_and_text_lrs(tmp_path):
    a = argparse.Namespace(workdir=str(tmp_path), levels=["synthetic_paper"], sizes=[200],
                           rows=["ST", *plan.LR_ROWS], num_eval=3, jobs=1, device="cpu", iterations=None, curve_points=0)
    jobs = {job[0]: " ".join(x for x in job[2:-1] if isinstance(x, str)) for job in Bench(a).distill_jobs("synthetic_paper", 200)}
    assert "--lr_img" not in jobs["synthetic_paper_distill_shortcut_N200"]
    for run in ("shortcut_lr0.3", "conditioned_lr0.3"):
        assert jobs[f"synthetic_paper_distill_{run}_N200"].endswith("--lr_img 30 --lr_txt 3")
        assert plan.RUNS[run]._replace(lrs=()) == plan.RUNS[run.split("_lr")[0]]


def test_the_subsets_of_a_heads_row_are_evaluated_on_its_frozen_encoder(tmp_path, monkeypatch):
    a = argparse.Namespace(workdir=str(tmp_path), levels=["synthetic"], sizes=[50], rows=[plan.REPBLEND_ROWS[1]],
                           num_eval=3, jobs=1, device="cpu", iterations=None, curve_points=0)
    bench, jobs = Bench(a), []
    monkeypatch.setattr(collect, "best_phased", lambda *_: plan.REPBLEND_ROWS[1])
    monkeypatch.setattr(bench, "parallel", jobs.extend)
    bench.analysis("synthetic", 50)
    assert [job[0].rsplit("_", 3)[1] for job in jobs] == ["D1", "D2"]
    assert all("--no-image_trainable" in job and bench.encoder("synthetic") in job for job in jobs)
