"""The finished steps of a work directory as results-store records (store.py): every table row (a phased row under
the eval mode its val score picks), the expert curves, the other evaluations and the run's provenance."""
import json
import math
import os
import statistics

from bench.ablation.plan import (AUTHORS_ROWS, CROSS_ENCODER, CROSS_SIZE, ENCODER, LEVELS, NUM_EXPERTS,
                                 level_iterations, modes, phased, row)
from distill_utils.evaluation.sources import EVAL_MODES
from distill_utils.evaluation.summary import COLUMNS


SHORT_RUN = ", {} iterations per phase"  # a row's label suffix when its run is shorter than its level's


def load(bench, level, name):
    """An evaluate.py report of the work directory (FileNotFoundError when the step has not finished)."""
    with open(bench.eval_path(level, name)) as f:
        return next(iter(json.load(f)["results"].values()))


def load_or_none(bench, level, name):
    try:
        return load(bench, level, name)
    except FileNotFoundError:
        return None


def val_of(report):
    """Final-epoch val mean recall, averaged over the students."""
    return statistics.mean(run["points"][-1]["val"]["r_mean"] for run in report["runs"])


def speed(bench, level, run, n):
    """Mean seconds per distillation iteration and peak memory over the run's phases."""
    with open(os.path.join(bench.run_dir(level, run, n), "metrics.jsonl")) as f:
        done = [r for r in map(json.loads, f) if r.get("event") == "phase_done"]
    return sum(r["seconds_per_iteration"] for r in done) / len(done), max(r["peak_memory_mb"] for r in done)


def chosen(bench, level, name, n):
    """(eval mode, its report, {mode: report}) of a row: phased rows under their val-best mode."""
    if not phased(name):
        return "-", load(bench, level, f"{name}_N{n}{bench.tag(level)}"), {}
    by_mode = {mode: load(bench, level, f"{name}_{mode}_N{n}{bench.tag(level)}") for mode in modes(name)}
    mode = max(by_mode, key=lambda m: val_of(by_mode[m]))
    return mode, by_mode[mode], by_mode


def picked_rows(bench, level, n, rows=None):
    """{row: (eval mode, report)} of the finished rows, each under its val-best mode."""
    picked = {}
    for name in bench.rows[level][n] if rows is None else rows:
        try:
            picked[name] = chosen(bench, level, name, n)[:2]
        except FileNotFoundError:
            pass
    return picked


def best_phased(bench, level, n):
    picked = picked_rows(bench, level, n, [r for r in bench.rows[level][n] if phased(r)])
    return max(picked, key=lambda r: val_of(picked[r][1])) if picked else None


def expert_curve(bench, level, heads=False):
    """({epoch: test mean recall, mean over the experts}, experts) from buffer.py's metrics.jsonl."""
    with open(os.path.join(bench.traj(level, heads), "normal", "metrics.jsonl")) as f:
        records = [r for r in map(json.loads, f) if "r_mean" in r and r.get("expert", 1e9) < NUM_EXPERTS]
    epochs = sorted({r["epoch"] for r in records if r["epoch"] > 0})
    return {e: statistics.mean(r["r_mean"] for r in records if r["epoch"] == e) for e in epochs}, \
        len({r["expert"] for r in records})


def run_record(bench, level):
    """When the level's steps ran, how long, how loaded the machine was (from logs/<level>_*.seconds/.load)."""
    logs, steps = os.path.join(bench.work, "logs"), []
    for f in os.listdir(logs):
        if f.endswith(".seconds") and max((lv for lv in LEVELS if f.startswith(lv + "_")), key=len, default=None) == level:
            path = os.path.join(logs, f)
            load_path = path[:-len(".seconds")] + ".load"
            loads = [float(x) for x in open(load_path).read().split()] if os.path.isfile(load_path) else []
            steps.append((float(open(path).read()), os.path.getmtime(path), loads))
    start, end = min(t - s for s, t, _ in steps), max(t for _, t, _ in steps)
    loads = [x for _, _, ls in steps for x in ls]
    return {"kind": "run", "level": level, "id": f"{level}@{int(start)}", "start": start, "end": end,
            "minutes": sum(s for s, _, _ in steps) / 60, "jobs": bench.a.jobs,
            "load": [statistics.mean(loads), min(loads), max(loads)] if loads else None}


def _bytes(directory):
    return sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory) if f.endswith(".pt"))


def trajectory_records(bench, level, run):
    """What each kind of expert trajectories costs: matched parameters, expert-training seconds (logs/), bytes on
    disk of normal/ and of each shortcut window, and the experts' final test mean recall."""
    out = []
    for heads in (False, True):
        root = bench.traj(level, heads)
        if not os.path.isfile(os.path.join(root, "normal", "manifest.json")):
            continue
        with open(os.path.join(root, "normal", "manifest.json")) as f:
            manifest = json.load(f)
        params = sum(math.prod(shape) for side in ("img_params", "txt_params") for _, shape in manifest[side])
        logs = os.path.join(bench.work, "logs")
        tag = f"{level}_{'heads_' if heads else ''}experts_"
        seconds = sum(float(open(os.path.join(logs, f)).read()) for f in os.listdir(logs)
                      if f.startswith(tag) and f.endswith(".seconds"))
        windows = {d: _bytes(os.path.join(root, d)) for d in sorted(os.listdir(root)) if d.startswith("convexified_")}
        curve, _ = expert_curve(bench, level, heads)
        out.append({"kind": "trajectories", "level": level, "run": run, "heads": heads, "params": params,
                    "experts": NUM_EXPERTS, "timestamps": manifest["timestamps"], "expert_seconds": seconds,
                    "normal_bytes": _bytes(os.path.join(root, "normal")), "window_bytes": windows,
                    "final_recall": curve[max(curve)], "curve": {str(e): v for e, v in curve.items()}})
    return out


def _scores(report, key="final"):
    return {"mean": {k: report[key]["mean"][k] for _, k in COLUMNS},
            "std": {k: report[key]["std"][k] for _, k in COLUMNS}}


def _row(level, n, table, label, order, report, run, key="final", **extra):
    return {"kind": "row", "level": level, "n": n, "table": table, "label": label, "order": order, "run": run,
            **_scores(report, key), **extra}


def budget_records(bench, level, n, run):
    """The rows of the tables of budget N (the finished ones), in table order."""
    out, order = [], iter(range(10**6))
    for name, label in ((f"random_N{n}", "random real pairs"), (f"prototype_N{n}", "prototype coreset"),
                        (f"random_heads_N{n}", "random real pairs, symmetric heads")):
        report = load_or_none(bench, level, name)
        if report:
            out.append(_row(level, n, "main", label, next(order), report, run, mode="-", val=val_of(report)))
    for name in bench.rows[level][n]:
        try:
            mode, report, by_mode = chosen(bench, level, name, n)
            s_iter, peak = speed(bench, level, row(name)[1], n)
        except FileNotFoundError:
            continue
        cells = {m: by_mode[m]["final"]["mean"]["r_mean"] if m in by_mode else None for m in EVAL_MODES}
        its = bench.iterations(level)
        short = its != level_iterations(level)  # never stored under the full run's label
        out.append(_row(level, n, "main", name + (SHORT_RUN.format(its) if short else ""), next(order),
                        report, run, mode=mode, val=val_of(report), modes=cells if by_mode else None, s_per_it=s_iter,
                        peak_mb=peak, iterations=its))
    for name, what in (("full", ""), ("full_heads", ", symmetric heads")):
        full = load_or_none(bench, level, name)
        if full:
            few = len(full["runs"]) < bench.a.num_eval  # fewer students than the rows: said in the label
            label = f"full train set ({full['phases'][0]['pairs']} pairs" + (f", {len(full['runs'])} student" if few else "")
            out.append(_row(level, n, "main", label + f"){what}", next(order), full, run, mode="-", val=val_of(full)))
    for name in (r for r in AUTHORS_ROWS if r in bench.rows[level][n] and level == "synthetic"):
        report = load_or_none(bench, level, f"{name}_authors_N{n}")
        if report:
            out.append(_row(level, n, "authors", name, next(order), report, run, key="best"))
    cross = [load_or_none(bench, level, f"cross_{k}_N{n}") for k in ("random", "PTM+ST+EMA")]
    if level == "synthetic" and n == CROSS_SIZE and all(cross):
        for label, report in zip(("random real pairs", f"PTM+ST+EMA (distilled with `{ENCODER}`)"), cross):
            out.append(_row(level, n, "cross", label, next(order), report, run, encoder=CROSS_ENCODER))
    return out


def records(bench):
    """Every record the work directory's finished steps give, for the levels and budgets this bench runs."""
    out = []
    for level in bench.rows:
        if not os.path.isfile(os.path.join(bench.traj(level), "normal", "metrics.jsonl")):
            continue
        run = run_record(bench, level)
        curve, experts = expert_curve(bench, level)
        out += [run, {"kind": "curve", "level": level, "run": run["id"], "experts": experts,
                      "recall": {str(e): v for e, v in curve.items()}}]
        out += trajectory_records(bench, level, run["id"])
        for n in bench.rows[level]:
            out += budget_records(bench, level, n, run["id"])
        evals = os.path.dirname(bench.eval_path(level, "x"))
        for path in sorted(os.listdir(evals)) if os.path.isdir(evals) else []:  # every evaluation, for facts.py
            if not path.endswith(".json"):  # e.g. a benchmark's own folder of evaluations
                continue
            name = path[:-len(".json")]
            report = load(bench, level, name)
            out.append({"kind": "eval", "level": level, "name": name, "run": run["id"], **_scores(report),
                        "val": val_of(report) if "val" in report["runs"][0]["points"][-1] else None})
    return out
