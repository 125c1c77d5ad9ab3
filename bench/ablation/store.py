"""The ablation's results store: one JSON record per line in bench/results/ablation.jsonl, the only source of the
report's tables (report.py). A rerun's records replace the stored ones with the same key; the others stay.

Records (`kind`): `row`, one row of a table (level, budget `n`, `table`: main | authors | cross, `label`, `order`
in its table, the metrics' `mean` and `std`, and for the main table the eval `mode`, final `val` mean recall, test
mean recall under each eval mode `modes`, `s_per_it`, `peak_mb`); `curve`, a level's expert learning curve;
`eval`, any evaluation of a work directory (for facts.py); `trajectories`, what a level's expert
trajectories cost (full encoder, or `heads`: symmetric heads): parameters, expert seconds, bytes; `run`, when and how a level's steps ran. Every record
but a run names its `run`. Rows imported from the markdown report that predates the store say so in `source`
(their numbers are rounded as that report printed them).
"""
import json
import os

from common.io import atomic_path

PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results", "ablation.jsonl")


def key(record):
    kind = record["kind"]
    if kind == "run":
        return kind, record["id"]
    if kind == "curve":
        return kind, record["level"]
    if kind == "eval":
        return kind, record["level"], record["name"]
    if kind == "trajectories":
        return kind, record["level"], record["heads"]
    return kind, record["level"], record["n"], record["table"], record["label"]


def read(path=PATH):
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write(records, path=PATH):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in records)


def merged(old, new):
    """`old` with every record of `new` in place of the one with its key (new keys at the end); the run records no
    other record names any more are dropped."""
    replace = {key(r): r for r in new}
    out = [replace.pop(key(r), r) for r in old]
    out += [r for r in new if key(r) in replace]
    named = {r["run"] for r in out if "run" in r}
    return [r for r in out if r["kind"] != "run" or r["id"] in named]


def rows(records, level, n, table):
    return sorted((r for r in records if r["kind"] == "row" and r["level"] == level and r["n"] == n
                   and r["table"] == table), key=lambda r: r["order"])


def runs(records):
    return {r["id"]: r for r in records if r["kind"] == "run"}


def tagged(old, new, tag):
    """`new` made to keep `old`: a record whose key `old` has from another run is renamed with `tag` (a row's label, an evaluation's
    name; a curve is dropped: the run's trajectories records carry its curves), so that a rerun of rows measured
    before stores beside them instead of over them (--rerun_tag); its rows follow the stored ones in the tables."""
    runs, out = {key(r): r.get("run") for r in old}, []
    for r in new:
        if r["kind"] == "row":  # the rerun's rows after the stored ones, in their own order
            r = {**r, "order": r["order"] + 1000}
        if runs.get(key(r), r.get("run")) == r.get("run") or r["kind"] == "run":  # new, or this run's own
            out.append(r)
        elif r["kind"] == "row":
            out.append({**r, "label": f"{r['label']} ({tag})"})
        elif r["kind"] == "eval":
            out.append({**r, "name": f"{r['name']} ({tag})"})
    return out

