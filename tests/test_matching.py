"""The distillation gradient against independent computations (float64, tiny networks)."""
import pytest
import torch
from torch.func import functional_call, grad

from distill_utils import speed

from distill_utils.method.losses import contrastive_loss
from distill_utils.method.matching import CONSTANT_STORES, STORES, match_adjoint, match_constant, match_unrolled, minibatch_schedule
from distill_utils.method.similarity import make_similarity
from distill_utils.method.learnable_set import SynOptim, SyntheticSet
from tests.helpers import MATCH_BATCH, MATCH_PAIRS, grads_of, rel_err, seeded_grads, tiny_matching

@pytest.mark.parametrize("sim_kind, trainable, loss_type", [("full", True, "WBCE"), ("lowrank", True, "InfoNCE"),
                                                            ("full", False, "CWCL")])
def test_constant_gradient_equals_autograd_with_student_params_held_constant(sim_kind, trainable, loss_type):
    net, student, syn, start, target, schedule = tiny_matching(sim_kind, trainable, loss_type)
    net.eval()  # no dropout: the reference below draws no random numbers
    result = match_constant(student, syn, start, target, schedule)
    ours = grads_of(syn)

    # independent: rebuild theta_i from pass 1 as constants, then autograd of the same objective
    lr_img, lr_txt = (t.detach().clone().requires_grad_(True) for t in (syn.student_lr_img, syn.student_lr_txt))
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
        assert rel_err(a, b) < 1e-5, (k, rel_err(a, b))


def _func_reference(net, syn, start, target, schedule, loss_type="WBCE", mix=lambda z: z):
    """The exact gradient by torch.func, differentiating through every inner gradient step; `mix` is applied to the
    inputs of the trained modules (representation blending)."""
    img_names, txt_names = net.img_layout, net.txt_layout
    criterion = contrastive_loss(loss_type)

    def embed_images(img, x):
        if net.image_trainable:
            return functional_call(net.image_encoder, img_names.unflatten(img), (mix(x),))
        return functional_call(net.image_head, img_names.unflatten(img), (mix(net.image_encoder(x)),))

    def inner(img, txt, x, y, s):
        ei = torch.nn.functional.normalize(embed_images(img, x), dim=1)
        et = torch.nn.functional.normalize(functional_call(net.text_head, txt_names.unflatten(txt), (mix(y),)), dim=1)
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
    return [want[0], want[1], *want[2], want[3], want[4]]


@pytest.mark.parametrize("sim_kind", ["full", "lowrank"])
def test_unrolled_gradient_equals_full_autograd(sim_kind):
    net, student, syn, start, target, schedule = tiny_matching(sim_kind)
    net.eval()
    match_unrolled(student, syn, start, target, schedule)
    ours = grads_of(syn)
    want = _func_reference(net, syn, start, target, schedule)
    for k, (a, b) in enumerate(zip(ours, want)):
        assert rel_err(a, b) < 1e-8, (k, rel_err(a, b))


def test_pass_two_replays_pass_one_bit_for_bit_with_dropout():
    net, student, syn, start, target, schedule = tiny_matching()
    net.float().train()  # dropout active, float32 as in real runs
    syn32 = SyntheticSet(syn.image.float(), syn.text.float(), make_similarity("full", MATCH_PAIRS), 0.05, 0.08,
                         SynOptim(1.0, 1.0, 1.0, 1.0))
    result = match_constant(student, syn32, (start[0].float(), start[1].float()),
                            (target[0].float(), target[1].float()), schedule)
    assert torch.equal(result.final_img, result.replay_img) and torch.equal(result.final_txt, result.replay_txt)
    # and dropout really was active: another RNG state gives another end point
    torch.manual_seed(123)
    other = match_constant(student, syn32, (start[0].float(), start[1].float()),
                           (target[0].float(), target[1].float()), schedule)
    assert not torch.equal(result.final_txt, other.final_txt)


def test_all_modes_agree_for_a_single_step():
    """With one step theta_0 is the only student point: holding it constant is exact."""
    net, student, syn, start, target, _ = tiny_matching()
    net.eval()
    schedule = [torch.arange(MATCH_BATCH)]
    grads = []
    for match in (match_constant, match_unrolled, match_adjoint):
        syn.zero_grad()
        match(student, syn, start, target, schedule)
        grads.append(grads_of(syn))
    for other in grads[1:]:
        for a, b in zip(grads[0], other):
            assert rel_err(a, b) < 1e-10


@pytest.mark.parametrize("sim_kind, trainable, loss_type", [("full", True, "WBCE"), ("lowrank", True, "InfoNCE"),
                                                            ("full", False, "CWCL")])
def test_adjoint_equals_unrolled_and_torch_func(sim_kind, trainable, loss_type):
    net, student, syn, start, target, schedule = tiny_matching(sim_kind, trainable, loss_type)
    net.eval()
    result = match_adjoint(student, syn, start, target, schedule)
    ours = grads_of(syn)
    syn.zero_grad()
    reference = match_unrolled(student, syn, start, target, schedule)
    assert abs(result.loss - reference.loss) < 1e-12
    for want in (grads_of(syn), _func_reference(net, syn, start, target, schedule, loss_type)):
        for k, (a, b) in enumerate(zip(ours, want)):
            assert rel_err(a, b) < 1e-8, (k, rel_err(a, b))


def test_adjoint_equals_unrolled_with_dropout():
    net, student, syn, start, target, schedule = tiny_matching()
    net.train()
    grads = seeded_grads((match_adjoint, match_unrolled), student, syn, start, target, schedule)
    for k, (a, b) in enumerate(zip(*grads)):
        assert rel_err(a, b) < 1e-8, (k, rel_err(a, b))


@pytest.mark.parametrize("store", [s for s in STORES if s != "graphs"])  # graphs recomputes nothing
def test_adjoint_replays_each_step_bit_for_bit_with_dropout(monkeypatch, store):
    """Every reverse (and recomputed) step sees the forward's theta_i, minibatch and dropout mask: same g_i."""
    net, student, syn, start, target, _ = tiny_matching()
    net.float().train()  # float32 as in real runs
    schedule = minibatch_schedule(MATCH_PAIRS, MATCH_BATCH, 6, torch.Generator().manual_seed(0))
    syn32 = SyntheticSet(syn.image.float(), syn.text.float(), make_similarity("full", MATCH_PAIRS), 0.05, 0.08,
                         SynOptim(1.0, 1.0, 1.0, 1.0))
    calls, grads = [], student.grads

    def recording(img, txt, x, y, s, create_graph=False):
        out = grads(img, txt, x, y, s, create_graph=create_graph)
        calls.append((create_graph, [t.detach().clone() for t in (img, txt, x, y, s, out[1], out[2])]))
        return out

    monkeypatch.setattr(student, "grads", recording)
    match = lambda: match_adjoint(student, syn32, (start[0].float(), start[1].float()),
                                  (target[0].float(), target[1].float()), schedule, store=store)
    torch.manual_seed(3)
    match()
    forward, later = [c for _, c in calls[:len(schedule)]], calls[len(schedule):]
    assert [graph for graph, _ in calls[:len(schedule)]] == [False] * (len(schedule) - 1) + [True]
    reverse = [c for graph, c in later if graph]
    assert len(reverse) == len(schedule) - 1
    for f, r in zip(forward[-2::-1], reverse):
        assert all(torch.equal(a, b) for a, b in zip(f, r))
    for _, c in later:  # recomputed points too
        assert any(all(torch.equal(a, b) for a, b in zip(f, c)) for f in forward)
    # dropout really was active: another RNG state gives other text gradients at the same theta_0
    calls.clear()
    torch.manual_seed(4)
    match()
    assert not torch.equal(calls[0][1][6], forward[0][6])


@pytest.mark.parametrize("steps", [2, 3, 5, 10])
def test_adjoint_stores_give_identical_gradients(steps):
    net, student, syn, start, target, _ = tiny_matching()
    net.train()
    schedule = minibatch_schedule(MATCH_PAIRS, MATCH_BATCH, steps, torch.Generator().manual_seed(0))
    grads, rngs = [], []
    for store in STORES:
        syn.zero_grad()
        torch.manual_seed(5)
        match_adjoint(student, syn, start, target, schedule, store=store)
        grads.append(grads_of(syn))
        rngs.append(torch.get_rng_state())
    for other, rng in zip(grads[1:], rngs[1:]):
        assert all(torch.equal(a, b) for a, b in zip(grads[0], other))
        assert torch.equal(rngs[0], rng)


@pytest.mark.parametrize("steps", [1, 3, 6])
def test_constant_stores_give_identical_gradients_rng_and_end_points_with_dropout(steps):
    net, student, syn, start, target, _ = tiny_matching()
    net.float().train()  # dropout active, float32 as in real runs
    syn32 = SyntheticSet(syn.image.float(), syn.text.float(), make_similarity("full", MATCH_PAIRS), 0.05, 0.08,
                         SynOptim(1.0, 1.0, 1.0, 1.0))
    schedule = minibatch_schedule(MATCH_PAIRS, MATCH_BATCH, steps, torch.Generator().manual_seed(0))
    runs = []
    for store in CONSTANT_STORES:
        syn32.zero_grad()
        torch.manual_seed(7)
        result = match_constant(student, syn32, tuple(t.float() for t in start), tuple(t.float() for t in target),
                                schedule, store=store)
        runs.append((grads_of(syn32), torch.get_rng_state(), result))
    (grads, rng, result), (kept_grads, kept_rng, kept) = runs
    assert all(torch.equal(a, b) for a, b in zip(grads, kept_grads))
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    assert torch.equal(rng, kept_rng)
    assert torch.equal(result.final_img, kept.final_img) and torch.equal(result.replay_txt, kept.replay_txt)
    assert result.loss == kept.loss


def test_adjoint_leaves_the_rng_where_constant_does():
    net, student, syn, start, target, schedule = tiny_matching()
    net.train()
    states = []
    for match in (match_constant, match_adjoint):
        torch.manual_seed(11)
        match(student, syn, start, target, schedule)
        states.append(torch.get_rng_state())
    assert torch.equal(*states)


def _true_loss(student, syn, start, target, schedule):
    """The matching loss after the student's steps, evaluated directly (no gradient for the data)."""
    img, txt = start
    for idx in schedule:
        x, y, s = (t.detach() for t in syn.batch(idx))
        _, gi, gt = student.grads(img.detach().requires_grad_(True), txt.detach().requires_grad_(True), x, y, s)
        img, txt = img - syn.student_lr_img.detach() * gi, txt - syn.student_lr_txt.detach() * gt
    return ((img - target[0]).pow(2).sum() / (start[0] - target[0]).pow(2).sum()
            + (txt - target[1]).pow(2).sum() / (start[1] - target[1]).pow(2).sum()).item()


def _directional_fd(student, syn, start, target, schedule, tensor, v, h=1e-5):
    """Central difference of the matching loss along v in `tensor` (left unchanged)."""
    values = []
    for step in (h, -2 * h):
        with torch.no_grad():
            tensor.add_(step * v)
        values.append(_true_loss(student, syn, start, target, schedule))
    with torch.no_grad():
        tensor.add_(h * v)
    return (values[0] - values[1]) / (2 * h)


@pytest.mark.parametrize("sim_kind", ["full", "lowrank"])
def test_adjoint_matches_finite_differences_of_the_matching_loss(sim_kind):
    net, student, syn, start, target, schedule = tiny_matching(sim_kind)
    net.eval()
    with torch.no_grad():
        syn.student_lr_img.fill_(0.5)
        syn.student_lr_txt.fill_(0.5)  # large steps: the dependence of theta_i on the data matters
    match_adjoint(student, syn, start, target, schedule)
    adjoint = grads_of(syn)
    syn.zero_grad()
    match_constant(student, syn, start, target, schedule)
    constant = grads_of(syn)
    g = torch.Generator().manual_seed(1)
    worst_constant = 0.0
    for tensor, a, c in zip(syn.tensors(), adjoint, constant):
        v = torch.randn(tensor.shape, generator=g, dtype=tensor.dtype)
        fd = _directional_fd(student, syn, start, target, schedule, tensor, v)
        assert abs((a * v).sum().item() - fd) <= 1e-6 * abs(fd) + 1e-10, (tensor.shape, (a * v).sum().item(), fd)
        worst_constant = max(worst_constant, abs((c * v).sum().item() - fd) / abs(fd))
    assert worst_constant > 1e-3  # the check can tell the approximate gradient from the exact one


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_adjoint_host_store_equals_device_store_on_cuda():
    speed.deterministic("cuda")  # the scatter-add backward of x[idx] is otherwise free to sum in any order
    net, student, syn, start, target, schedule = tiny_matching()
    net.cuda().eval()
    syn = SyntheticSet(syn.image.cuda(), syn.text.cuda(), make_similarity("full", MATCH_PAIRS, device="cuda"), 0.05, 0.08,
                       SynOptim(1.0, 1.0, 1.0, 1.0))
    start, target = tuple(t.cuda() for t in start), tuple(t.cuda() for t in target)
    grads = []
    for store in ("cpu", "device"):
        syn.zero_grad()
        match_adjoint(student, syn, start, target, schedule, store=store)
        grads.append(grads_of(syn))
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_minibatch_schedule_reshuffles_when_exhausted():
    """10 pairs in batches of 4: two batches per pass (the 2 left over wait for no one), then a new permutation
    drawn from the same generator; 12 pairs: three full batches per pass."""
    for n, passes in ((10, [[0, 4], [0, 4], [0]]), (12, [[0, 4, 8], [0, 4]])):
        sched = minibatch_schedule(n, 4, sum(map(len, passes)), torch.Generator().manual_seed(0))
        g = torch.Generator().manual_seed(0)
        perms = [torch.randperm(n, generator=g) for _ in passes]
        want = [perm[start:start + 4] for perm, starts in zip(perms, passes) for start in starts]
        assert len(sched) == len(want) and all(torch.equal(a, b) for a, b in zip(sched, want))
        first = 0
        for starts in passes:  # within a pass no pair repeats
            seen = torch.cat(sched[first:first + len(starts)]).tolist()
            assert len(set(seen)) == len(seen)
            first += len(starts)
        assert not torch.equal(perms[0], perms[1])  # the next pass is a new order
