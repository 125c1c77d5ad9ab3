"""The CUDA path (skipped without a GPU; bench/gpu_check.sh runs them on one): the pass-2 replay is bit for
bit with dropout in float32 (within 1e-3 under bf16), --resume ends where an uninterrupted run does, peak GPU memory lands in metrics.jsonl."""
import json

import pytest
import torch

from distill_utils import speed
from distill_utils.method.matching import match_constant, minibatch_schedule
from distill_utils.method.similarity import make_similarity
from distill_utils.method.student import Student
from distill_utils.method.learnable_set import SynOptim, SyntheticSet
from networks.dual_encoder import NetConfig, NetworkFactory
from tests.helpers import assert_same_saves, distill, distill_args, run_cli, whole_killed_resumed

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (bench/gpu_check.sh)")
CUDA = torch.device("cuda")


@pytest.mark.parametrize("encoder, amp, channels_last", [("convnet_w8_d2_e32", "off", False),
                                                          ("nfnet_l0", "off", False), ("nfnet_l0", "bf16", True)])
def test_pass_two_replays_pass_one_on_cuda_with_dropout(encoder, amp, channels_last):
    speed.deterministic(CUDA)
    torch.manual_seed(0)
    n, side, dim = 12, 32, 16
    config = NetConfig(encoder, side, dim, True, image_pretrained=False, amp=amp, channels_last=channels_last)
    net = NetworkFactory(config).build(seed=0, device=CUDA).train()  # dropout active in the text head
    student = Student(net, "WBCE")
    g = torch.Generator().manual_seed(0)
    syn = SyntheticSet(torch.randn(n, 3, side, side, generator=g).to(CUDA), torch.randn(n, dim, generator=g).to(CUDA),
                       make_similarity("full", n, device=CUDA), 0.05, 0.05, SynOptim(1.0, 1.0, 1.0, 1.0))
    start = tuple(p.to(CUDA) for p in net.initial_params())
    target = tuple(p + 0.01 * torch.randn_like(p) for p in start)
    schedule = minibatch_schedule(n, 6, 4, g)
    result = match_constant(student, syn, start, target, schedule)
    diff = (result.final_img - result.replay_img).abs().max().item()
    if amp == "off":
        assert torch.equal(result.final_img, result.replay_img), f"img params differ by up to {diff:.3e}"
        assert torch.equal(result.final_txt, result.replay_txt)
    else:  # under bf16 autocast the graph-building replay may pick other kernels: measured 5.7e-5 on an H200
        assert diff < 1e-3, f"img params differ by up to {diff:.3e}"
    assert all(torch.isfinite(t.grad).all() for t in syn.tensors())
    torch.manual_seed(123)  # another RNG state: other dropout masks, another end point
    other = match_constant(student, syn, start, target, schedule)
    assert not torch.equal(result.final_txt, other.final_txt)


def test_resume_on_cuda_ends_like_an_uninterrupted_run_and_logs_peak_memory(tiny_args, expert_dir, tmp_path,
                                                                            capsys, monkeypatch):
    whole, killed = whole_killed_resumed(tiny_args, expert_dir, tmp_path, capsys, monkeypatch, "--device", "cuda")
    assert_same_saves(whole, killed)
    records = [json.loads(line) for line in open(tmp_path / "synthetic" / "whole" / "metrics.jsonl")]
    runtime = next(r for r in records if r.get("event") == "runtime")
    assert runtime["device"].startswith("cuda") and runtime["cudnn_deterministic"] and not runtime["cudnn_benchmark"]
    done = [r for r in records if r.get("event") == "phase_done"]
    assert len(done) == 2 and all(r["peak_memory_mb"] > 0 for r in done)
    assert max(r["peak_memory_mb"] for r in done) < torch.cuda.get_device_properties(0).total_memory / 2**20


def test_amp_run_on_cuda_checks_against_float32(tiny_args, expert_dir, tmp_path, capsys):
    args = distill_args(tiny_args, expert_dir, tmp_path, "amp", "--device", "cuda", "--amp", "bf16", "--amp_check_it", "2", "--amp_tolerance", "1e6",
                 "--num_eval", "0")
    assert run_cli(distill.main, args, capsys)[0] == 0
    records = [json.loads(line) for line in open(tmp_path / "synthetic" / "amp" / "metrics.jsonl")]
    checks = [r for r in records if r.get("event") == "amp_check"]
    assert [(r["phase"], r["iteration"]) for r in checks] == [(0, 1), (0, 3), (1, 1), (1, 3)]
    assert all(0 <= r["amp_rel_err_max"] < float("inf") for r in checks)


def test_segments_conditioning_and_adjoint_resume_on_cuda(tiny_args, expert_dir, tmp_path, capsys, monkeypatch):
    """Two expert segments per iteration (each with its own dropout seed on the CUDA RNG), conditioned phases and the
    exact gradient: a killed and resumed run still ends bit for bit where an uninterrupted one does."""
    whole, killed = whole_killed_resumed(tiny_args, expert_dir, tmp_path, capsys, monkeypatch, "--device", "cuda",
                                         "--experts_per_it", "2", "--phase_conditioning", "cumulative",
                                         "--matching", "adjoint")
    assert_same_saves(whole, killed)


def test_seeded_draws_from_its_seed_and_restores_the_cuda_rng():
    from distill_utils.rng import seeded
    torch.cuda.manual_seed(7)
    before = torch.cuda.get_rng_state()
    with seeded(3, CUDA):
        inside = torch.rand(4, device=CUDA)
    assert torch.equal(torch.cuda.get_rng_state(), before)
    torch.cuda.manual_seed(3)
    assert torch.equal(inside, torch.rand(4, device=CUDA))


def test_kernel_levers_are_checked_against_strict_kernels_and_restored():
    """--tf32 --nondeterministic: the guard's reference runs under strict kernels, the run's flags come back after
    it, and the check reports the levers' error (TF32 rounds products to a 10-bit mantissa: not zero)."""
    from distill_utils.method.amp_guard import AmpGuard
    speed.kernels(CUDA, tf32=True, nondeterministic=True)
    with speed.strict_kernels(CUDA):
        assert not torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.deterministic
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.benchmark
    torch.manual_seed(0)
    n, side, dim = 12, 32, 64
    net = NetworkFactory(NetConfig("convnet", side, dim, True)).build(seed=0, device=CUDA).train()
    g = torch.Generator().manual_seed(0)
    syn = SyntheticSet(torch.randn(n, 3, side, side, generator=g).to(CUDA), torch.randn(n, dim, generator=g).to(CUDA),
                       make_similarity("full", n, device=CUDA), 0.05, 0.05, SynOptim(1.0, 1.0, 1.0, 1.0))
    start = tuple(p.to(CUDA) for p in net.initial_params())
    target = tuple(p + 0.01 * torch.randn_like(p) for p in start)
    guard = AmpGuard(Student(net, "WBCE"), "off", 1.0, 1, tf32=True, nondeterministic=True)
    _, record = guard.match(match_constant, syn, start, target, minibatch_schedule(n, 6, 4, g), 0)
    assert 0 < record["amp_rel_err_max"] < 1 and torch.backends.cuda.matmul.allow_tf32
    speed.deterministic(CUDA)
