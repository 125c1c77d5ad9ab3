"""SyntheticSet (the learnable subset): its start from real pairs, minibatches, SGD step with per-tensor lrs,
momentum, lr clamp and EMA, the subset it saves and its checkpoint round trip."""
import io

import pytest
import torch

from distill_utils.method.learnable_set import SynOptim, SyntheticSet

OPT = SynOptim(lr_img=0.5, lr_txt=0.25, lr_sim=2.0, lr_lr=0.1, momentum=0.5, ema_decay=0.9, clamp_lr=0.01)


class Pixels:
    def __init__(self, images):
        self.images = images

    def get(self, idx):
        return self.images[idx]


class Train:
    """What from_real reads of a TrainData: len, images.get(idx), text_features."""

    def __init__(self, n=10, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.images = Pixels(torch.randn(n, 3, 4, 4, generator=g))
        self.text_features = torch.randn(n, 5, generator=g)

    def __len__(self):
        return len(self.text_features)


def from_real(kind="lowrank", n=4, seed=7, opt=OPT):
    return SyntheticSet.from_real(Train(), n, kind, 2, 1.0, 0.05, 0.03, opt, torch.Generator().manual_seed(seed), "cpu")


@pytest.mark.parametrize("kind", ["full", "lowrank"])
def test_starts_from_random_real_pairs_and_the_identity(kind):
    syn, train, g = from_real(kind), Train(), torch.Generator().manual_seed(7)
    idx = torch.randperm(10, generator=g)[:4]
    assert torch.equal(syn.image, train.images.images[idx]) and torch.equal(syn.text, train.text_features[idx])
    assert torch.equal(syn.similarity.matrix(syn.sim_params), torch.eye(4))
    if kind == "lowrank":  # a = 1, L ~ N(0, 1) from the same generator after the pair draw, R = 0
        a, left, right = syn.sim_params
        assert torch.equal(a, torch.ones(4)) and torch.equal(left, torch.randn(4, 2, generator=g))
        assert torch.equal(right, torch.zeros(4, 2))
    assert (syn.student_lr_img.item(), syn.student_lr_txt.item()) == pytest.approx((0.05, 0.03)) and len(syn) == 4


def test_batch_is_the_minibatch_rows_and_similarity_block_and_differentiable():
    syn = from_real("full")
    with torch.no_grad():
        syn.sim_params[0].copy_(torch.arange(16.0).reshape(4, 4))
    idx = torch.tensor([2, 0])
    x, y, s = syn.batch(idx)
    assert torch.equal(x, syn.image[idx]) and torch.equal(y, syn.text[idx])
    assert s.tolist() == [[10.0, 8.0], [2.0, 0.0]]
    (x.sum() + y.sum() + s.sum()).backward()
    assert syn.image.grad[[0, 2]].eq(1).all() and syn.image.grad[[1, 3]].eq(0).all()
    assert syn.sim_params[0].grad.tolist() == [[1, 0, 1, 0], [0, 0, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]


def grads_like(syn, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(t.shape, generator=g) for t in syn.tensors()]


def set_grads(syn, grads):
    for t, gr in zip(syn.tensors(), grads):
        t.grad = gr.clone()


def test_two_steps_are_sgd_with_momentum_per_tensor_lrs_then_the_ema():
    syn = from_real()
    start = [t.detach().clone() for t in syn.tensors()]
    lrs = [OPT.lr_img, OPT.lr_txt, OPT.lr_sim, OPT.lr_sim, OPT.lr_sim, OPT.lr_lr, OPT.lr_lr]  # tensors() order
    g1, g2 = grads_like(syn, 1), grads_like(syn, 2)
    g1[-2], g1[-1], g2[-2], g2[-1] = torch.tensor(-0.1), torch.tensor(0.2), torch.tensor(0.0), torch.tensor(0.0)
    set_grads(syn, g1)
    syn.step()
    assert all(t.grad is None for t in syn.tensors())
    set_grads(syn, g2)
    syn.step()
    shadow = [s.clone() for s in start]
    for i, (p0, lr) in enumerate(zip(start, lrs)):
        p1 = p0 - lr * g1[i]                                  # momentum buffer = g1
        if i == len(lrs) - 1:
            p1 = p1.clamp(min=OPT.clamp_lr)                    # lr_txt: 0.03 - 0.1 * 0.2, at the bound
        shadow[i] = OPT.ema_decay * shadow[i] + (1 - OPT.ema_decay) * p1
        p2 = p1 - lr * (OPT.momentum * g1[i] + g2[i])        # buffer = momentum * g1 + g2
        if i >= len(lrs) - 2:
            p2 = p2.clamp(min=OPT.clamp_lr)
        shadow[i] = OPT.ema_decay * shadow[i] + (1 - OPT.ema_decay) * p2
        assert torch.allclose(syn.tensors()[i].detach(), p2, atol=1e-6), i
        assert torch.allclose(syn.ema.shadow[i], shadow[i], atol=1e-6), i
    assert syn.student_lr_txt.item() == pytest.approx(OPT.clamp_lr)  # 0.01 - 0.1 * (0.5 * 0.2) < 0.01: clamped


def test_subset_holds_the_ema_or_the_raw_tensors_and_the_matrix_of_its_parameters():
    syn = from_real()
    set_grads(syn, grads_like(syn, 3))
    syn.step()
    for ema, values in ((True, syn.ema.shadow), (False, syn.tensors())):
        sub = syn.subset({"phase": 0}, ema=ema)
        image, text, a, left, right, lr_img, lr_txt = (v.detach() for v in values)
        assert torch.equal(sub.image, image) and torch.equal(sub.text, text) and sub.config == {"phase": 0}
        assert torch.allclose(sub.similarity, torch.diag(a) + left @ right.t() / 2)
        assert (sub.student_lr_img, sub.student_lr_txt) == (lr_img.item(), lr_txt.item())
    assert not torch.equal(syn.subset({}, ema=True).image, syn.subset({}, ema=False).image)


def test_state_dict_round_trip_continues_bit_for_bit():
    syn = from_real()
    for seed in (4, 5):
        set_grads(syn, grads_like(syn, seed))
        syn.step()
    saved = io.BytesIO()  # through torch.save and a weights-only load, as a checkpoint goes
    torch.save(syn.state_dict(), saved)
    saved.seek(0)
    resumed = from_real(seed=11)  # another start: everything must come from the state
    resumed.load_state_dict(torch.load(saved, weights_only=True))
    for s in (syn, resumed):
        set_grads(s, grads_like(s, 6))
        s.step()
    assert all(torch.equal(a, b) for a, b in zip(syn.tensors(), resumed.tensors()))
    assert all(torch.equal(a, b) for a, b in zip(syn.ema.shadow, resumed.ema.shadow))
