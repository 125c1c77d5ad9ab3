"""The distillation gradient against independent computations (float64, tiny networks)."""
import pytest
import torch
from torch.func import functional_call, grad

from distill_utils.losses import contrastive_loss
from distill_utils.matching import match_constant, match_unrolled, minibatch_schedule
from distill_utils.similarity import make_similarity
from distill_utils.student import Student
from distill_utils.syn_set import SynOptim, SyntheticSet
from networks.dual_encoder import DualEncoder
from networks.image_encoders import build_image_encoder

N, STEPS, BATCH, TEXT_DIM = 6, 4, 4, 5


def _setup(sim_kind="full", trainable=True, loss_type="WBCE", seed=0):
    torch.manual_seed(seed)
    encoder, dim = build_image_encoder("convnet_w4_d1_e6", 4)
    net = DualEncoder(encoder, dim, TEXT_DIM, trainable, out_embedding=6).double()
    student = Student(net, loss_type)
    g = torch.Generator().manual_seed(seed)
    sim = make_similarity(sim_kind, N, rank=2, alpha=1.0, generator=g)
    sim.params = [p.double() for p in sim.params]
    if sim_kind == "lowrank":
        sim.params[2] = torch.randn(N, 2, generator=g).double() * 0.3  # R = 0 would hide the L gradient
    else:
        sim.params[0] = sim.params[0] + 0.1 * torch.rand(N, N, generator=g).double()
    syn = SyntheticSet(torch.randn(N, 3, 4, 4, generator=g).double(), torch.randn(N, TEXT_DIM, generator=g).double(),
                       sim, 0.05, 0.08, SynOptim(1.0, 1.0, 1.0, 1.0))
    img0, txt0 = (p.double() for p in net.initial_params())
    start = (img0, txt0)
    target = (img0 + 0.05 * torch.randn(img0.shape, generator=g).double(),
              txt0 + 0.05 * torch.randn(txt0.shape, generator=g).double())
    schedule = minibatch_schedule(N, BATCH, STEPS, g)
    return net, student, syn, start, target, schedule


def _grads(syn):
    return [t.grad.clone() for t in syn.tensors()]


def _rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("sim_kind, trainable, loss_type", [("full", True, "WBCE"), ("lowrank", True, "InfoNCE"),
                                                            ("full", False, "CWCL")])
def test_constant_gradient_equals_autograd_with_student_params_held_constant(sim_kind, trainable, loss_type):
    net, student, syn, start, target, schedule = _setup(sim_kind, trainable, loss_type)
    net.eval()  # no dropout: the reference below draws no random numbers
    result = match_constant(student, syn, start, target, schedule)
    ours = _grads(syn)

    # independent: rebuild theta_i from pass 1 as constants, then autograd of the same objective
    lr_img, lr_txt = (t.detach().clone().requires_grad_(True) for t in (syn.lr_img, syn.lr_txt))
    data = [t.detach().clone().requires_grad_(True) for t in [syn.image, syn.text, *syn.sim_params]]
    thetas, img, txt = [], start[0].clone(), start[1].clone()
    with torch.no_grad():
        x_all, y_all = syn.image, syn.text
    for idx in schedule:
        thetas.append((img.clone(), txt.clone()))
        s = syn.similarity.batch([p.detach() for p in syn.sim_params], idx)
        _, gi, gt = student.grads(img.clone().requires_grad_(True), txt.clone().requires_grad_(True),
                                  x_all[idx].detach(), y_all[idx].detach(), s)
        img, txt = img - lr_img.detach() * gi, txt - lr_txt.detach() * gt
    g_img, g_txt = 0, 0
    for (ti, tt), idx in zip(thetas, schedule):
        ti, tt = ti.requires_grad_(True), tt.requires_grad_(True)
        loss = student.loss(ti, tt, data[0][idx], data[1][idx], syn.similarity.batch(data[2:], idx))
        gi, gt = torch.autograd.grad(loss, (ti, tt), create_graph=True)
        g_img, g_txt = g_img + gi, g_txt + gt
    end_img, end_txt = start[0] - lr_img * g_img, start[1] - lr_txt * g_txt
    objective = ((end_img - target[0]).pow(2).sum() / (start[0] - target[0]).pow(2).sum()
                 + (end_txt - target[1]).pow(2).sum() / (start[1] - target[1]).pow(2).sum())
    want = torch.autograd.grad(objective, data + [lr_img, lr_txt])
    assert abs(objective.item() - result.loss) < 1e-10
    for k, (a, b) in enumerate(zip(ours, want)):
        assert _rel(a, b) < 1e-5, (k, _rel(a, b))


@pytest.mark.parametrize("sim_kind", ["full", "lowrank"])
def test_unrolled_gradient_equals_full_autograd(sim_kind):
    net, student, syn, start, target, schedule = _setup(sim_kind)
    net.eval()
    match_unrolled(student, syn, start, target, schedule)
    ours = _grads(syn)

    # independent: torch.func, differentiating through every inner gradient step
    img_names, txt_names = net.img_layout, net.txt_layout
    criterion = contrastive_loss("WBCE")

    def inner(img, txt, x, y, s):
        ei = torch.nn.functional.normalize(functional_call(net.image_encoder, img_names.unflatten(img), (x,)), dim=1)
        et = torch.nn.functional.normalize(functional_call(net.text_head, txt_names.unflatten(txt), (y,)), dim=1)
        return criterion(net.logit_scale * ei @ et.t(), s)

    def outer(image, text, sim_params, lr_img, lr_txt):
        img, txt = start
        for idx in schedule:
            gi, gt = grad(inner, argnums=(0, 1))(img, txt, image[idx], text[idx], syn.similarity.batch(sim_params, idx))
            img, txt = img - lr_img * gi, txt - lr_txt * gt
        return ((img - target[0]).pow(2).sum() / (start[0] - target[0]).pow(2).sum()
                + (txt - target[1]).pow(2).sum() / (start[1] - target[1]).pow(2).sum())

    values = [t.detach() for t in syn.tensors()]
    want = grad(outer, argnums=(0, 1, 2, 3, 4))(values[0], values[1], values[2:-2], values[-2], values[-1])
    want = [want[0], want[1], *want[2], want[3], want[4]]
    for k, (a, b) in enumerate(zip(ours, want)):
        assert _rel(a, b) < 1e-8, (k, _rel(a, b))


def test_pass_two_replays_pass_one_bit_for_bit_with_dropout():
    net, student, syn, start, target, schedule = _setup()
    net.float().train()  # dropout active, float32 as in real runs
    syn32 = SyntheticSet(syn.image.float(), syn.text.float(), make_similarity("full", N), 0.05, 0.08,
                         SynOptim(1.0, 1.0, 1.0, 1.0))
    result = match_constant(student, syn32, (start[0].float(), start[1].float()),
                            (target[0].float(), target[1].float()), schedule)
    assert torch.equal(result.final_img, result.replay_img) and torch.equal(result.final_txt, result.replay_txt)
    # and dropout really was active: another RNG state gives another end point
    torch.manual_seed(123)
    other = match_constant(student, syn32, (start[0].float(), start[1].float()),
                           (target[0].float(), target[1].float()), schedule)
    assert not torch.equal(result.final_txt, other.final_txt)


def test_constant_and_unrolled_agree_for_a_single_step():
    """With one step theta_0 is the only student point: holding it constant is exact."""
    net, student, syn, start, target, _ = _setup()
    net.eval()
    schedule = [torch.arange(BATCH)]
    match_constant(student, syn, start, target, schedule)
    constant = _grads(syn)
    syn.zero_grad()
    match_unrolled(student, syn, start, target, schedule)
    for a, b in zip(constant, _grads(syn)):
        assert _rel(a, b) < 1e-10


def test_minibatch_schedule_reshuffles_when_exhausted():
    sched = minibatch_schedule(10, 4, 5, torch.Generator().manual_seed(0))
    assert [len(s) for s in sched] == [4] * 5
    assert len(set(torch.cat(sched[:2]).tolist())) == 8  # one permutation for the first two
