"""Shortcut trajectories (SPEC section 4): each layer moves along the straight segment between its endpoints.

Over a window [start, end) of a trajectory (a list of timestamps, each a list of parameter tensors),
K = end - start - 1 steps. For layer l, with d_l(p) = ||theta_l(p+1) - theta_l(p)||_2,

    beta_l(t)     = sum_{p<t} d_l(p) / sum_p d_l(p)      (0 where the layer never moved)
    shortcut_l(t) = (1 - beta_l(t)) theta_l(0) + beta_l(t) theta_l(K)

so the endpoints are kept and each layer advances in proportion to the distance it really travelled.
"""
from typing import List, Optional, Sequence

import torch


def _window(traj, start, end):
    end = len(traj) if end is None else end
    if not 0 <= start < end <= len(traj):
        raise ValueError(f"window [{start}, {end}) is outside a trajectory of {len(traj)} timestamps")
    return traj[start:end]


def _f64(stamp):
    return [p.detach().to(torch.float64) for p in stamp]


def shortcut_betas(traj: Sequence[Sequence[torch.Tensor]], start: int = 0, end: Optional[int] = None
                   ) -> List[torch.Tensor]:
    """beta as a float64 tensor of shape (layers, K + 1); column t is timestamp start + t."""
    window = _window(traj, start, end)
    prev, steps = _f64(window[0]), []
    for stamp in window[1:]:
        cur = _f64(stamp)
        steps.append(torch.stack(torch._foreach_norm(torch._foreach_sub(cur, prev))))
        prev = cur
    beta = torch.zeros(len(window[0]), len(window), dtype=torch.float64)
    if steps:
        travelled = torch.stack(steps, dim=1).cumsum(dim=1)  # (L, K): distance covered after step p
        total = travelled[:, -1:]  # the last cumsum, not a separate sum, so that beta(K) is exactly 1
        beta[:, 1:] = torch.where(total > 0, travelled / total.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    return beta


def shortcut_trajectory(traj: Sequence[Sequence[torch.Tensor]], start: int = 0, end: Optional[int] = None
                        ) -> List[List[torch.Tensor]]:
    """The shortcut of traj over [start, end): end - start timestamps, each a list of new tensors in the input dtypes.

    The first and last timestamps are copies of traj[start] and traj[end - 1]; the others are computed in float64.
    """
    window = _window(traj, start, end)
    beta = shortcut_betas(window)
    first, last = _f64(window[0]), _f64(window[-1])
    out = [[p.detach().clone() for p in window[0]]]
    for t in range(1, len(window) - 1):
        b = beta[:, t].tolist()
        mixed = torch._foreach_add(torch._foreach_mul(first, [1.0 - x for x in b]), torch._foreach_mul(last, b))
        out.append([m.to(p.dtype) for m, p in zip(mixed, window[0])])
    if len(window) > 1:
        out.append([p.detach().clone() for p in window[-1]])
    return out
