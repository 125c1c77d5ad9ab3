"""Metrics to stdout, to <run_dir>/metrics.jsonl (appended, so resumed runs keep their history) and,
optionally, to Weights & Biases."""
import json
import os
import time
from typing import List, Optional

from distill_utils import parallel


def end_torn_line(path: str) -> None:
    """A writer killed mid-line leaves a record without its newline: end it, so the next record starts a line."""
    try:
        with open(path, "rb+") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() and (f.seek(-1, os.SEEK_END), f.read(1))[1] != b"\n":
                f.write(b"\n")
    except FileNotFoundError:
        pass


def read_records(path: str) -> List[dict]:
    """The records of a metrics.jsonl; a line torn by a kill is skipped."""
    records = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


class RunLog:
    def __init__(self, run_dir: Optional[str], config: Optional[dict] = None, wandb_mode: str = "disabled",
                 name: Optional[str] = None, project: str = "ptm-st"):
        if not parallel.is_main():  # under torchrun, rank 0 alone logs
            run_dir, wandb_mode = None, "disabled"
        self.path = os.path.join(run_dir, "metrics.jsonl") if run_dir else None
        self.wandb = None
        if self.path:
            end_torn_line(self.path)
        if wandb_mode != "disabled":
            import wandb  # optional: only imported when asked for
            self.wandb = wandb.init(project=project, name=name, config=config, mode=wandb_mode,
                                    dir=run_dir, resume="allow")

    def log(self, record: dict, step: Optional[int] = None, echo: Optional[str] = None) -> None:
        record = {"time": round(time.time(), 3), **({"step": step} if step is not None else {}), **record}
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=step)
        if echo:
            print(echo, flush=True)

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
