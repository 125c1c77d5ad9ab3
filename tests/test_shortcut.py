"""distill_utils.method.shortcut against independent per-layer computations and hand-worked numbers."""
import math

import pytest
import torch

from distill_utils.method.shortcut import shortcut_betas, shortcut_trajectory

SHAPES = [(4, 3), (5,), (2, 2, 2), (1,)]


def random_walk(steps=7, seed=0, frozen=(3,)):
    """A trajectory of steps + 1 timestamps whose layers take steps of varying sizes; layers in `frozen` never move."""
    g = torch.Generator().manual_seed(seed)
    stamp = [torch.randn(s, generator=g) for s in SHAPES]
    traj = [stamp]
    for _ in range(steps):
        scale = torch.rand(1, generator=g).item() * 2
        stamp = [p if i in frozen else p + scale * torch.randn(p.shape, generator=g) for i, p in enumerate(stamp)]
        traj.append(stamp)
    return traj


def cumulative_fraction(traj, layer):
    """beta of one layer by a plain loop: distance travelled so far / total distance, in float64."""
    d = [torch.linalg.vector_norm(b[layer].double() - a[layer].double()).item() for a, b in zip(traj, traj[1:])]
    total = sum(d)
    return [sum(d[:t]) / total if total > 0 else 0.0 for t in range(len(traj))]


def test_endpoints_are_the_originals_bit_for_bit():
    traj = random_walk()
    out = shortcut_trajectory(traj, 2, 7)
    assert len(out) == 5
    for got, want in ((out[0], traj[2]), (out[-1], traj[6])):
        for g, w in zip(got, want):
            assert torch.equal(g, w) and g.dtype == w.dtype
            assert g.data_ptr() != w.data_ptr()  # copies, so the caller may modify either


def test_input_is_left_unchanged():
    traj = random_walk()
    before = [[p.clone() for p in stamp] for stamp in traj]
    shortcut_trajectory(traj, 1, 6)
    assert all(torch.equal(a, b) for sa, sb in zip(traj, before) for a, b in zip(sa, sb))


def test_intermediate_points_lie_on_the_segment_at_the_travelled_fraction():
    traj = random_walk(steps=8, seed=1)
    start, end = 1, 8
    window = traj[start:end]
    out = shortcut_trajectory(traj, start, end)
    for layer in range(len(SHAPES) - 1):  # the last layer is frozen: see its own test
        first, last = window[0][layer].double(), window[-1][layer].double()
        chord = last - first
        expected = cumulative_fraction(window, layer)
        for t, stamp in enumerate(out):
            x = stamp[layer].double()
            b = torch.dot((x - first).flatten(), chord.flatten()).item() / chord.pow(2).sum().item()
            assert -1e-7 <= b <= 1 + 1e-7
            torch.testing.assert_close(x, (1 - b) * first + b * last, rtol=0, atol=1e-6)
            assert b == pytest.approx(expected[t], abs=1e-6)


def test_beta_is_monotone_from_zero_to_one():
    traj = random_walk(steps=9, seed=2)
    beta = shortcut_betas(traj, 0, 10)
    assert beta.shape == (len(SHAPES), 10) and beta.dtype == torch.float64
    assert (beta[:, 1:] >= beta[:, :-1]).all()
    assert torch.equal(beta[:3, 0], torch.zeros(3)) and torch.equal(beta[:3, -1], torch.ones(3, dtype=torch.float64))
    for layer in range(3):
        torch.testing.assert_close(beta[layer], torch.tensor(cumulative_fraction(traj, layer), dtype=torch.float64))


def test_beta_by_hand():
    # layer a: steps of length 5, 0, 5 -> beta 0, 1/2, 1/2, 1
    # layer b: 1 -> 2 -> 4 -> 7, steps 1, 2, 3 -> beta 0, 1/6, 1/2, 1; a 1-d monotone path is its own shortcut
    a = [[0.0, 0.0], [3.0, 4.0], [3.0, 4.0], [3.0, 9.0]]
    b = [1.0, 2.0, 4.0, 7.0]
    traj = [[torch.tensor(a[t]), torch.tensor([[b[t]]])] for t in range(4)]
    beta = shortcut_betas(traj)
    want = torch.tensor([[0, 1 / 2, 1 / 2, 1], [0, 1 / 6, 1 / 2, 1]], dtype=torch.float64)
    torch.testing.assert_close(beta, want, rtol=0, atol=1e-15)
    out = shortcut_trajectory(traj)
    assert torch.equal(out[1][0], torch.tensor([1.5, 4.5])) and torch.equal(out[2][0], torch.tensor([1.5, 4.5]))
    assert [s[1].item() for s in out] == b


def test_a_layer_that_never_moves_stays_put():
    traj = random_walk(frozen=(1, 3))
    out = shortcut_trajectory(traj, 0, 8)
    beta = shortcut_betas(traj, 0, 8)
    assert torch.equal(beta[1], torch.zeros(8, dtype=torch.float64)) and not beta.isnan().any()
    for stamp in out:
        assert torch.equal(stamp[1], traj[0][1]) and torch.equal(stamp[3], traj[0][3])
        assert all(torch.isfinite(p).all() for p in stamp)


def test_a_layer_that_returns_to_its_start_stays_put():
    there = [torch.tensor([0.0, 1.0]), torch.tensor([2.0, -1.0]), torch.tensor([0.0, 1.0])]
    out = shortcut_trajectory([[p] for p in there])
    assert all(torch.equal(s[0], there[0]) for s in out)


def test_window_outside_garbage_is_ignored():
    inner = random_walk(steps=4, seed=3)
    garbage = [[torch.full(s, math.nan) for s in SHAPES], [torch.full(s, 1e30) for s in SHAPES]]
    traj = garbage + inner + garbage
    out = shortcut_trajectory(traj, 2, 7)
    alone = shortcut_trajectory(inner)
    assert len(out) == len(alone) == 5
    assert all(torch.equal(a, b) for sa, sb in zip(out, alone) for a, b in zip(sa, sb))
    assert torch.equal(shortcut_betas(traj, 2, 7), shortcut_betas(inner))


def test_dtypes_are_kept():
    traj = [[torch.tensor([0.0, 0.0], dtype=dt) + t for dt in (torch.float16, torch.bfloat16, torch.float64)]
            for t in range(4)]
    out = shortcut_trajectory(traj)
    for stamp in out:
        assert [p.dtype for p in stamp] == [torch.float16, torch.bfloat16, torch.float64]
    assert out[1][2].tolist() == [1.0, 1.0]


def test_single_timestamp_window():
    traj = random_walk(steps=3)
    out = shortcut_trajectory(traj, 2, 3)
    assert len(out) == 1 and all(torch.equal(a, b) for a, b in zip(out[0], traj[2]))
    assert torch.equal(shortcut_betas(traj, 2, 3), torch.zeros(len(SHAPES), 1, dtype=torch.float64))


@pytest.mark.parametrize("start,end", [(3, 3), (4, 2), (-1, 3), (0, 5)])
def test_bad_window(start, end):
    with pytest.raises(ValueError, match="window"):
        shortcut_trajectory(random_walk(steps=3), start, end)
