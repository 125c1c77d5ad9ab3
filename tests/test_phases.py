"""parse_phases: one Phase per entry of the list flags, refused in one line where a list or a value does not fit."""
import pytest

from common.errors import UserError
from distill_utils.phases import Phase, parse_phases

LISTS = dict(buffer_path=["b0", "b1"], min_start_epoch=[0, 1], max_start_epoch=[2, 3], num_queries=[6, 8],
             Iteration=[5, 7], sim_rank=[2, 3])


def phases(subset_num=2, mini_batch_size=4, sim_type="lowrank", **lists):
    return parse_phases({**LISTS, **lists}, subset_num, mini_batch_size, sim_type)


def test_phase_p_takes_entry_p_of_every_list_flag():
    assert phases() == [Phase(0, "b0", 0, 2, 6, 5, 2), Phase(1, "b1", 1, 3, 8, 7, 3)]


def test_sim_rank_belongs_to_lowrank_only():
    full = phases(sim_type="full", sim_rank=None)
    assert [p.sim_rank for p in full] == [None, None]
    assert full[1].as_dict() == {"index": 1, "buffer_path": "b1", "min_start_epoch": 1, "max_start_epoch": 3,
                                   "num_queries": 8, "iterations": 7, "sim_rank": None}


@pytest.mark.parametrize("changes, message", [
    (dict(Iteration=[5]), r"--Iteration: expected 2 values \(one per phase, --subset_num\), got 1"),
    (dict(buffer_path=None), r"--buffer_path: expected 2 values \(one per phase, --subset_num\), got none"),
    (dict(sim_rank=[2]), "--sim_rank: expected 2 values"),
    (dict(subset_num=3), "--buffer_path: expected 3 values"),
    (dict(min_start_epoch=[0, 3]), "need 0 <= min < max, got 3, 3"),
    (dict(min_start_epoch=[-1, 1]), r"\(phase 0\): need 0 <= min < max"),
    (dict(num_queries=[6, 1]), r"--num_queries/--Iteration \(phase 1\): need at least 2 pairs and 1 iteration"),
    (dict(Iteration=[0, 7]), "need at least 2 pairs and 1 iteration"),
    (dict(mini_batch_size=7), r"--mini_batch_size 7 exceeds --num_queries 6 \(phase 0\)"),
    (dict(sim_rank=[2, 9]), r"--sim_rank \(phase 1\): need 1 <= rank <= num_queries, got 9"),
    (dict(sim_rank=[0, 3]), "need 1 <= rank <= num_queries, got 0"),
])
def test_a_list_or_value_that_does_not_fit_is_refused(changes, message):
    with pytest.raises(UserError, match=message):
        phases(**changes)
