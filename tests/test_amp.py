"""--amp and --channels_last on the CPU: the float32 guard of the distillation passes, fp16 loss scaling,
channels-last equivalence, and the replay-safe SiLU that lets NFNet's pass 2 replay pass 1 bit for bit."""
import json
import math

import pytest
import torch
import torch.nn as nn

from distill_utils.method.amp_guard import AmpGuard, relative_error
from distill_utils.method.matching import match_constant, minibatch_schedule
from distill_utils.method.similarity import make_similarity
from distill_utils.method.student import Student, make_sgd, train_epoch
from distill_utils.method.learnable_set import SynOptim, SyntheticSet
from networks.dual_encoder import NetConfig, NetworkFactory
from networks.image_encoders import SiLU, replay_safe
from tests.helpers import distill, distill_args, run_cli, whole_killed_resumed

N, SIDE, DIM = 8, 8, 6


def tiny_matching(amp="off", channels_last=False):
    torch.manual_seed(0)
    net = NetworkFactory(NetConfig("convnet_w8_d2_e16", SIDE, DIM, True, amp=amp,
                                   channels_last=channels_last)).build(seed=0).train()
    g = torch.Generator().manual_seed(0)
    sim = make_similarity("full", N)
    sim.params[0] = sim.params[0] + 0.1 * torch.rand(N, N, generator=g)
    syn = SyntheticSet(torch.randn(N, 3, SIDE, SIDE, generator=g), torch.randn(N, DIM, generator=g), sim, 0.05, 0.05,
                       SynOptim(1.0, 1.0, 1.0, 1.0))
    start = net.initial_params()
    target = tuple(p + 0.05 * torch.randn(p.shape, generator=g) for p in start)
    return net, syn, start, target, minibatch_schedule(N, 4, 3, g)


def _run(student, syn, start, target, schedule, guard=None):
    torch.manual_seed(7)
    syn.zero_grad()
    if guard is None:
        match_constant(student, syn, start, target, schedule)
        return [t.grad.clone() for t in syn.tensors()], None
    _, record = guard.match(match_constant, syn, start, target, schedule, 0)
    return [t.grad.clone() for t in syn.tensors()], record


def test_relative_error_by_hand():
    assert relative_error(torch.tensor([3.0, 4.0]), torch.tensor([3.0, 0.0])) == pytest.approx(4 / 3)
    assert relative_error(torch.zeros(2), torch.zeros(2)) == 0.0 and math.isinf(relative_error(torch.ones(1), torch.zeros(1)))


def test_bf16_student_runs_the_network_under_autocast_and_the_loss_in_float32():
    net, syn, start, _, _ = tiny_matching()
    x, y, s = syn.batch(torch.arange(4))
    net.eval()
    f32, bf16 = Student(net, "WBCE").loss(*start, x, y, s), Student(net, "WBCE", amp="bf16").loss(*start, x, y, s)
    assert f32.dtype == bf16.dtype == torch.float32
    assert f32 != bf16 and abs(f32 - bf16) < 0.02 * abs(f32)  # really in bf16, and close


def test_a_passed_check_leaves_the_run_where_a_run_without_checks_is():
    net, syn, start, target, schedule = tiny_matching(amp="bf16")
    amp_only, _ = _run(Student(net, "WBCE"), syn, start, target, schedule)
    rng_after = torch.get_rng_state()
    f32, _ = _run(Student(net, "WBCE", amp="off"), syn, start, target, schedule)
    guard = AmpGuard(Student(net, "WBCE"), "bf16", tolerance=1.0, check_every=5)
    checked, record = _run(None, syn, start, target, schedule, guard)
    assert all(torch.equal(a, b) for a, b in zip(checked, amp_only)) and torch.equal(torch.get_rng_state(), rng_after)
    assert guard.active and "amp_fallback" not in record
    want = relative_error(amp_only[0], f32[0])  # the image gradient's error, computed here independently
    assert record["amp_rel_err_image"] == pytest.approx(want) and 0 < want < 1


def test_a_failed_check_keeps_the_float32_gradient_and_turns_amp_off():
    net, syn, start, target, schedule = tiny_matching(amp="bf16")
    f32, _ = _run(Student(net, "WBCE", amp="off"), syn, start, target, schedule)
    guard = AmpGuard(Student(net, "WBCE"), "bf16", tolerance=1e-12, check_every=5)
    checked, record = _run(None, syn, start, target, schedule, guard)
    assert record["amp_fallback"] and not guard.active and guard.state_dict() == {"active": False}
    assert all(torch.equal(a, b) for a, b in zip(checked, f32))
    later, record = _run(None, syn, start, target, schedule, guard)  # float32 from now on, no more checks
    assert record is None and guard.student.amp == "off" and all(torch.equal(a, b) for a, b in zip(later, f32))


def test_fp16_training_scales_the_loss():
    net, syn, start, _, _ = tiny_matching(amp="fp16")
    student = Student(net, "InfoNCE")
    img, txt = (p.clone().requires_grad_(True) for p in start)
    opt = make_sgd(img, txt, 0.1, 0.1, 0.9, 5e-4)
    batches = [(syn.image.detach()[:4], syn.text.detach()[:4], torch.eye(4))] * 20  # the first steps overflow and are skipped while the scale settles
    loss = train_epoch(student, img, txt, opt, batches)
    assert student.scaler is not None and student.scaler.get_scale() < 2**16 and math.isfinite(loss)
    assert not torch.equal(img.detach(), start[0]) and torch.isfinite(img).all()


def test_channels_last_gives_the_same_logits():
    net, syn, start, _, _ = tiny_matching()
    net.eval()
    x, y, _ = syn.batch(torch.arange(N))
    plain = net.logits(x, y, *start)
    net.channels_last = True
    assert torch.allclose(net.logits(x, y, *start), plain, atol=1e-5)


def test_replay_safe_silu_gives_the_same_first_gradient_with_and_without_create_graph():
    torch.manual_seed(0)
    model = replay_safe(nn.Sequential(nn.Linear(64, 256), nn.SiLU(), nn.Sequential(nn.Linear(256, 64), nn.SiLU())))
    assert not any(type(m) is nn.SiLU for m in model.modules()) and sum(type(m) is SiLU for m in model.modules()) == 2
    x = torch.randn(32, 64)
    assert torch.allclose(model[1](x), nn.functional.silu(x), atol=1e-6)
    params = list(model.parameters())
    plain = torch.autograd.grad(model(x).pow(2).sum(), params)
    graphed = torch.autograd.grad(model(x).pow(2).sum(), params, create_graph=True)
    assert all(torch.equal(a, b) for a, b in zip(plain, graphed))


def test_distillation_with_amp_logs_its_checks(tiny_args, expert_dir, tmp_path, capsys):
    args = distill_args(tiny_args, expert_dir, tmp_path, "amp", "--amp", "bf16", "--amp_check_it", "2", "--amp_tolerance", "1e6",
                 "--num_eval", "0", "--channels_last")
    assert run_cli(distill.main, args, capsys)[0] == 0
    records = [json.loads(line) for line in open(tmp_path / "synthetic" / "amp" / "metrics.jsonl")]
    checks = [r for r in records if r.get("event") == "amp_check"]
    assert [(r["phase"], r["iteration"]) for r in checks] == [(0, 1), (0, 3), (1, 1), (1, 3)]
    assert all(0 < r["amp_rel_err_max"] < 1 for r in checks)
    runtime = next(r for r in records if r.get("event") == "runtime")
    assert runtime["amp"] == "bf16" and runtime["channels_last"] and runtime["device"] == "cpu"


def test_kernel_levers_join_the_guard():
    """--tf32 / --nondeterministic are checked and fall back like --amp (on a CPU they change no kernel, so the
    check measures no error; tests/test_cuda.py measures them on CUDA)."""
    net, syn, start, target, schedule = tiny_matching()
    f32, _ = _run(Student(net, "WBCE"), syn, start, target, schedule)
    guard = AmpGuard(Student(net, "WBCE"), "off", tolerance=1.0, check_every=5, tf32=True, nondeterministic=True)
    assert guard.enabled and guard.levers == "tf32+nondeterministic"
    checked, record = _run(None, syn, start, target, schedule, guard)
    assert record["levers"] == "tf32+nondeterministic" and record["amp_rel_err_max"] == 0.0 and guard.active
    assert all(torch.equal(a, b) for a, b in zip(checked, f32))
    guard.tolerance = -1.0
    _, record = _run(None, syn, start, target, schedule, guard)
    assert record["amp_fallback"] and not guard.active
    assert not AmpGuard(Student(net, "WBCE"), "off", 1.0, 5).enabled


@pytest.mark.parametrize("flag", ["--tf32", "--nondeterministic"])
def test_kernel_levers_are_refused_off_cuda(tiny_args, expert_dir, tmp_path, capsys, flag):
    code, err = run_cli(distill.main, distill_args(tiny_args, expert_dir, tmp_path, "bad", flag, "--device", "cpu"), capsys)
    assert code == 2 and f"{flag}: a CUDA kernel setting, and this run is on cpu" in err
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("flag, value", [("--amp_tolerance", "nan"), ("--amp_tolerance", "0"), ("--amp_check_it", "0"),
                                         ("--threads", "0")])
def test_bad_amp_settings_are_refused_in_one_line(tiny_args, expert_dir, tmp_path, capsys, flag, value):
    code, err = run_cli(distill.main, distill_args(tiny_args, expert_dir, tmp_path, "bad", flag, value), capsys)
    assert code == 2 and flag in err and len(err.strip().splitlines()) == 1, err


def test_resume_keeps_a_fallback_to_float32(tiny_args, expert_dir, tmp_path, capsys, monkeypatch):
    """Phase 1 falls back at its first iteration; a run killed after it must not resume in bf16."""
    extra = ["--amp", "bf16", "--amp_tolerance", "1e-12", "--num_eval", "0"]
    whole_killed_resumed(tiny_args, expert_dir, tmp_path, capsys, monkeypatch, *extra)
    for run in ("whole", "killed"):
        records = [json.loads(line) for line in open(tmp_path / "synthetic" / run / "metrics.jsonl")]
        assert [(r["phase"], r["iteration"]) for r in records if r.get("amp_fallback")] == [(0, 1), (1, 1)]
    for name in ("distilled_1_2.pt", "distilled_1_final.pt"):
        a, b = (torch.load(tmp_path / "synthetic" / run / name, weights_only=True) for run in ("whole", "killed"))
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["similarity_mat"], b["similarity_mat"]), name


def test_a_run_started_before_the_speed_options_resumes(tiny_args, expert_dir, tmp_path, capsys):
    args = distill_args(tiny_args, expert_dir, tmp_path, "old", "--num_eval", "0")
    assert run_cli(distill.main, args, capsys)[0] == 0
    path = tmp_path / "synthetic" / "old" / "config.json"
    config = json.loads(path.read_text())
    for key in ("amp", "channels_last", "amp_tolerance", "amp_check_it"):
        del config[key]
    path.write_text(json.dumps(config))
    assert run_cli(distill.main, args + ["--resume"], capsys)[0] == 0
    code, err = run_cli(distill.main, args + ["--resume", "--amp", "bf16"], capsys)
    assert code == 2 and "--amp was 'off'" in err
