"""--phase_conditioning: the ConditionedSet batches the joined set, and every matching mode's gradient
on it equals an independent autograd computation over the explicitly joined data (float64)."""
import pytest
import torch

from distill_utils.method.conditioning import ConditionedSet, condition
from distill_utils.method.learnable_set import LearnableSet
from distill_utils.method.matching import MATCHING, minibatch_schedule
from distill_utils.files.subset_file import DistilledSubset
from tests.helpers import distill, distill_args, grads_of, rel_err, run_cli, saved_tensors, tiny_matching

FROZEN = (3, 4)  # sizes of the frozen earlier subsets D_1, D_2; the learnable D_3 has 6 pairs


def _frozen(seed=5):
    g = torch.Generator().manual_seed(seed)
    return [DistilledSubset(torch.randn(n, 3, 4, 4, generator=g).double(), torch.randn(n, 5, generator=g).double(),
                            (torch.eye(n) + 0.2 * torch.rand(n, n, generator=g)).double(), 0.3, 0.4)
            for n in FROZEN]


def _joined(frozen, image, text, sim):
    """The joined set by hand: pairs stacked, S with the subsets' blocks on the diagonal and 0 elsewhere."""
    blocks = [f.similarity for f in frozen] + [sim]
    total = sum(len(b) for b in blocks)
    rows, at = [], 0
    for b in blocks:
        n = len(b)
        rows.append(torch.cat([torch.zeros(n, at, dtype=b.dtype), b, torch.zeros(n, total - at - n, dtype=b.dtype)], 1))
        at += n
    return (torch.cat([f.image for f in frozen] + [image]), torch.cat([f.text for f in frozen] + [text]),
            torch.cat(rows))


@pytest.mark.parametrize("sim_kind", ["full", "lowrank"])
def test_batch_is_the_joined_set_in_index_order(sim_kind):
    *_, syn, _, _, _ = tiny_matching(sim_kind)
    frozen = _frozen()
    view = ConditionedSet(syn, frozen)
    assert len(view) == 13 and view.image is syn.image and view.tensors() == syn.tensors()
    x_all, y_all, s_all = _joined(frozen, syn.image, syn.text, syn.similarity.matrix(syn.sim_params))
    for idx in (torch.tensor([9, 0, 12, 4, 3, 7]), torch.tensor([2, 1]), torch.tensor([8, 10])):
        x, y, s = view.batch(idx)
        assert torch.equal(x, x_all[idx]) and torch.equal(y, y_all[idx])
        assert torch.allclose(s, s_all[idx[:, None], idx], atol=1e-15)
    assert condition(syn, [], "cumulative") is syn and condition(syn, frozen, "none") is syn
    assert isinstance(syn, LearnableSet) and isinstance(view, LearnableSet)  # the interface the matching takes


def _reference(student, frozen, syn, start, target, schedule, exact):
    """Autograd of the matching loss over the joined data; exact=False holds the student's theta_i constant
    (the constant mode's form), exact=True differentiates through every step (unrolled/adjoint)."""
    data = [t.detach().clone().requires_grad_(True) for t in syn.tensors()]
    image, text, *sim_params, lr_img, lr_txt = data
    x_all, y_all, s_all = _joined(frozen, image, text, syn.similarity.matrix(sim_params))
    img, txt = start[0].clone().requires_grad_(True), start[1].clone().requires_grad_(True)
    g_img, g_txt = 0, 0
    for idx in schedule:
        at_img, at_txt = (img, txt) if exact else (img.detach().requires_grad_(True), txt.detach().requires_grad_(True))
        loss = student.loss(at_img, at_txt, x_all[idx], y_all[idx], s_all[idx[:, None], idx])
        gi, gt = torch.autograd.grad(loss, (at_img, at_txt), create_graph=True)
        g_img, g_txt = g_img + gi, g_txt + gt
        step_lr_img, step_lr_txt = (lr_img, lr_txt) if exact else (lr_img.detach(), lr_txt.detach())
        img, txt = img - step_lr_img * gi, txt - step_lr_txt * gt
    if not exact:  # theta_N = theta_0 - lr G, with G differentiable in the data and the lrs entering once
        img, txt = start[0] - lr_img * g_img, start[1] - lr_txt * g_txt
    objective = ((img - target[0]).pow(2).sum() / (start[0] - target[0]).pow(2).sum()
                 + (txt - target[1]).pow(2).sum() / (start[1] - target[1]).pow(2).sum())
    return objective.item(), torch.autograd.grad(objective, data)


@pytest.mark.parametrize("mode", sorted(MATCHING))
@pytest.mark.parametrize("sim_kind", ["full", "lowrank"])
def test_conditioned_gradient_equals_autograd_on_the_joined_set(mode, sim_kind):
    net, student, syn, start, target, _ = tiny_matching(sim_kind, loss_type="InfoNCE")
    net.eval()  # no dropout: the reference draws no random numbers
    frozen = _frozen()
    view = ConditionedSet(syn, frozen)
    schedule = minibatch_schedule(len(view), 5, 4, torch.Generator().manual_seed(3))
    result = MATCHING[mode](student, view, start, target, schedule)
    ours = grads_of(syn)
    loss, want = _reference(student, frozen, syn, start, target, schedule, exact=mode != "constant")
    assert abs(loss - result.loss) < 1e-10
    for k, (a, b) in enumerate(zip(ours, want)):
        assert rel_err(a, b) < 1e-6, (mode, k, rel_err(a, b))
    assert all(not t.requires_grad for f in frozen for t in (f.image, f.text, f.similarity))
    # the frozen pairs matter: without them the same schedule cannot even be indexed, and D_3 alone differs
    syn.zero_grad()
    alone = minibatch_schedule(len(syn), 5, 4, torch.Generator().manual_seed(3))
    MATCHING[mode](student, syn, start, target, alone)
    assert rel_err(grads_of(syn)[0], ours[0]) > 1e-3


def test_conditioning_changes_only_the_later_phases(tiny_args, expert_dir, tmp_path, capsys):
    runs = {}
    for mode in ("none", "cumulative"):
        code, err = run_cli(distill.main, distill_args(tiny_args, expert_dir, tmp_path, mode, "--phase_conditioning", mode,
                                                "--eval_mode", "cumulative"), capsys)
        assert code == 0, err
        runs[mode] = tmp_path / "synthetic" / mode
    first = [torch.equal(a, b) for a, b in zip(saved_tensors(runs["none"], "distilled_0_final.pt"),
                                               saved_tensors(runs["cumulative"], "distilled_0_final.pt"))]
    second = [torch.equal(a, b) for a, b in zip(saved_tensors(runs["none"], "distilled_1_final.pt"),
                                                saved_tensors(runs["cumulative"], "distilled_1_final.pt"))]
    assert all(first) and not all(second)
    saved = torch.load(runs["cumulative"] / "distilled_1_final.pt", weights_only=True)
    assert saved["config"]["phase_conditioning"] == "cumulative" and saved["image"].shape[0] == 8


class _SavedBytes:
    """Bytes of the tensors autograd holds for backward, live and at peak (saved_tensors_hooks)."""

    def __init__(self):
        self.live = self.peak = 0

    def pack(self, t):
        meter = self

        class Box:
            def __init__(self):
                self.t = t
                meter.live += t.numel() * t.element_size()
                meter.peak = max(meter.peak, meter.live)

            def __del__(self):
                meter.live -= self.t.numel() * self.t.element_size()
        return Box()

    @staticmethod
    def unpack(box):
        return box.t


def _peak_saved(mode, steps):
    net, student, syn, start, target, _ = tiny_matching("full", loss_type="InfoNCE")
    net.eval()
    view = ConditionedSet(syn, _frozen())
    schedule = minibatch_schedule(len(view), 5, steps, torch.Generator().manual_seed(3))
    meter = _SavedBytes()
    with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
        MATCHING[mode](student, view, start, target, schedule)
    return meter.peak


def test_conditioned_constant_mode_holds_no_more_for_more_steps():
    few, many = _peak_saved("constant", 3), _peak_saved("constant", 12)
    assert 0 < many <= 1.01 * few  # batches differ in how many frozen pairs they hold: a few bytes
    assert _peak_saved("unrolled", 12) > 2 * _peak_saved("unrolled", 3)  # the meter sees a graph that grows
