"""files/run_dir.py: a run directory opened, resumed, refused when settings changed, its log truncated, its
subsets saved, and a checkpoint written and restored (RNG states included) exactly."""
import json
import os

import pytest
import torch

from common.errors import UserError
from distill_utils.files.buffers import BufferDir
from distill_utils.files.expert_stream import ExpertStream
from distill_utils.files.run_dir import RunDir
from distill_utils.files.subset_file import load_subset
from distill_utils.method.learnable_set import SynOptim, SyntheticSet
from distill_utils.method.similarity import make_similarity
from distill_utils.phases import Phase

CONFIG = {"name": "r", "lr_img": 100.0, "device": "cpu", "resume": False}
DEFAULTS = {"name": None, "lr_img": 1000.0, "device": "auto", "resume": False, "added_later": 7}


def _open(tmp_path, resume=False, **changes):
    return RunDir.open(str(tmp_path), "synthetic", "r", {**CONFIG, **changes, "resume": resume}, resume, DEFAULTS)


def test_a_new_run_writes_nothing_until_it_starts_then_needs_resume(tmp_path):
    run = _open(tmp_path)
    assert run.path == str(tmp_path / "synthetic" / "r") and os.listdir(run.path) == []
    run.start(None)
    assert json.load(open(run.file("config.json"))) == CONFIG
    with pytest.raises(UserError, match="exists; pass --resume"):
        _open(tmp_path)


def test_resume_refuses_a_changed_setting_and_allows_a_resumable_one(tmp_path):
    _open(tmp_path).start(None)
    with pytest.raises(UserError, match=r"--lr_img was 100.0 in .*, now 5.0"):
        _open(tmp_path, resume=True, lr_img=5.0)
    assert _open(tmp_path, resume=True, device="cuda").resume  # RESUMABLE_CHANGES
    assert _open(tmp_path, resume=True, added_later=7).resume  # absent from config.json: the run had its default
    with pytest.raises(UserError, match="--added_later was 7"):
        _open(tmp_path, resume=True, added_later=8)


def test_resume_of_a_run_killed_before_it_started_starts_it(tmp_path, capsys):
    with pytest.raises(UserError, match="holds no run to continue"):
        _open(tmp_path, resume=True)
    os.makedirs(tmp_path / "synthetic" / "r")
    run = _open(tmp_path, resume=True)
    assert not run.resume and "starting it" in capsys.readouterr().out
    run.start(None)
    assert json.load(open(run.file("config.json")))["resume"] is False


def test_truncate_log_keeps_the_records_up_to_the_checkpoint_and_drops_a_torn_line(tmp_path):
    run = _open(tmp_path)
    records = [{"event": "runtime"}, {"phase": 0, "iteration": 1}, {"phase": 0, "iteration": 2},
               {"phase": 1, "iteration": 1}]
    with open(run.file("metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
        f.write('{"phase": 1, "itera')
    run.truncate_log(0, 2)
    assert [json.loads(line) for line in open(run.file("metrics.jsonl"))] == records[:3]
    run.truncate_log(-1, -1)
    assert [json.loads(line) for line in open(run.file("metrics.jsonl"))] == records[:1]


class _Pairs:
    def __init__(self, n):
        self.captions = [f"caption {k}" for k in range(n)]


class _Train:
    def __init__(self, n=5, dim=4):
        self.text_features, self.pairs = torch.randn(n, dim), _Pairs(n)


def _syn(seed):
    g = torch.Generator().manual_seed(seed)
    return SyntheticSet(torch.randn(3, 3, 4, 4, generator=g), torch.randn(3, 4, generator=g), make_similarity("full", 3),
                        0.1, 0.1, SynOptim(1.0, 1.0, 1.0, 0.01))


def _buffer(tmp_path):
    directory = str(tmp_path / "buf")
    os.makedirs(directory)
    for n in range(2):
        BufferDir(directory).save_pair(n, [[[torch.randn(2)] for _ in range(3)]] * 2, [[[torch.randn(2)] for _ in range(3)]] * 2)
    return directory


def test_save_subset_writes_the_file_its_picture_and_captions(tmp_path):
    run = _open(tmp_path)
    subset = _syn(0).subset({"phase": 0})
    path = run.save_subset(subset, "0_2", _Train())
    assert path == run.file("distilled_0_2.pt") and run.last_save == path
    assert torch.equal(load_subset(path).image, subset.image)
    assert os.path.getsize(run.file("images_0_2.png")) > 0
    assert len(open(run.file("captions_0_2.txt")).read().splitlines()) == 1 + len(subset)


def test_checkpoint_round_trip_restores_subset_experts_generator_and_rng(tmp_path):
    run, directory = _open(tmp_path), _buffer(tmp_path)
    run.start(None)
    phase = Phase(0, directory, 0, 1, 3, 5)
    syn, stream, generator = _syn(0), ExpertStream(BufferDir(directory), 0), torch.Generator().manual_seed(3)
    syn.image.grad = torch.ones_like(syn.image)
    syn.step()
    for _ in range(3):
        stream.next()
    torch.rand(2, generator=generator)
    run.last_save = "distilled_0_2.pt"
    torch.manual_seed(11)
    run.write_checkpoint(0, 2, {"syn": syn.state_dict(), "experts": stream.state_dict(), "generator": generator.get_state()},
                         torch.device("cpu"))
    saved_stream = stream.state_dict()
    expected = (torch.rand(3), torch.rand(3, generator=generator), stream.next()[0][0][0])

    torch.manual_seed(99)
    resumed = RunDir.open(str(tmp_path), "synthetic", "r", {**CONFIG, "resume": True}, True, DEFAULTS)
    ckpt = resumed.read_checkpoint(num_phases=1)
    syn2, stream2, gen2 = _syn(1), ExpertStream(BufferDir(directory), 0), torch.Generator().manual_seed(0)
    assert resumed.restore(ckpt, phase, syn2, stream2, gen2, torch.device("cpu")) == 2
    assert all(torch.equal(a, b) for a, b in zip(syn.tensors(), syn2.tensors()))
    assert all(torch.equal(a, b) for a, b in zip(syn.ema.shadow, syn2.ema.shadow))
    assert resumed.last_save == "distilled_0_2.pt" and stream2.state_dict() == saved_stream
    got = (torch.rand(3), torch.rand(3, generator=gen2), stream2.next()[0][0][0])
    assert all(torch.equal(a, b) for a, b in zip(expected, got))
    with pytest.raises(UserError, match="does not fit phase 0"):
        resumed.restore(ckpt, Phase(0, directory, 0, 1, 3, 1), _syn(1), stream2, gen2, torch.device("cpu"))


def test_a_checkpoint_is_read_only_on_resume_and_refused_when_foreign_or_beyond_the_phases(tmp_path):
    run = _open(tmp_path)
    run.start(None)
    run.write_checkpoint(1, 2, {"syn": _syn(0).state_dict(), "experts": {"pass_idx": 0, "file_pos": 0, "expert_pos": 0},
                                "generator": torch.Generator().get_state()}, torch.device("cpu"))
    assert run.read_checkpoint(num_phases=2) is None  # a new run continues from nothing
    resumed = _open(tmp_path, resume=True)
    assert resumed.read_checkpoint(num_phases=2)["iteration"] == 2
    with pytest.raises(UserError, match="is in phase 1, this run has phases 0..0"):
        resumed.read_checkpoint(num_phases=1)
    torch.save({"phase": 0}, run.file("checkpoint.pt"))
    with pytest.raises(UserError, match="not a checkpoint of this program"):
        resumed.read_checkpoint(num_phases=2)
