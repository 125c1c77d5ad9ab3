"""RepBlend's two ideas (issue 22) against independent computations: representation blending (--blend) by hand and
through every matching mode, and symmetric projection trajectory matching: head-only trajectories written by
buffer.py on an exported frozen encoder, loaded and matched with the gradient checks of the full encoder."""
import os

import pytest
import torch
import torch.nn.functional as F

import buffer
import prepare_data
from common.errors import UserError
from distill_utils.config import NetworkSpec
from distill_utils.files.buffers import BufferDir
from distill_utils.files.encoder_export import export_encoder
from distill_utils.files.expert_stream import ExpertStream
from distill_utils.method import blending
from distill_utils.method.losses import contrastive_loss
from distill_utils.method.matching import match_adjoint, match_constant, match_unrolled
from distill_utils.method.student import Student
from distill_utils.phases import Phase
from distill_utils.segments import expert_segment
from networks.dual_encoder import NetConfig, NetworkFactory
from networks.image_encoders import build_image_encoder
from tests.helpers import MATCH_BATCH, TEXT_DIM, grads_of, rel_err, run_cli, seeded_grads, tiny_matching
from tests.test_matching import _func_reference

LAM, PERM = 0.7, torch.tensor([2, 0, 3, 1])


# --- representation blending ---

def test_mix_by_hand_on_a_tiny_batch():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 1.0], [-1.0, 1.0]])
    mu = 1 - LAM  # row i: LAM x_i + mu x_PERM[i], PERM = [2, 0, 3, 1]
    want = torch.tensor([[LAM * 1 + mu * 3, LAM * 0 + mu * 1], [LAM * 0 + mu * 1, LAM * 2 + mu * 0],
                         [LAM * 3 + mu * -1, LAM * 1 + mu * 1], [LAM * -1 + mu * 0, LAM * 1 + mu * 2]])
    assert torch.allclose(blending.mix(x, LAM, PERM), want)


def test_draw_is_beta_unfolded_and_replays_with_the_rng():
    torch.manual_seed(3)
    state = torch.get_rng_state()
    draws = [blending.draw(1.0, 6) for _ in range(200)]
    lams = torch.tensor([lam for lam, _ in draws])
    assert 0 <= lams.min() and lams.max() <= 1 and (lams < 0.5).any()  # Beta(1, 1) is uniform: not folded
    assert abs(lams.mean().item() - 0.5) < 0.06
    assert all(sorted(p.tolist()) == list(range(6)) for _, p in draws)
    torch.set_rng_state(state)
    again = [blending.draw(1.0, 6) for _ in range(200)]
    assert all(a[0] == b[0] and torch.equal(a[1], b[1]) for a, b in zip(draws, again))


@pytest.mark.parametrize("trainable", [True, False])
def test_blended_loss_equals_an_independent_computation(monkeypatch, trainable):
    net, _, syn, start, _, schedule = tiny_matching(trainable=trainable, loss_type="InfoNCE")
    net.eval()
    x, y, s = syn.batch(schedule[0])
    assert len(x) == len(PERM)
    monkeypatch.setattr(blending, "draw", lambda alpha, n: (LAM, PERM))
    got = Student(net, "InfoNCE", blend=1.0).loss(start[0], start[1], x, y, s)
    # independent: the modules' inputs blended row by row (pixels, or the frozen encoder's features), the modules by
    # hand, cosine logits, symmetric soft cross-entropy against the unblended targets
    rows = lambda z: torch.stack([LAM * z[i] + (1 - LAM) * z[int(PERM[i])] for i in range(len(z))])
    call = lambda module, flat, layout, inp: torch.func.functional_call(module, layout.unflatten(flat), (inp,))
    zi = call(net.image_encoder, start[0], net.img_layout, rows(x)) if net.image_trainable else \
        call(net.image_head, start[0], net.img_layout, rows(net.image_encoder(x)))
    zt = call(net.text_head, start[1], net.txt_layout, rows(y))
    logits = net.logit_scale * F.normalize(zi, dim=1) @ F.normalize(zt, dim=1).t()
    ce = lambda lg, tg: -(tg * torch.log_softmax(lg, 1)).sum(1).mean()
    assert abs(got.item() - 0.5 * (ce(logits, s) + ce(logits.t(), s.t())).item()) < 1e-12


def test_blend_off_is_the_old_loss_bit_for_bit():
    net, _, syn, start, _, schedule = tiny_matching()
    net.train()
    x, y, s = syn.batch(schedule[0])
    torch.manual_seed(5)
    ours = Student(net, "WBCE", blend=0.0).loss(start[0], start[1], x, y, s)
    torch.manual_seed(5)
    old = contrastive_loss("WBCE")(net.logits(x, y, start[0], start[1]), s)
    assert torch.equal(ours, old)


@pytest.mark.parametrize("trainable", [True, False])
def test_adjoint_equals_unrolled_and_torch_func_with_blending(monkeypatch, trainable):
    """The exact gradient with a fixed blend against torch.func blending by hand (an independent computation)."""
    net, _, syn, start, target, schedule = tiny_matching(trainable=trainable, loss_type="InfoNCE")
    net.eval()
    student = Student(net, "InfoNCE", blend=1.0)
    monkeypatch.setattr(blending, "draw", lambda alpha, n: (LAM, PERM))
    match_adjoint(student, syn, start, target, schedule)
    ours = grads_of(syn)
    syn.zero_grad()
    match_unrolled(student, syn, start, target, schedule)
    unrolled = grads_of(syn)

    # torch.func's reference (test_matching.py) with the blend written into it: the modules' inputs blended
    want = _func_reference(net, syn, start, target, schedule, "InfoNCE", mix=lambda z: LAM * z + (1 - LAM) * z[PERM])
    for k, (a, b, c) in enumerate(zip(ours, unrolled, want)):
        assert rel_err(a, b) < 1e-8, (k, rel_err(a, b))
        assert rel_err(a, c) < 1e-8, (k, rel_err(a, c))


def test_random_blends_replay_in_every_mode():
    """Real draws (and dropout): constant's pass 2 replays pass 1 bit for bit, adjoint equals unrolled."""
    net, _, syn, start, target, schedule = tiny_matching(loss_type="InfoNCE")
    net.train()
    student = Student(net, "InfoNCE", blend=0.5)
    torch.manual_seed(11)
    result = match_constant(student, syn, start, target, schedule)
    assert torch.equal(result.final_img, result.replay_img) and torch.equal(result.final_txt, result.replay_txt)
    grads = seeded_grads((match_adjoint, match_unrolled), student, syn, start, target, schedule)
    for k, (a, b) in enumerate(zip(*grads)):
        assert rel_err(a, b) < 1e-8, (k, rel_err(a, b))
    plain = seeded_grads((match_unrolled,), Student(net, "InfoNCE"), syn, start, target, schedule)[0]
    assert rel_err(plain[0], grads[1][0]) > 1e-3  # the blends did change the gradient


# --- symmetric projection trajectory matching ---

@pytest.fixture(scope="module")
def heads_buffer(expert_dir, tmp_path_factory, tiny_data, tiny_text_encoder):
    """A full-encoder expert exported as the frozen encoder, and a buffer of head-only experts trained on it."""
    root = tmp_path_factory.mktemp("heads")
    ckpt = str(root / "encoder.pt")
    export_encoder(expert_dir, ckpt)
    args = ["--dataset", "synthetic", "--ann_root", tiny_data, "--feature_cache", str(root / "cache"),
            "--text_encoder", tiny_text_encoder, "--image_size", "16", "--image_encoder", "convnet_w8_d2_e32",
            "--synthetic_train_images", "40", "--synthetic_test_images", "10", "--device", "cpu",
            "--buffer_path", str(root), "--num_experts", "1", "--train_epochs", "2", "--no-image_trainable",
            "--image_checkpoint", ckpt, "--out_embedding", "12", "--batch_train", "16", "--eval_freq", "2"]
    try:
        buffer.main(args)
    except SystemExit as e:
        assert e.code in (0, None)
    return ckpt, BufferDir.of_network(str(root), "synthetic", "convnet_w8_d2_e32", tiny_text_encoder, "InfoNCE").path


def _heads_factory(ckpt):
    return NetworkFactory(NetConfig("convnet_w8_d2_e32", 16, TEXT_DIM, False, out_embedding=12, image_checkpoint=ckpt))


def test_exported_encoder_is_the_experts_final_encoder(expert_dir, heads_buffer):
    ckpt, _ = heads_buffer
    encoder, _ = build_image_encoder("convnet_w8_d2_e32", 16, None, ckpt)
    img_traj = torch.load(BufferDir(expert_dir).pairs()[0][1], weights_only=True)[0]
    params = list(encoder.parameters())
    assert len(params) == len(img_traj[-1]) and all(torch.equal(p.detach(), w) for p, w in zip(params, img_traj[-1]))


def test_export_refuses_a_heads_buffer_and_a_missing_expert(expert_dir, heads_buffer, tmp_path):
    _, heads_dir = heads_buffer
    with pytest.raises(UserError, match="frozen encoder"):
        export_encoder(heads_dir, str(tmp_path / "x.pt"))
    with pytest.raises(UserError, match="--expert 9"):
        export_encoder(expert_dir, str(tmp_path / "x.pt"), expert=9)


def test_prepare_data_encoder_command(expert_dir, tmp_path, capsys):
    out = str(tmp_path / "enc.pt")
    prepare_data.main(["encoder", "--normal_dir", expert_dir, "--out", out, "--epoch", "1"])
    assert os.path.isfile(out) and f"--image_checkpoint {out}" in capsys.readouterr().out
    code, err = run_cli(prepare_data.main, ["encoder", "--normal_dir", expert_dir], capsys)
    assert code == 2 and "--out" in err


def test_heads_buffer_holds_only_the_heads_and_is_refused_by_the_full_encoder(heads_buffer):
    ckpt, heads_dir = heads_buffer
    net = _heads_factory(ckpt).build(seed=0)
    buf = BufferDir(heads_dir)
    img_traj = torch.load(buf.pairs()[0][1], weights_only=True)[0]
    assert [tuple(t.shape) for t in img_traj[0]] == net.img_layout.shapes  # the image head, no encoder tensor
    assert sum(t.numel() for t in img_traj[0]) == sum(p.numel() for p in net.image_head.parameters())
    buf.check_network(net)
    full = NetworkFactory(NetConfig("convnet_w8_d2_e32", 16, TEXT_DIM, True, out_embedding=12)).build(seed=0)
    with pytest.raises(UserError, match="img parameters do not match"):
        buf.check_network(full)


def test_heads_buffer_is_refused_with_another_encoder(heads_buffer, expert_dir, tmp_path, tiny_text_encoder):
    ckpt, heads_dir = heads_buffer
    spec = lambda path: NetworkSpec("synthetic", "convnet_w8_d2_e32", tiny_text_encoder, 16, False, 12, None, path,
                                    "off", False)
    BufferDir(heads_dir).check_identity(spec(ckpt).identity())
    other = str(tmp_path / "other.pt")
    export_encoder(expert_dir, other, epoch=1)
    with pytest.raises(UserError, match="image_weights"):
        BufferDir(heads_dir).check_identity(spec(other).identity())


@pytest.mark.parametrize("blend", [0.0, 1.0])
def test_loaded_head_trajectories_match_with_the_full_encoders_gradient_checks(heads_buffer, blend, monkeypatch):
    """A segment of the head-only buffer, loaded as distillation loads it: adjoint equals unrolled and torch.func,
    all modes agree on one step, and constant's pass 2 replays pass 1 bit for bit (with dropout)."""
    ckpt, heads_dir = heads_buffer
    net = _heads_factory(ckpt).build(seed=0).double().eval()
    student = Student(net, "InfoNCE", blend=blend)
    phase = Phase(0, heads_dir, 0, 1, 6, 2, None)
    start, target, _ = expert_segment(ExpertStream(BufferDir(heads_dir), 0), phase, torch.Generator().manual_seed(0),
                                      1, torch.device("cpu"))
    start, target = tuple(t.double() for t in start), tuple(t.double() for t in target)
    assert start[0].numel() == net.img_layout.numel and start[1].numel() == net.txt_layout.numel
    _, _, syn, _, _, schedule = tiny_matching(loss_type="InfoNCE")
    syn.image.data = torch.randn(len(syn.image), 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    syn.text.data = torch.randn(len(syn.text), TEXT_DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    if blend:
        monkeypatch.setattr(blending, "draw", lambda alpha, n: (LAM, PERM))
    match_adjoint(student, syn, start, target, schedule)
    ours = grads_of(syn)
    syn.zero_grad()
    match_unrolled(student, syn, start, target, schedule)
    for k, (a, b) in enumerate(zip(ours, grads_of(syn))):
        assert rel_err(a, b) < 1e-8, (k, rel_err(a, b))
    mix = (lambda z: LAM * z + (1 - LAM) * z[PERM]) if blend else (lambda z: z)
    for k, (a, b) in enumerate(zip(ours, _func_reference(net, syn, start, target, schedule, "InfoNCE", mix=mix))):
        assert rel_err(a, b) < 1e-8, (k, rel_err(a, b))
    grads = seeded_grads((match_constant, match_unrolled, match_adjoint), student, syn, start, target, [schedule[0]])
    for other in grads[1:]:
        for a, b in zip(grads[0], other):
            assert rel_err(a, b) < 1e-10
    net.train()
    result = match_constant(student, syn, start, target, schedule)
    assert torch.equal(result.final_img, result.replay_img) and torch.equal(result.final_txt, result.replay_txt)


# --- the recipes ---

def _recipe_settings(script, recipe, *extra):
    from tests.test_settings import _parse
    return _parse(script, ["--config", os.path.join(os.path.dirname(os.path.dirname(__file__)), "recipes", recipe),
                           *extra])


@pytest.mark.parametrize("recipe, base, changed", [
    ("flickr_500_repblend.yaml", "flickr_500.yaml", {"image_trainable", "buffer_path", "blend", "name"}),
    ("synthetic_repblend.yaml", "synthetic_demo.yaml", {"image_trainable", "image_checkpoint", "buffer_path", "blend",
                                                        "name"})])
def test_repblend_recipes_change_only_the_two_ideas(recipe, base, changed):
    from distill_utils import settings
    for script, extra in ((settings.BUFFER, ()), (settings.DISTILL, ()), (settings.EVALUATE, ("--ckpt_path", "d.pt"))):
        new, old = _recipe_settings(script, recipe, *extra), _recipe_settings(script, base, *extra)
        differ = {k for k in new if k != "config" and new[k] != old[k]}
        assert differ <= changed and "image_trainable" in differ, (script, differ)
        assert new["image_trainable"] is False
    assert _recipe_settings(settings.DISTILL, recipe)["blend"] == 1.0
