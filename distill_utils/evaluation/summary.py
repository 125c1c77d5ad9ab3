"""What an evaluation reports (SPEC section 6): each run's record, mean and std over the runs, and the table.

Which number: `final` is the test score after the last epoch (the honest default); `best` is the
best test r_mean over the evaluation points (the paper's convention: optimistic, it selects on
test); `val` is the test score at the evaluation point with the best val r_mean.
"""
from typing import Dict, List, Optional

import numpy as np

ALL_KEYS = ("img_r1", "img_r5", "img_r10", "txt_r1", "txt_r5", "txt_r10", "img_r_mean", "txt_r_mean", "r_mean")
SELECTIONS = ("final", "val")
MEANING = {"final": "test score after the last epoch (the honest number)",
           "val_selected": "test score at the evaluation point with the best val r_mean",
           "best": "best test r_mean over the evaluation points (selects on test: the paper's "
                                    "convention, optimistic)",
           "authors": "best test r_mean over all evaluation points of all phases, the authors' protocol "
                      "(selects on test, optimistic)"}


def summarize(runs_metrics: List[Dict[str, float]]) -> dict:
    """{mean: {metric: x}, std: {metric: x}} over runs (population std, as the authors' np.std)."""
    keys = runs_metrics[0].keys()
    return {"mean": {k: float(np.mean([m[k] for m in runs_metrics])) for k in keys},
            "std": {k: float(np.std([m[k] for m in runs_metrics])) for k in keys}}


def run_record(seed: int, points: List[dict], trained: List[dict], with_val: bool) -> dict:
    best = max(points, key=lambda p: p["test"]["r_mean"])
    record = {"seed": seed, "phases": trained, "points": points, "final": points[-1]["test"],
              "best": best["test"], "best_epoch": best["epoch"]}
    if with_val:
        chosen = max(points, key=lambda p: p["val"]["r_mean"])
        record.update(val_selected=chosen["test"], val_epoch=chosen["epoch"])
    return record


def headline(report: dict) -> Dict[str, float]:
    """The reported mean metrics (final epoch, or val-selected)."""
    return report[report["reported"]]["mean"]


ROWS = (("final", "final epoch"), ("val_selected", "val-selected"), ("best", "best on test"))
COLUMNS = (("IR@1", "img_r1"), ("IR@5", "img_r5"), ("IR@10", "img_r10"),
           ("TR@1", "txt_r1"), ("TR@5", "txt_r5"), ("TR@10", "txt_r10"), ("mean", "r_mean"))


def format_table(report: dict, title: Optional[str] = None) -> str:
    """IR@1/5/10, TR@1/5/10 and their mean as mean ± std, one row per selection; the reported row is starred."""
    label_width = max(len(label) for _, label in ROWS) + 2
    lines = [title] if title else []
    lines.append(" " * label_width + "".join(f"  {name:>14}" for name, _ in COLUMNS))
    for key, label in ROWS:
        if key not in report:
            continue
        mean, std = report[key]["mean"], report[key]["std"]
        star = "*" if key == report["reported"] else " "
        cells = "".join(f"  {mean[k]:6.2f} ± {std[k]:5.2f}" for _, k in COLUMNS)
        lines.append(f"{star}{label:<{label_width - 1}}{cells}")
    n = len(report["seeds"])
    if report["protocol"].get("protocol") == "authors":
        lines.append(f"(authors' protocol: * = {MEANING['authors']})")
    lines.append(f"(* reported; mean ± std over {n} run{'s' if n != 1 else ''}; eval points at epochs "
                 f"{report['eval_epochs']}; 'best on test': each run's best test r_mean over them, the paper's "
                 "convention, optimistic)")
    return "\n".join(lines)
