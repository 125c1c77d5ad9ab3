"""The markdown table of bench.paper_scale: its rows (extrapolated ones marked ~) and the two targets they test."""
DATA_KEYS = ("image", "text", "similarity")


def extrapolated(rows, targets):
    """Rows for `targets` steps: seconds per step of the largest measured step count of each setting, times steps."""
    out = []
    settings = {(r["mode"], r["levers"]) for r in rows if r["kind"] == "matching"}
    for mode, lever in sorted(settings):
        ok = [r for r in rows if r["kind"] == "matching" and r["mode"] == mode and r["levers"] == lever
              and r["status"] == "ok"]
        if not ok:
            continue
        top = max(ok, key=lambda r: r["steps"])
        for steps in targets:
            out.append({"kind": "matching", "mode": mode, "steps": steps, "levers": lever, "status": "extrapolated",
                        "seconds": top["seconds"] / top["steps"] * steps, "peak_gb": None, "from_steps": top["steps"]})
    return out


def _cell(row, key, fmt):
    if row["status"] not in ("ok", "extrapolated"):
        return row["status"]
    value = fmt.format(row[key]) if row.get(key) is not None else ""
    return ("~" + value) if row["status"] == "extrapolated" and value else value


def summary(rows, tolerance):
    """The issue's two targets, where the rows allow them."""
    lines = []
    get = lambda mode, steps, lever: next((r for r in rows if r["kind"] == "matching" and r["mode"] == mode
                                           and r["steps"] == steps and r["levers"] == lever
                                           and r["status"] in ("ok", "extrapolated")), None)
    measured = sorted({r["steps"] for r in rows if r["kind"] == "matching" and r["status"] == "ok"})
    if len(measured) >= 2:
        lo, hi = get("constant", measured[0], "float32"), get("constant", measured[-1], "float32")
        if lo and hi:
            ratio = hi["peak_gb"] / lo["peak_gb"]
            lines.append(f"- constant mode, float32: peak memory at {hi['steps']} steps / at {lo['steps']} steps = "
                         f"{ratio:.3f} (target <= 1.15: {'met' if ratio <= 1.15 else 'missed'})")
    for steps in sorted({r["steps"] for r in rows if r["kind"] == "matching"}):
        base = get("constant", steps, "float32")
        if not base:
            continue
        safe = [r for r in rows if r["kind"] == "matching" and r["steps"] == steps and r["status"] == "ok"
                and r["levers"] != "float32" and r.get("rel_err_data", float("inf")) <= tolerance]
        if safe:
            best = min(safe, key=lambda r: r["seconds"])
            ratio = best["seconds"] / base["seconds"]
            lines.append(f"- {steps} steps: fastest safe setting ({best['mode']}, {best['levers']}, data-gradient error "
                         f"{best['rel_err_data']:.1e} <= {tolerance:g}) takes {ratio:.2f}x the seconds of float32 "
                         f"constant mode (target <= 0.6: {'met' if ratio <= 0.6 else 'missed'})")
    return lines


def markdown(a, rows, header):
    lines = [header, "", "| mode | steps | settings | s/iter | peak GB | rel. error of the X / Y / S gradient vs float32 |",
             "|---|---|---|---|---|---|"]
    for r in sorted((r for r in rows if r["kind"] == "matching"), key=lambda r: (r["mode"], r["steps"], r["levers"] != "float32")):
        err = (" / ".join(f"{r[f'rel_err_{k}']:.1e}" for k in DATA_KEYS)) if "rel_err_image" in r else ""
        lines.append(f"| {r['mode']} | {r['steps']} | {r['levers']} | {_cell(r, 'seconds', '{:.2f}')} | "
                     f"{_cell(r, 'peak_gb', '{:.2f}')} | {err} |")
    epochs = [r for r in rows if r["kind"] in ("expert", "eval")]
    if epochs:
        lines += ["", "| epoch | settings | seconds | peak GB |", "|---|---|---|---|"]
        for r in epochs:
            what = (f"expert, {r['images']} images" if r["kind"] == "expert" else f"evaluation student, {r['images']} pairs")
            first = f" (first epoch, compiling: {r['first_epoch_seconds']:.1f})" if "first_epoch_seconds" in r else ""
            lines.append(f"| {what} | {r['levers']} | {_cell(r, 'seconds', '{:.2f}')}{first} | "
                         f"{_cell(r, 'peak_gb', '{:.2f}')} |")
    notes = summary(rows, a.tolerance)
    if any(r["status"] == "extrapolated" for r in rows):
        notes.append("- ~: extrapolated, seconds per step at the largest measured step count times the steps; "
                     "memory not extrapolated")
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"
