"""The figures the prose of docs/results.md is written from, computed from the results store and printed, never
written into the report: for each level and budget the best single-phase and the best phased row (each picked on
val), their gap against two standard deviations, 70% of the full set's mean recall, the ablation order, and every
stored evaluation (the subsets alone, other eval modes) with its test and val mean recall."""
from bench.ablation import store
from bench.ablation.collect import SHORT_RUN
from bench.ablation.plan import REPBLEND_ROWS

BAR = "ST, exact gradient"  # issue 22's bar: today's best distilled result at the same budget


def rerun(row):
    """A row stored beside the one it repeats (--rerun_tag): compared with its own run's rows, not in the verdicts."""
    return "(rerun" in row["label"]


def base(row):
    """A row's label without the iteration count a short run adds (collect.py): the row it is a run of."""
    return row["label"].removesuffix(SHORT_RUN.format(row.get("iterations")))


def verdict(rows):
    """Best phased (on val) against best single-phase (on val) at one budget, PTM-ST's rows only (RepBlend's are
    judged by repblend()); None when either is missing."""
    distilled = [r for r in rows if "s_per_it" in r and base(r) not in REPBLEND_ROWS and not rerun(r)]
    singles, multis = [r for r in distilled if not r["modes"]], [r for r in distilled if r["modes"]]
    if not singles or not multis:
        return None
    single, multi = (max(group, key=lambda r: r["val"]) for group in (singles, multis))
    gap = multi["mean"]["r_mean"] - single["mean"]["r_mean"]
    bar = 2 * max(single["std"]["r_mean"], multi["std"]["r_mean"])
    full = next((r for r in rows if r["label"].startswith("full train set")), None)
    return {"single": single, "phased": multi, "gap": gap, "bar": bar,
            "target": 0.7 * full["mean"]["r_mean"] if full else None,
            "best": max(single["mean"]["r_mean"], multi["mean"]["r_mean"])}


def repblend(rows):
    """RepBlend's rows against BAR: the best on test and on val, their gap and two standard deviations (the larger
    std of the two); None when BAR or every RepBlend row is missing."""
    bar = next((r for r in rows if base(r) == BAR), None)  # the stored row the issue names
    ours = [r for r in rows if base(r) in REPBLEND_ROWS]
    if bar is None or not ours:
        return None
    out = []
    for how, best in (("test", max(ours, key=lambda r: r["mean"]["r_mean"])), ("val", max(ours, key=lambda r: r["val"]))):
        gap = best["mean"]["r_mean"] - bar["mean"]["r_mean"]
        two_std = 2 * max(best["std"]["r_mean"], bar["std"]["r_mean"])
        out.append(f"RepBlend's best row on {how}: {best['label']} {best['mean']['r_mean']:.1f} ± "
                   f"{best['std']['r_mean']:.1f} vs {BAR} {bar['mean']['r_mean']:.1f} ± {bar['std']['r_mean']:.1f}: "
                   f"gap {gap:+.1f}, 2 std {two_std:.1f}")
    return out


def lines(records):
    out = []
    for level in dict.fromkeys(r["level"] for r in records if r["kind"] == "row"):
        for n in sorted({r["n"] for r in records if r["kind"] == "row" and r["level"] == level}, reverse=True):
            rows = store.rows(records, level, n, "main")
            v = verdict(rows)
            if v:
                s, p = v["single"], v["phased"]
                out.append(f"`{level}`, N = {n}: best phased (on val) {p['label']} [{p['mode']}] "
                           f"{p['mean']['r_mean']:.1f} ± {p['std']['r_mean']:.1f} vs best single-phase {s['label']} "
                           f"{s['mean']['r_mean']:.1f} ± {s['std']['r_mean']:.1f}: gap {v['gap']:+.1f}, 2 std "
                           f"{v['bar']:.1f}" + (f"; 70% of the full set: {v['target']:.1f}, best distilled "
                                                f"{v['best']:.1f}" if v["target"] is not None else ""))
            out += [f"  {line}" for line in repblend(rows) or []]
            distilled = sorted((r for r in rows if "s_per_it" in r), key=lambda r: r["mean"]["r_mean"])
            out.append(f"  order: " + " < ".join(f"{r['label']} ({r['mean']['r_mean']:.1f})" for r in distilled))
        for r in (r for r in records if r["kind"] == "eval" and r["level"] == level):
            val = "" if r["val"] is None else f" (val {r['val']:.1f})"
            out.append(f"  {r['name']}: {r['mean']['r_mean']:.1f} ± {r['std']['r_mean']:.1f}{val}")
    return out
