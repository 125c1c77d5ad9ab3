"""Fills the tables of docs/results.md from the results store (store.py). Only the part between the two markers is
written: the sections of every level and budget with their provenance, the expert curves and the tables. The prose
around them (verdicts, notes, settings) is written by people from the numbers (facts.py prints them)."""
import os
import time

from bench.ablation import store
from common.io import atomic_path
from distill_utils.evaluation.sources import EVAL_MODES
from distill_utils.evaluation.summary import COLUMNS

BEGIN = ("<!-- bench.ablation fills the tables from here to its end marker with the stored results "
         "(bench/results/ablation.jsonl): python -m bench.ablation --report_only. Edit outside them. -->")
END = "<!-- end of the tables bench.ablation fills -->"
MAIN_HEAD = ("| method | eval mode | " + " | ".join(label for label, _ in COLUMNS) +
             " | val mean | test mean: sequential / cumulative / union | s/iter | peak MB |")
AUTHORS = ("The authors' protocol (`--protocol authors`: one SGD with the last subset's lrs, one x0.1 drop, best test "
           "score over all evaluation points of all phases: selects on test, optimistic), sequential:")


def provenance(run, level):
    """The *Run:* line of a level's steps: when, how long, how loaded the machine was."""
    when = (f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(run['start']))}-"
            f"{time.strftime('%H:%M', time.gmtime(run['end']))} UTC")
    load = "" if not run["load"] else (f", 1-min load average {run['load'][0]:.1f} (min {run['load'][1]:.1f}, max "
                                       f"{run['load'][2]:.1f}) at the steps' starts and ends")
    return (f"{when}, {run['minutes']:.0f} min of single-thread steps, {run['jobs']} at a time, on a 2-core machine "
            f"shared with other work{load}; step logs: `<workdir>/logs/{level}_*`")


def _cells(r):
    return " | ".join(f"{r['mean'][k]:.1f} ± {r['std'][k]:.1f}" for _, k in COLUMNS)


def _main_line(r):
    if "s_per_it" not in r:  # a baseline
        return f"| {r['label']} | - | {_cells(r)} | {r['val']:.1f} | | | |"
    modes = " / ".join("-" if r["modes"][m] is None else f"{r['modes'][m]:.1f}" for m in EVAL_MODES) if r["modes"] else ""
    return f"| {r['label']} | {r['mode']} | {_cells(r)} | {r['val']:.1f} | {modes} | {r['s_per_it']:.2f} | {r['peak_mb']:.0f} |"


def _small_table(rows):
    return ["| method | " + " | ".join(label for label, _ in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|",
            *[f"| {r['label']} | {_cells(r)} |" for r in rows]]


def budget_section(records, level, n, level_run):
    main = store.rows(records, level, n, "main")
    lines = [f"### N = {n} pairs", ""]
    budget_runs = {r["run"] for table in ("main", "authors", "cross") for r in store.rows(records, level, n, table)}
    if budget_runs != {level_run}:  # rows kept from another run than the level's latest
        runs = store.runs(records)
        lines += ["*Run:* from another run than the level's curve: " +
                  "; ".join(provenance(runs[run], level) for run in sorted(budget_runs)) + ".", ""]
    lines += [MAIN_HEAD, "|---" * (len(COLUMNS) + 6) + "|", *map(_main_line, main)]
    authors, cross = store.rows(records, level, n, "authors"), store.rows(records, level, n, "cross")
    if authors:
        lines += ["", AUTHORS, "", *_small_table(authors)]
    if cross:
        lines += ["", f"Cross-architecture (`{cross[0]['encoder']}`: narrower, deeper, group norm), sequential:", "",
                  *_small_table(cross)]
    return lines + [""]


def trajectories_table(records, level):
    """What the expert trajectories of the level cost: full encoder against symmetric heads (`trajectories` records)."""
    found = sorted((r for r in records if r["kind"] == "trajectories" and r["level"] == level), key=lambda r: r["heads"])
    if not found:
        return []
    mb = lambda b: f"{b / 1e6:.1f}"
    runs = store.runs(records)
    when = "; ".join(dict.fromkeys(time.strftime("%Y-%m-%d", time.gmtime(runs[r["run"]]["start"])) for r in found
                                   if r["run"] in runs))
    lines = [f"Expert trajectories (run of {when}; the matched parameters; seconds: training all experts, one process, "
             "one thread; MB: the .pt files on disk):", "",
             "| trajectories | matched parameters | experts x timestamps | expert seconds | normal/ MB | shortcut "
             "windows MB | experts' final test mean recall |", "|---" * 7 + "|"]
    for r in found:
        what = "symmetric heads (image head + text head, frozen encoder)" if r["heads"] else "full image encoder + text head"
        windows = ", ".join(f"{w[len('convexified_'):]}: {mb(b)}" for w, b in r["window_bytes"].items())
        lines.append(f"| {what} | {r['params']:,} | {r['experts']} x {r['timestamps']} | {r['expert_seconds']:.0f} | "
                     f"{mb(r['normal_bytes'])} | {windows} | {r['final_recall']:.1f} |")
    return lines + [""]


def tables(records):
    """The markdown of every stored level and budget: the part between BEGIN and END."""
    runs, lines = store.runs(records), []
    for curve in (r for r in records if r["kind"] == "curve"):
        level, recall = curve["level"], {int(e): v for e, v in curve["recall"].items()}
        lines += [f"## `{level}`", "", f"*Run:* {provenance(runs[curve['run']], level)}.", "",
                  f"Expert learning curve (test mean recall after each epoch, mean of {curve['experts']} experts):", "",
                  "| epoch | " + " | ".join(map(str, sorted(recall))) + " |", "|---" * (len(recall) + 1) + "|",
                  "| mean recall | " + " | ".join(f"{recall[e]:.1f}" for e in sorted(recall)) + " |", ""]
        lines += trajectories_table(records, level)
        budgets = sorted({r["n"] for r in records if r["kind"] == "row" and r["level"] == level}, reverse=True)
        for n in budgets:
            lines += budget_section(records, level, n, curve["run"])
    return lines


def fill(text, records, where):
    """`text` (a report) with the part between its markers replaced by tables(records)."""
    lines = text.split("\n")
    if BEGIN not in lines or END not in lines or lines.index(BEGIN) > lines.index(END):
        raise SystemExit(f"bench: {where} has no tables to fill: put the lines\n{BEGIN}\n{END}\nwhere they go")
    begin, end = lines.index(BEGIN), lines.index(END)
    return "\n".join(lines[:begin + 1] + tables(records) + lines[end:])


def write(records, out):
    """Fill the tables of report `out` (a new file: a title and the tables)."""
    text = open(out).read() if os.path.isfile(out) else f"# Ablation results\n\n{BEGIN}\n{END}\n"
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with atomic_path(out) as tmp, open(tmp, "w") as f:
        f.write(fill(text, records, out))
