"""The one-time import that made bench/results/ablation.jsonl: the rows of the markdown report that predates the
store (docs/results.md as of b1e3fad), whose numbers lived nowhere else. Kept to show where those records come from;
the report never parses markdown.

    git show b1e3fad:docs/results.md > /tmp/old.md && python -m bench.ablation.import_markdown /tmp/old.md
"""
import calendar
import re
import sys

from bench.ablation import store
from distill_utils.evaluation.summary import COLUMNS

SOURCE = "docs/results.md at b1e3fad (numbers rounded as it printed them)"
RUN = re.compile(r"\*Run:\* (\d{4}-\d\d-\d\d) (\d\d:\d\d)-(\d\d:\d\d) UTC, (\d+) min of single-thread steps, (\d+) at "
                 r"a time, .*?1-min load average ([\d.]+) \(min ([\d.]+), max ([\d.]+)\)")


def _epoch(day, hhmm):
    return calendar.timegm(tuple(map(int, day.split("-"))) + tuple(map(int, hhmm.split(":"))) + (0, 0, 0, 0))


def _scores(cells):
    pairs = [tuple(map(float, c.split(" ± "))) for c in cells]
    return {"mean": {k: m for (_, k), (m, _) in zip(COLUMNS, pairs)},
            "std": {k: s for (_, k), (_, s) in zip(COLUMNS, pairs)}}


def records(text):
    out, level, n, table, run, encoder, order = [], None, None, None, None, None, 0
    for line in text.split("\n"):
        if line.startswith("## "):
            if not line.startswith("## `"):
                break
            level = line.strip("# `")
        elif m := RUN.match(line):
            day, t0, t1, minutes, jobs, *loads = m.groups()
            run = {"kind": "run", "level": level, "start": _epoch(day, t0), "end": _epoch(day, t1),
                   "minutes": float(minutes), "jobs": int(jobs), "load": [float(x) for x in loads], "source": SOURCE}
            run["id"] = f"{level}@{run['start']}"
            out.append(run)
        elif line.startswith("Expert learning curve"):
            experts = int(re.search(r"mean of (\d+) experts", line).group(1))
        elif line.startswith("| epoch |"):
            epochs = line.strip("| ").split(" | ")[1:]
        elif line.startswith("| mean recall |"):
            recall = line.strip("| ").split(" | ")[1:]
            out.append({"kind": "curve", "level": level, "run": run["id"], "experts": experts, "source": SOURCE,
                        "recall": {e: float(v) for e, v in zip(epochs, recall)}})
        elif line.startswith("### N = "):
            n, table, order = int(line.split()[3]), "main", 0
        elif line.startswith("The authors' protocol"):
            table = "authors"
        elif line.startswith("Cross-architecture"):
            table, encoder = "cross", re.search(r"`([^`]*)`", line).group(1)
        elif line.startswith("| ") and not line.startswith("| method") and n is not None:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            record = {"kind": "row", "level": level, "n": n, "table": table, "label": cells[0], "order": order,
                      "run": run["id"], "source": SOURCE}
            order += 1
            if table != "main":
                out.append({**record, **_scores(cells[1:8]), **({"encoder": encoder} if table == "cross" else {})})
                continue
            record.update(mode=cells[1], **_scores(cells[2:9]), val=float(cells[9]))
            if cells[11]:  # a distilled row: modes, speed and memory
                modes = [None if c == "-" else float(c) for c in cells[10].split(" / ")] if cells[10] else None
                record.update(modes=dict(zip(("sequential", "cumulative", "union"), modes)) if modes else None,
                              s_per_it=float(cells[11]), peak_mb=float(cells[12]))
            out.append(record)
    return out


if __name__ == "__main__":
    store.write(store.merged(store.read(), records(open(sys.argv[1]).read())))
