"""Trajectory matching (SPEC section 5): train a student on the synthetic set for `steps` SGD steps
from an expert's theta_0 and push its end point towards the expert's theta*.

Matching loss per side: ||theta_N - theta*||^2 / ||theta_0 - theta*||^2, summed over img and txt.

constant (default): memory does not grow with the number of steps. With G = sum_i g_i and
  theta_N = theta_0 - lr G, dL/dg_i = 2 (lr (theta* - theta_0) + lr^2 G) / dist =: c, the same for
  every step. Treating the student parameters theta_i as constants, the gradient for the
  synthetic data is sum_i d(c . g_i)/d(X, Y, S): pass 1 runs the steps without a graph and sums
  G; pass 2 replays exactly the same steps (same minibatches, same RNG so the same dropout
  masks) and back-propagates c . g_i through one step at a time. The lr gradient is
  dL/dlr with G held fixed. Only theta_0, the running theta_i and G are kept.
unrolled: exact back-propagation through the whole unrolled student (memory linear in steps);
  the reference for tests and small ablations.
"""
from dataclasses import dataclass

import torch


@dataclass
class MatchResult:
    loss: float
    loss_img: float
    loss_txt: float
    final_img: torch.Tensor  # theta_N after pass 1 (constant) or the unrolled loop
    final_txt: torch.Tensor
    replay_img: torch.Tensor = None  # theta_N after pass 2 (constant mode): equal to final_* bit for bit
    replay_txt: torch.Tensor = None


def minibatch_schedule(n, batch_size, steps, generator):
    """Index tensors for `steps` minibatches: consecutive chunks of a permutation, reshuffled when exhausted."""
    schedule, perm, pos = [], torch.randperm(n, generator=generator), 0
    for _ in range(steps):
        if pos + batch_size > n:
            perm, pos = torch.randperm(n, generator=generator), 0
        schedule.append(perm[pos:pos + batch_size])
        pos += batch_size
    return schedule


def _rng_state(device):
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def _set_rng_state(state, device):
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _sq(v):
    return torch.dot(v, v)


def match_constant(student, syn, start, target, schedule):
    """Set .grad of the synthetic set's tensors from one matching step in the memory-constant form.

    start, target: (img_flat, txt_flat) of the expert at T and at T + expert_epochs, on the device.
    """
    device = syn.image.device
    lr_img, lr_txt = syn.lr_img.item(), syn.lr_txt.item()
    rng = _rng_state(device)

    # pass 1: the student's steps, no graph kept
    img, txt = start[0].clone(), start[1].clone()
    g_sum_img, g_sum_txt = torch.zeros_like(img), torch.zeros_like(txt)
    for idx in schedule:
        with torch.no_grad():
            x, y, s = syn.batch(idx)
        img_i, txt_i = img.requires_grad_(True), txt.requires_grad_(True)
        _, g_img, g_txt = student.grads(img_i, txt_i, x, y, s)
        g_sum_img += g_img
        g_sum_txt += g_txt
        img, txt = (img_i - lr_img * g_img).detach(), (txt_i - lr_txt * g_txt).detach()

    dist_img, dist_txt = _sq(start[0] - target[0]), _sq(start[1] - target[1])
    gap_img, gap_txt = img - target[0], txt - target[1]  # theta_N - theta*
    loss_img, loss_txt = _sq(gap_img) / dist_img, _sq(gap_txt) / dist_txt
    c_img, c_txt = -2 * lr_img * gap_img / dist_img, -2 * lr_txt * gap_txt / dist_txt

    # pass 2: replay each step with a graph through it and back-propagate c . g_i into X, Y, S
    _set_rng_state(rng, device)
    inputs = [syn.image, syn.text, *syn.sim_params]
    r_img, r_txt = start[0].clone(), start[1].clone()
    for idx in schedule:
        x, y, s = syn.batch(idx)
        img_i, txt_i = r_img.requires_grad_(True), r_txt.requires_grad_(True)
        _, g_img, g_txt = student.grads(img_i, txt_i, x, y, s, create_graph=True)
        torch.autograd.backward(torch.dot(c_img, g_img) + torch.dot(c_txt, g_txt), inputs=inputs)
        r_img, r_txt = (img_i - lr_img * g_img).detach(), (txt_i - lr_txt * g_txt).detach()

    syn.lr_img.grad = -2 * torch.dot(g_sum_img, gap_img) / dist_img
    syn.lr_txt.grad = -2 * torch.dot(g_sum_txt, gap_txt) / dist_txt
    return MatchResult((loss_img + loss_txt).item(), loss_img.item(), loss_txt.item(), img, txt, r_img, r_txt)


def match_unrolled(student, syn, start, target, schedule):
    """Set .grad of the synthetic set's tensors by back-propagating through all steps (exact)."""
    img, txt = start[0].clone().requires_grad_(True), start[1].clone().requires_grad_(True)
    for idx in schedule:
        x, y, s = syn.batch(idx)
        _, g_img, g_txt = student.grads(img, txt, x, y, s, create_graph=True)
        img, txt = img - syn.lr_img * g_img, txt - syn.lr_txt * g_txt
    loss_img = _sq(img - target[0]) / _sq(start[0] - target[0])
    loss_txt = _sq(txt - target[1]) / _sq(start[1] - target[1])
    loss = loss_img + loss_txt
    loss.backward(inputs=syn.tensors())
    return MatchResult(loss.item(), loss_img.item(), loss_txt.item(), img.detach(), txt.detach())


MATCHING = {"constant": match_constant, "unrolled": match_unrolled}
