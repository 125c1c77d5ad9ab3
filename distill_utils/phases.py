"""Per-phase settings of PTM-ST: one entry of each list flag per phase, or one record per phase in a recipe."""
from dataclasses import asdict, dataclass
from typing import List, Optional

from common.errors import UserError

LIST_FLAGS = ("buffer_path", "min_start_epoch", "max_start_epoch", "num_queries", "Iteration")
# a recipe's phase record: its keys are the Phase fields, each the list flag it gives one entry of
RECORD_KEYS = {"buffer_path": "buffer_path", "min_start_epoch": "min_start_epoch", "max_start_epoch": "max_start_epoch",
               "num_queries": "num_queries", "iterations": "Iteration", "sim_rank": "sim_rank"}


@dataclass(frozen=True)
class Phase:
    index: int
    buffer_path: str
    min_start_epoch: int
    max_start_epoch: int
    num_queries: int
    iterations: int
    sim_rank: Optional[int] = None

    def as_dict(self) -> dict:
        return asdict(self)


def lists_from_records(records: list, where: str) -> dict:
    """The list flags (and --subset_num) that a recipe's `phases` records stand for: record p gives entry p."""
    if not isinstance(records, list) or not records or not all(isinstance(r, dict) for r in records):
        raise UserError(f"{where}: phases: expected a list of records, one per phase")
    required = [k for k in RECORD_KEYS if k != "sim_rank"]
    for p, record in enumerate(records):
        unknown = [k for k in record if k not in RECORD_KEYS]
        missing = [k for k in required if k not in record]
        if unknown or missing:
            what = f"unknown key {unknown[0]!r}" if unknown else f"no {missing[0]}"
            raise UserError(f"{where}: phases: record {p} has {what} (keys: {', '.join(RECORD_KEYS)})")
    keys = required + (["sim_rank"] if any("sim_rank" in r for r in records) else [])
    return {"subset_num": len(records), **{RECORD_KEYS[k]: [r.get(k) for r in records] for k in keys}}


def parse_phases(lists: dict, subset_num: int, mini_batch_size: int, sim_type: str = "full") -> List[Phase]:
    """Phases from the list flags (`lists`: flag name -> its values, None when not given, for LIST_FLAGS and,
    with sim_type lowrank, sim_rank); refuses a list whose length differs from --subset_num."""
    flags = LIST_FLAGS + (("sim_rank",) if sim_type == "lowrank" else ())
    for flag in flags:
        values = lists.get(flag)
        if values is None or len(values) != subset_num:
            got = "none" if values is None else len(values)
            raise UserError(f"--{flag}: expected {subset_num} values (one per phase, --subset_num), got {got}")
    phases = []
    for p in range(subset_num):
        phase = Phase(p, *(lists[flag][p] for flag in LIST_FLAGS), lists["sim_rank"][p] if sim_type == "lowrank" else None)
        _check(phase, mini_batch_size)
        phases.append(phase)
    return phases


def _check(ph, mini_batch_size):
    where = f"phase {ph.index}"
    if not 0 <= ph.min_start_epoch < ph.max_start_epoch:
        raise UserError(f"--min_start_epoch/--max_start_epoch ({where}): need 0 <= min < max, got "
                        f"{ph.min_start_epoch}, {ph.max_start_epoch} (start epochs are drawn from [min, max))")
    if ph.num_queries < 2 or ph.iterations < 1:
        raise UserError(f"--num_queries/--Iteration ({where}): need at least 2 pairs and 1 iteration")
    if mini_batch_size > ph.num_queries:
        raise UserError(f"--mini_batch_size {mini_batch_size} exceeds --num_queries {ph.num_queries} ({where})")
    if ph.sim_rank is not None and not 1 <= ph.sim_rank <= ph.num_queries:
        raise UserError(f"--sim_rank ({where}): need 1 <= rank <= num_queries, got {ph.sim_rank}")
