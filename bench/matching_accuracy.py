"""How close is each matching mode's gradient to the gradient of the matching loss it reports?

    python -m bench.matching_accuracy                     # float64 ConvNet, 16 pairs, 4 steps, batch 8

For each student lr, the gradients of constant, adjoint and unrolled mode against central finite
differences of the matching loss (float64, no dropout). X, Y and S are too large for a difference
per coordinate, so each is compared in a random projection: the directional derivatives along
--directions Gaussian directions v_k, relative error ||(g . v_k - fd_k)_k|| / ||(fd_k)_k||, an
estimate of ||g - grad L|| / ||grad L||; the two lrs are compared directly. Also printed: the
relative distance between the modes' full gradient vectors.

The step h is chosen per tensor, without looking at any mode: the differences are taken at every
--h and the one used is where they are most stable (the smallest relative change to the next smaller
h). No single h serves: the student's gradient contains the ConvNet's ReLU derivative, a step
function, so the matching loss jumps where a unit flips and a large h crosses such jumps, while a
small h drowns a small derivative in rounding (float64).
"""
import argparse

import torch

from distill_utils.method.matching import MATCHING, matching_loss, minibatch_schedule
from distill_utils.method.similarity import make_similarity
from distill_utils.method.student import Student
from distill_utils.method.learnable_set import SynOptim, SyntheticSet
from networks.dual_encoder import NetConfig, NetworkFactory

NAMES = ["X", "Y", "S", "lr_img", "lr_txt"]


def setup(a, lr):
    config = NetConfig(a.image_encoder, a.image_size, a.text_dim, True, image_pretrained=False)
    net = NetworkFactory(config).build(0).double().eval()
    g = torch.Generator().manual_seed(0)
    n, side = a.num_queries, a.image_size
    sim = make_similarity("full", n)
    sim.params = [sim.params[0].double() + 0.1 * torch.rand(n, n, generator=g).double()]
    syn = SyntheticSet(torch.randn(n, 3, side, side, generator=g).double(),
                       torch.randn(n, a.text_dim, generator=g).double(), sim, lr, lr, SynOptim(1, 1, 1, 1))
    start = tuple(p.double() for p in net.initial_params())
    target = tuple(p + 0.01 * torch.randn(p.shape, generator=g).double() for p in start)
    return Student(net, "WBCE"), syn, start, target, minibatch_schedule(n, a.mini_batch_size, a.syn_steps, g)


def directional_fd(loss, tensor, v, h):
    values = []
    for step in (h, -2 * h):
        with torch.no_grad():
            tensor.add_(step * v)
        values.append(loss())
    with torch.no_grad():
        tensor.add_(h * v)
    return (values[0] - values[1]) / (2 * h)


def stable_fd(loss, tensor, vs, steps):
    """Directional differences along vs at the step of `steps` where they change least to the next one."""
    fds = [torch.tensor([directional_fd(loss, tensor, v, h) for v in vs]) for h in steps]
    changes = [rel(fds[k], fds[k + 1]) for k in range(len(steps) - 1)]
    best = min(range(len(changes)), key=changes.__getitem__)
    print(f"  {tuple(tensor.shape)}: h {steps[best]:g} (relative change to h {steps[best + 1]:g}: {changes[best]:.1e})",
          flush=True)
    return fds[best]


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lrs", type=float, nargs="+", default=[0.001, 0.1], help="student lrs (default: 0.001 0.1)")
    p.add_argument("--image_encoder", default="convnet", help="image encoder of the student (default: convnet)")
    p.add_argument("--image_size", type=int, default=32, help="image side (default: 32)")
    p.add_argument("--text_dim", type=int, default=384, help="text feature size (default: 384)")
    p.add_argument("--num_queries", type=int, default=16, help="synthetic pairs (default: 16)")
    p.add_argument("--mini_batch_size", type=int, default=8, help="pairs per student step (default: 8)")
    p.add_argument("--syn_steps", type=int, default=4, help="student steps (default: 4)")
    p.add_argument("--directions", type=int, default=16, help="random directions per tensor (default: 16)")
    p.add_argument("--h", type=float, nargs="+", default=[1e-5, 1e-6, 1e-7, 1e-8, 1e-9],
                   help="candidate finite-difference steps, largest first (default: 1e-5 ... 1e-9)")
    a = p.parse_args()
    if len(a.h) < 2:
        p.error("--h: expected at least two steps")
    torch.set_num_threads(1)
    table = [f"| student lr | mode | {' | '.join(f'{n} vs FD' for n in NAMES)} | vs unrolled (X, Y, S) |",
             "|---|---|" + "---|" * (len(NAMES) + 1)]
    for lr in a.lrs:
        print(f"student lr {lr:g}: finite-difference steps")
        student, syn, start, target, schedule = setup(a, lr)
        grads = {}
        for mode in MATCHING:
            syn.zero_grad()
            MATCHING[mode](student, syn, start, target, schedule)
            grads[mode] = [t.grad.clone() for t in syn.tensors()]
        loss = lambda: matching_loss(student, syn, start, target, schedule)
        g = torch.Generator().manual_seed(1)
        fd, dirs = [], []
        for tensor in syn.tensors():
            vs = [torch.randn(tensor.shape, generator=g, dtype=tensor.dtype) for _ in
                  range(a.directions if tensor.dim() else 1)]
            dirs.append(vs)
            fd.append(stable_fd(loss, tensor, vs, a.h))
        for mode, gs in grads.items():
            errors = [rel(torch.stack([(gi * v).sum() for v in vs]), f) for gi, vs, f in zip(gs, dirs, fd)]
            versus = ", ".join(f"{rel(x, u):.1e}" for x, u in zip(gs[:3], grads["unrolled"][:3]))
            table.append(f"| {lr:g} | {mode} | " + " | ".join(f"{e:.1e}" for e in errors) + f" | {versus} |")
    print("\n".join(["", *table]))


if __name__ == "__main__":
    main()
