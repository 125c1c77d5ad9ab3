"""ExpertStream: the order in which a distillation visits the experts of a buffer, and its resumable position."""
import pytest
import torch

from common.errors import UserError
from distill_utils.files.buffers import BufferDir
from distill_utils.files.expert_stream import ExpertStream

EXPERTS_PER_FILE = {0: 2, 1: 1, 2: 3}  # file n holds this many experts


def tag(n, e, side):
    """An expert whose only parameter names its file, its index in the file and its side (img 0, txt 1)."""
    return [[torch.tensor([float(n), float(e), float(side)])]]


@pytest.fixture
def buffer(tmp_path):
    for n, count in EXPERTS_PER_FILE.items():
        BufferDir(str(tmp_path)).save_pair(n, [tag(n, e, 0) for e in range(count)], [tag(n, e, 1) for e in range(count)])
    return BufferDir(str(tmp_path))


def visited(stream, k):
    out = []
    for _ in range(k):
        img, txt, path = stream.next()
        n, e, side = img[0][0].tolist()
        assert txt[0][0].tolist() == [n, e, 1.0] and side == 0.0 and path.endswith(f"img_replay_buffer_{int(n)}.pt")
        out.append((int(n), int(e)))
    return out


def expected(seed, passes):
    """Pass p visits the files in the order randperm(files) of a generator seeded seed * 7919 + p, every expert
    of a file in turn."""
    out = []
    for p in range(passes):
        order = torch.randperm(len(EXPERTS_PER_FILE), generator=torch.Generator().manual_seed(seed * 7919 + p))
        out += [(n, e) for n in order.tolist() for e in range(EXPERTS_PER_FILE[n])]
    return out


def test_each_pass_visits_every_expert_once_in_a_new_file_order(buffer):
    want = expected(3, passes=4)
    assert visited(ExpertStream(buffer, seed=3), len(want)) == want
    per_pass = len(want) // 4
    assert all(sorted(want[p * per_pass:(p + 1) * per_pass]) == sorted(want[:per_pass]) for p in range(4))
    assert len({tuple(want[p * per_pass:(p + 1) * per_pass]) for p in range(4)}) > 1  # the order changes


@pytest.mark.parametrize("k", [0, 1, 2, 5, 6, 7, 13])
def test_state_dict_round_trip_continues_with_the_same_experts(buffer, k):
    stream = ExpertStream(buffer, seed=3)
    visited(stream, k)
    state = stream.state_dict()
    assert state["files"] == [0, 1, 2] and all(isinstance(state[key], int) for key in ("pass_idx", "file_pos",
                                                                                       "expert_pos"))
    resumed = ExpertStream(buffer, seed=3)
    resumed.load_state_dict(state)
    assert visited(resumed, 10) == visited(stream, 10) == expected(3, passes=4)[k:k + 10]


def test_a_checkpoint_of_another_set_of_files_is_refused(buffer, tmp_path):
    state = ExpertStream(buffer, seed=3).state_dict()
    fewer = tmp_path / "fewer"
    fewer.mkdir()
    BufferDir(str(fewer)).save_pair(0, [tag(0, 0, 0)], [tag(0, 0, 1)])
    with pytest.raises(UserError, match=r"holds experts \[0\].*made with \[0, 1, 2\]"):
        ExpertStream(BufferDir(str(fewer)), seed=3).load_state_dict(state)


def test_files_are_mapped_and_the_next_one_is_announced_for_read_ahead(buffer, monkeypatch):
    """A file is loaded memory-mapped (its tensors read when touched), and loading it asks the kernel to read ahead
    both twins of the next file of the pass."""
    import os
    from distill_utils.files import expert_stream
    mapped, announced = [], []
    real_load = expert_stream.load_experts
    monkeypatch.setattr(expert_stream, "load_experts", lambda path, mmap=False: mapped.append(mmap) or real_load(path, mmap))
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, offset, length, advice: announced.append(
        (os.path.basename(os.readlink(f"/proc/self/fd/{fd}")), advice)))
    assert visited(ExpertStream(buffer, seed=0), 1) == expected(0, 1)[:1]
    following = next(n for n, _ in expected(0, 1) if n != expected(0, 1)[0][0])
    assert mapped == [True, True]
    assert announced == [(f"img_replay_buffer_{following}.pt", os.POSIX_FADV_WILLNEED),
                         (f"txt_replay_buffer_{following}.pt", os.POSIX_FADV_WILLNEED)]
