"""Trajectory matching (SPEC section 5): train a student on the synthetic set for `steps` SGD steps
from an expert's theta_0 and push its end point towards the expert's theta*.

Matching loss per side: ||theta_N - theta*||^2 / ||theta_0 - theta*||^2, summed over img and txt.

constant (default): memory does not grow with the number of steps (store="graphs" trades that for time).
  With G = sum_i g_i and theta_N = theta_0 - lr G, dL/dg_i = 2 (lr (theta* - theta_0) + lr^2 G) / dist =: c,
  the same for every step. Treating the student parameters theta_i as constants, the gradient for the
  synthetic data is sum_i d(c . g_i)/d(X, Y, S): pass 1 runs the steps without a graph and sums
  G; pass 2 replays exactly the same steps (same minibatches, same RNG so the same dropout
  masks) and back-propagates c . g_i through one step at a time. The lr gradient is
  dL/dlr with G held fixed. Only theta_0, the running theta_i and G are kept. This is the authors'
  gradient, not the gradient of the matching loss: it drops the Hessian terms through which earlier
  steps depend on the data (docs/matching.md measures how far it is).
unrolled: exact back-propagation through the whole unrolled student (memory linear in steps);
  the reference for tests and small ablations.
adjoint: the exact gradient (equal to unrolled to float rounding) by a reverse sweep over the steps.
  With theta_{i+1} = theta_i - lr g_i and lambda_N = dL/dtheta_N = 2 (theta_N - theta*) / dist, for
  i = N-1..0 one double-backward of c_i . g_i at theta_i, c_i = -(lr_img lambda_img, lr_txt lambda_txt)
  (img and txt together: they couple through the loss), gives the data gradient d(c_i . g_i)/d(X, Y, S)
  and lambda_i = lambda_{i+1} + d(c_i . g_i)/dtheta_i = lambda_{i+1} - lr H_i lambda_{i+1};
  dL/dlr = -sum_i g_i . lambda_{i+1} per side (theta_0 and theta* do not depend on lr). Each reverse
  step costs what a pass-2 step of constant mode costs, and only one step's graph is ever alive.
  The forward pass keeps the RNG state before each step (a few KB), so every reverse step sees the
  minibatch and dropout mask of its forward step, and the student points theta_i as flat vectors
  (never a graph); its last step is taken with the graph the first reverse step needs, so adjoint
  computes one gradient fewer than constant. Where the points live (`store`, the same gradient bit
  for bit): "cpu" (default) in host memory, pinned, on CUDA: accelerator memory does not grow with
  the steps, at two copies of |theta| per step (on a CPU run: N |theta| more host memory); "device"
  on the accelerator: no copies, N |theta| more memory; "recompute" keeps every k-th point,
  k = ceil(sqrt(N - 1)), and recomputes the others segment by segment in the reverse sweep: about
  2 sqrt(N) |theta| of memory for about N more plain gradient steps; "graphs" keeps every step's graph from
  the forward sweep (no step is computed twice; memory grows with the steps, as unrolled's).
"""
import itertools
import math
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch

from distill_utils.method.learnable_set import LearnableSet
from distill_utils.method.student import Student
from distill_utils.rng import rng_state, set_rng_state

Params = Tuple[torch.Tensor, torch.Tensor]  # (img_flat, txt_flat)
Schedule = Sequence[torch.Tensor]  # the minibatch indices of each student step


@dataclass
class MatchResult:
    loss: float
    loss_img: float
    loss_txt: float
    final_img: torch.Tensor  # theta_N after pass 1 (constant) or the unrolled loop
    final_txt: torch.Tensor
    replay_img: torch.Tensor = None  # theta_N after pass 2 (constant mode): equal to final_* bit for bit
    replay_txt: torch.Tensor = None


def minibatch_schedule(n: int, batch_size: int, steps: int, generator: torch.Generator) -> List[torch.Tensor]:
    """Index tensors for `steps` minibatches: consecutive chunks of a permutation, reshuffled when exhausted."""
    schedule, perm, pos = [], torch.randperm(n, generator=generator), 0
    for _ in range(steps):
        if pos + batch_size > n:
            perm, pos = torch.randperm(n, generator=generator), 0
        schedule.append(perm[pos:pos + batch_size])
        pos += batch_size
    return schedule


def _sq(v):
    return torch.dot(v, v)


CONSTANT_STORES = ("replay", "graphs")


def match_constant(student: Student, syn: LearnableSet, start: Params, target: Params, schedule: Schedule,
                   store: str = "replay") -> MatchResult:
    """Set .grad of the synthetic set's tensors from one matching step in the memory-constant form.

    start, target: (img_flat, txt_flat) of the expert at T and at T + expert_epochs, on the device.
    store="graphs" keeps every step's graph from pass 1 instead of replaying the steps in pass 2: the same
    graphs (the replay is bit for bit) back-propagated in the same order, so the same gradient bit for bit,
    without recomputing the steps; memory grows with the steps.
    """
    if store not in CONSTANT_STORES:
        raise ValueError(f"store must be one of {CONSTANT_STORES}, got {store!r}")
    device, keep = syn.image.device, store == "graphs"
    lr_img, lr_txt = syn.student_lr_img.item(), syn.student_lr_txt.item()
    rng = rng_state(device)

    # pass 1: the student's steps, no graph kept (store="graphs": each step's own graph, from a detached theta_i)
    img, txt = start[0].clone(), start[1].clone()
    g_sum_img, g_sum_txt = torch.zeros_like(img), torch.zeros_like(txt)
    graphs = []
    for idx in schedule:
        with torch.set_grad_enabled(keep):
            x, y, s = syn.batch(idx)
        img_i, txt_i = img.requires_grad_(True), txt.requires_grad_(True)
        _, g_img, g_txt = student.grads(img_i, txt_i, x, y, s, create_graph=keep)
        if keep:
            graphs.append((g_img, g_txt))
            g_img, g_txt = g_img.detach(), g_txt.detach()
        g_sum_img += g_img
        g_sum_txt += g_txt
        img, txt = (img_i - lr_img * g_img).detach(), (txt_i - lr_txt * g_txt).detach()

    dist_img, dist_txt = _sq(start[0] - target[0]), _sq(start[1] - target[1])
    gap_img, gap_txt = img - target[0], txt - target[1]  # theta_N - theta*
    loss_img, loss_txt = _sq(gap_img) / dist_img, _sq(gap_txt) / dist_txt
    c_img, c_txt = -2 * lr_img * gap_img / dist_img, -2 * lr_txt * gap_txt / dist_txt

    # pass 2: back-propagate c . g_i into X, Y, S step by step, through each step replayed with a graph
    # (store="graphs": through pass 1's graphs, in the same order)
    inputs = [syn.image, syn.text, *syn.sim_params]
    backward = lambda g: torch.autograd.backward(torch.dot(c_img, g[0]) + torch.dot(c_txt, g[1]), inputs=inputs)
    while graphs:
        backward(graphs.pop(0))  # each graph freed as soon as it is used
    r_img, r_txt = img, txt
    if not keep:
        set_rng_state(rng, device)
        r_img, r_txt = start[0].clone(), start[1].clone()
        for idx in schedule:
            graph = _step_graph(student, syn, r_img, r_txt, idx)
            backward(graph[2:])
            r_img, r_txt = _next_point(graph, (lr_img, lr_txt))

    syn.student_lr_img.grad = -2 * torch.dot(g_sum_img, gap_img) / dist_img
    syn.student_lr_txt.grad = -2 * torch.dot(g_sum_txt, gap_txt) / dist_txt
    return MatchResult((loss_img + loss_txt).item(), loss_img.item(), loss_txt.item(), img, txt, r_img, r_txt)


def match_unrolled(student: Student, syn: LearnableSet, start: Params, target: Params, schedule: Schedule
                   ) -> MatchResult:
    """Set .grad of the synthetic set's tensors by back-propagating through all steps (exact)."""
    img, txt = start[0].clone().requires_grad_(True), start[1].clone().requires_grad_(True)
    for idx in schedule:
        x, y, s = syn.batch(idx)
        _, g_img, g_txt = student.grads(img, txt, x, y, s, create_graph=True)
        img, txt = img - syn.student_lr_img * g_img, txt - syn.student_lr_txt * g_txt
    loss_img = _sq(img - target[0]) / _sq(start[0] - target[0])
    loss_txt = _sq(txt - target[1]) / _sq(start[1] - target[1])
    loss = loss_img + loss_txt
    loss.backward(inputs=syn.tensors())
    return MatchResult(loss.item(), loss_img.item(), loss_txt.item(), img.detach(), txt.detach())


STORES = ("cpu", "device", "recompute", "graphs")


class _PointStore:
    """Checkpointed student points theta_i as flat vectors: in (pinned) host memory when store="cpu" on CUDA,
    else on the device. store="recompute" keeps every k-th point, k = ceil(sqrt(points)); the others, every one."""

    def __init__(self, device, store, points):
        if store not in STORES:
            raise ValueError(f"store must be one of {STORES}, got {store!r}")
        self.device, self.offload = device, store == "cpu" and device.type == "cuda"
        self.every = math.ceil(math.sqrt(points)) if store == "recompute" and points else 1

    def put(self, img, txt):
        if not self.offload:
            return img, txt
        return tuple(torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t, non_blocking=True) for t in (img, txt))

    def get(self, point):
        return tuple(t.to(self.device, non_blocking=True) for t in point)


def _plain_step(student, syn, img, txt, idx, lrs):
    """theta_{i+1} from theta_i without a graph beyond the gradient."""
    with torch.no_grad():
        x, y, s = syn.batch(idx)
    img_i, txt_i = img.detach().requires_grad_(True), txt.detach().requires_grad_(True)
    _, g_img, g_txt = student.grads(img_i, txt_i, x, y, s)
    return (img_i - lrs[0] * g_img).detach(), (txt_i - lrs[1] * g_txt).detach()


def matching_loss(student: Student, syn: LearnableSet, start: Params, target: Params, schedule: Schedule) -> float:
    """The matching loss at the student's end point, forward only: the function every mode differentiates."""
    lrs, (img, txt) = (syn.student_lr_img.item(), syn.student_lr_txt.item()), start
    for idx in schedule:
        img, txt = _plain_step(student, syn, img, txt, idx, lrs)
    return (_sq(img - target[0]) / _sq(start[0] - target[0]) + _sq(txt - target[1]) / _sq(start[1] - target[1])).item()


def _step_graph(student, syn, img, txt, idx):
    """g_i at theta_i = (img, txt) with the graph kept for a double-backward."""
    img_i, txt_i = img.detach().requires_grad_(True), txt.detach().requires_grad_(True)
    x, y, s = syn.batch(idx)
    _, g_img, g_txt = student.grads(img_i, txt_i, x, y, s, create_graph=True)
    return img_i, txt_i, g_img, g_txt


def _reverse_step(graph, lam, dlr, lrs, inputs):
    """Back-propagate c_i . g_i into the data `inputs` and theta_i; returns (lambda_i, dL/dlr so far)."""
    img_i, txt_i, g_img, g_txt = graph
    dlr = tuple(d - torch.dot(g.detach(), l) for d, g, l in zip(dlr, (g_img, g_txt), lam))
    vjp = torch.dot(-lrs[0] * lam[0], g_img) + torch.dot(-lrs[1] * lam[1], g_txt)
    torch.autograd.backward(vjp, inputs=inputs + [img_i, txt_i])
    return (lam[0] + img_i.grad, lam[1] + txt_i.grad), dlr


def _next_point(graph, lrs):
    """theta_{i+1} = theta_i - lr g_i from a step's graph (img_i, txt_i, g_img, g_txt), detached."""
    img_i, txt_i, g_img, g_txt = graph
    return (img_i - lrs[0] * g_img).detach(), (txt_i - lrs[1] * g_txt).detach()


def _popped(graphs):
    """The graphs of a list from the last, each dropped from the list as it is handed out."""
    while graphs:
        yield graphs.pop()


def _recomputed(student, syn, schedule, lrs, points, checkpoints, rngs, device):
    """The graphs of steps len(rngs)-1..0, latest first, recomputed segment by segment from the last checkpoint
    (the segment's points recomputed where they were not kept), each under the RNG state of its forward step."""
    last = len(rngs)
    for first in reversed(range(0, last, points.every)):
        segment = [points.get(checkpoints.pop())]
        for i in range(first, min(first + points.every, last) - 1):
            set_rng_state(rngs[i], device)
            segment.append(_plain_step(student, syn, *segment[-1], schedule[i], lrs))
        for i in reversed(range(first, first + len(segment))):
            set_rng_state(rngs[i], device)
            yield _step_graph(student, syn, *segment.pop(), schedule[i])


def match_adjoint(student: Student, syn: LearnableSet, start: Params, target: Params, schedule: Schedule,
                  store: str = "cpu") -> MatchResult:
    """Set .grad of the synthetic set's tensors to the exact gradient by the adjoint sweep (module docstring)."""
    device, keep = syn.image.device, store == "graphs"
    lrs = (syn.student_lr_img.item(), syn.student_lr_txt.item())
    last = len(schedule) - 1  # steps 0..last-1 run twice (store="graphs": once, graph kept), step `last` once
    points, rngs = _PointStore(device, store, last), []

    # forward: steps without a graph, keeping checkpoints of theta_i and the RNG state before each step
    # (store="graphs": each step with its graph, kept)
    img, txt, checkpoints, kept = start[0], start[1], [], []
    for i, idx in enumerate(schedule[:-1]):
        if keep:
            kept.append(_step_graph(student, syn, img, txt, idx))
            img, txt = _next_point(kept[-1], lrs)
            continue
        if i % points.every == 0:
            checkpoints.append(start if i == 0 else points.put(img, txt))
        rngs.append(rng_state(device))
        img, txt = _plain_step(student, syn, img, txt, idx, lrs)
    kept.append(_step_graph(student, syn, img, txt, schedule[-1]))
    rng_end = rng_state(device)
    img, txt = _next_point(kept[-1], lrs)

    dist_img, dist_txt = _sq(start[0] - target[0]), _sq(start[1] - target[1])
    gap_img, gap_txt = img - target[0], txt - target[1]
    loss_img, loss_txt = _sq(gap_img) / dist_img, _sq(gap_txt) / dist_txt
    lam = (2 * gap_img / dist_img, 2 * gap_txt / dist_txt)  # dL/dtheta_N

    # reverse: lambda_i from lambda_{i+1} and the data gradient of step i, one double-backward each, through the
    # kept graphs, then the recomputed ones (none with store="graphs")
    inputs = [syn.image, syn.text, *syn.sim_params]
    dlr = (torch.zeros_like(dist_img), torch.zeros_like(dist_txt))
    for graph in itertools.chain(_popped(kept), _recomputed(student, syn, schedule, lrs, points, checkpoints, rngs,
                                                           device)):
        lam, dlr = _reverse_step(graph, lam, dlr, lrs, inputs)
        del graph  # before the next one is recomputed: one step's graph alive at a time
    set_rng_state(rng_end, device)  # the RNG continues as after constant mode's pass 1

    syn.student_lr_img.grad, syn.student_lr_txt.grad = dlr
    return MatchResult((loss_img + loss_txt).item(), loss_img.item(), loss_txt.item(), img, txt)


MATCHING = {"constant": match_constant, "unrolled": match_unrolled, "adjoint": match_adjoint}
