"""--experts_per_it and torchrun: segments split over ranks, gradients averaged, rank 0 alone writes, resume.

The two-rank runs start `torchrun --nproc_per_node 2` (gloo, CPU) on tests/rank_probe.py, which records each
rank's synthetic set after every update and the files it wrote."""
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch

from common.errors import UserError
from distill_utils import parallel, segments
from distill_utils.method.amp_guard import AmpGuard
from distill_utils.method.matching import match_constant, minibatch_schedule
from distill_utils.rng import segment_seed
from tests.helpers import ROOT, assert_same_saves, distill, distill_args, run_cli, tiny_flags, tiny_matching

SAVES = ("distilled_0_2.pt", "distilled_0_final.pt", "distilled_1_2.pt", "distilled_1_final.pt")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(probe_dir, runs_dir, argv, kill_at=0):
    """Two gloo ranks on the probe; returns (exit status, [rank 0's record, rank 1's record], stderr)."""
    os.makedirs(probe_dir, exist_ok=True)
    env = {**os.environ, "PROBE_KILL_AT": str(kill_at), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), os.path.join(ROOT, "tests", "rank_probe.py"), str(probe_dir),
           str(runs_dir), *argv]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    records = [json.load(open(os.path.join(probe_dir, f"rank{r}.json"))) for r in range(2)]
    return done.returncode, records, done.stderr


def _run(tiny_args, expert_dir, runs, name, k, *extra):
    return distill_args(tiny_args, expert_dir, runs, name, "--experts_per_it", str(k), *extra)


@pytest.fixture(scope="module")
def one_process_k2(tmp_path_factory, expert_dir, tiny_data, tiny_text_encoder):
    """The reference: --experts_per_it 2 in this process; (its run directory, the tiny flags)."""
    runs, tiny = tmp_path_factory.mktemp("one"), tiny_flags(tiny_data, tiny_text_encoder, tmp_path_factory)
    torch.set_num_threads(1)  # as the ranks run (torchrun: OMP_NUM_THREADS=1)
    try:
        distill.main(_run(tiny, expert_dir, runs, "k2", 2))
    except SystemExit as e:
        assert e.code in (0, None)
    return runs / "synthetic" / "k2", tiny


def _evals(run_dir):
    records = map(json.loads, open(run_dir / "metrics.jsonl"))
    return [{k: v for k, v in r.items() if k.startswith("eval_")} for r in records if r.get("event") == "eval"]


def test_two_ranks_equal_one_process_and_only_rank_0_writes(one_process_k2, expert_dir, tmp_path):
    reference, tiny = one_process_k2
    code, (rank0, rank1), err = torchrun(tmp_path / "probe", tmp_path, _run(tiny, expert_dir, tmp_path, "r2", 2))
    assert code == 0, err[-2000:]
    assert len(rank0["digests"]) == 6 and rank0["digests"] == rank1["digests"]  # ranks agree bit for bit
    assert rank1["writes"] == [] and rank0["writes"]
    run_dir = tmp_path / "synthetic" / "r2"
    assert_same_saves(reference, run_dir, SAVES)  # K = 2 over 2 ranks: g0 + g1 is the same sum in any order
    assert _evals(run_dir) == _evals(reference) and len(_evals(run_dir)) == 4  # 2 students, one per rank


def test_killed_two_rank_run_resumes_on_one_or_two_ranks(one_process_k2, expert_dir, tmp_path, capsys):
    reference, tiny = one_process_k2
    args = _run(tiny, expert_dir, tmp_path, "killed", 2, "--num_eval", "0")
    code, (rank0, rank1), _ = torchrun(tmp_path / "probe", tmp_path, args, kill_at=5)
    assert code != 0 and len(rank0["digests"]) == 4 == len(rank1["digests"])
    killed = tmp_path / "synthetic" / "killed"
    ckpt = torch.load(killed / "checkpoint.pt", weights_only=True)
    assert (ckpt["phase"], ckpt["iteration"]) == (1, 1)
    shutil.copytree(killed, tmp_path / "as_killed")
    code, (rank0, rank1), err = torchrun(tmp_path / "probe2", tmp_path, args + ["--resume"])  # two ranks again
    assert code == 0 and rank0["digests"] == rank1["digests"] and len(rank0["digests"]) == 2, err[-2000:]
    assert_same_saves(reference, killed)
    shutil.rmtree(killed)
    shutil.copytree(tmp_path / "as_killed", killed)
    assert run_cli(distill.main, args + ["--resume"], capsys)[0] == 0  # one rank now
    assert_same_saves(reference, killed)


def test_share_splits_items_in_contiguous_blocks():
    for n in range(1, 9):
        for size in range(1, n + 1):
            blocks = [list(parallel.share(n, r, size)) for r in range(size)]
            assert sum(blocks, []) == list(range(n)) and all(blocks)
            assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


def test_k_segments_average_their_gradients_and_do_not_depend_on_the_split(monkeypatch):
    """match_segments against one match_constant per segment, each under its segment's seed, averaged by hand;
    then the same segments as two ranks see them (the other rank's not loaded), partial sums added afterwards."""
    _, student, syn, start, target, _ = tiny_matching()
    g = torch.Generator().manual_seed(1)
    segs = [segments.Segment(k, 0, minibatch_schedule(len(syn), 4, 3, g), tuple(v + 0.01 * k for v in start), target)
            for k in range(3)]
    grads, losses = [], []
    for seg in segs:
        with torch.random.fork_rng():
            torch.manual_seed(segment_seed(7, 5, seg.index))
            syn.zero_grad()
            losses.append(match_constant(student, syn, seg.start, seg.target, seg.schedule).loss)
        grads.append([t.grad.clone() for t in syn.tensors()])
    mean = [sum(gs) / 3 for gs in zip(*grads)]
    guard = AmpGuard(student, "off", 1.0, 1)
    syn.zero_grad()
    result, checks = segments.match_segments(segs, guard, match_constant, syn, 7, 5)
    assert checks == [] and result.loss == pytest.approx(sum(losses) / 3, rel=1e-12)
    assert all(torch.equal(t.grad, m) for t, m in zip(syn.tensors(), mean))  # one process: the same sum order
    monkeypatch.setattr(parallel, "sum_to_all", lambda tensors: tensors)
    partial = []
    for r in range(2):
        mine = parallel.share(3, r, 2)
        local = [s if s.index in mine else segments.Segment(s.index, s.start_epoch, s.schedule) for s in segs]
        syn.zero_grad()
        segments.match_segments(local, guard, match_constant, syn, 7, 5)
        partial.append([t.grad * 3 for t in syn.tensors()])
    for m, a, b in zip(mean, *partial):
        assert torch.allclose((a + b) / 3, m, rtol=1e-12, atol=1e-15)


def test_under_amp_every_segment_starts_from_the_iterations_precision():
    """A failed check on segment 0 does not change segment 1's precision (it may run on another rank): both are
    checked, both fail (a negative tolerance fails every check), and float32 holds from the next iteration on."""
    _, student, syn, start, target, schedule = tiny_matching()
    guard = AmpGuard(student, "bf16", tolerance=-1.0, check_every=5)
    segs = [segments.Segment(k, 0, schedule, start, target) for k in range(2)]
    _, checks = segments.match_segments(segs, guard, match_constant, syn, 7, 0)
    assert [(c["segment"], c["amp_fallback"]) for c in checks] == [(0, True), (1, True)] and not guard.active
    _, checks = segments.match_segments(segs, guard, match_constant, syn, 7, 5)
    assert checks == [] and not guard.active


def test_ranks_holding_different_sets_are_stopped(monkeypatch):
    """check_same compares the digests of the ranks' copies: equal copies pass, one flipped bit stops the run."""
    mine, other = [torch.arange(6.0), torch.tensor(0.5)], [torch.arange(6.0), torch.tensor(0.5)]
    monkeypatch.setattr(parallel, "world_size", lambda: 2)
    monkeypatch.setattr(parallel, "gather", lambda items: items + [parallel.digest(other)])
    parallel.check_same(mine, "the synthetic set")
    other[1] = torch.nextafter(torch.tensor(0.5), torch.tensor(1.0))
    with pytest.raises(UserError, match="torchrun ranks hold different copies of the synthetic set"):
        parallel.check_same(mine, "the synthetic set")


def test_bad_experts_per_it_is_refused_in_one_line(tiny_args, expert_dir, tmp_path, capsys):
    code, err = run_cli(distill.main, _run(tiny_args, expert_dir, tmp_path, "bad", 0), capsys)
    assert code == 2 and "--experts_per_it 0: expected a finite positive number" in err, err
    assert len(err.strip().splitlines()) == 1


def test_fewer_segments_than_ranks_is_refused():
    with pytest.raises(Exception, match="--experts_per_it 1: torchrun started 2 ranks"):
        segments.check_experts_per_it(1, 2)
