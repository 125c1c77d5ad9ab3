"""The speed levers of the distillation passes, guarded: --amp (mixed precision) and, on CUDA, --tf32 and
--nondeterministic (kernels). Every `check_every` iterations the matching step is also run in strict float32
(no autocast, deterministic kernels without TF32) on the same iteration (same expert, minibatches and dropout
masks), and if the relative error of the synthetic-data gradient exceeds the tolerance, the rest of the run
uses strict float32.

The strict run happens first and the global RNG is rewound before the levers' one, so a check leaves the run
exactly where a run without checks would be; on failure the strict gradient is kept.
"""
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

from distill_utils import speed
from distill_utils.method.learnable_set import LearnableSet
from distill_utils.method.matching import MatchResult
from distill_utils.method.student import Student
from distill_utils.rng import rng_state, set_rng_state

DATA = "image", "text", "similarity"


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """||value - reference|| / ||reference|| (0 when both are zero), in float64."""
    value, reference = value.double(), reference.double()
    ref = reference.norm()
    if ref == 0:
        return 0.0 if value.norm() == 0 else float("inf")
    return ((value - reference).norm() / ref).item()


def gradient_errors(grads: Sequence[torch.Tensor], reference: Sequence[torch.Tensor]) -> Dict[str, float]:
    """{image, text, similarity, lr_img, lr_txt}: relative errors of gradients against `reference`, both in
    SyntheticSet.tensors() order; similarity is the largest over the similarity parameters."""
    errors = [relative_error(g, r) for g, r in zip(grads, reference)]
    return {"image": errors[0], "text": errors[1], "similarity": max(errors[2:-2]),
            "lr_img": errors[-2], "lr_txt": errors[-1]}


class AmpGuard:
    """amp: the --amp dtype ('off' for none); tf32, nondeterministic: the CUDA kernel levers the run set."""

    def __init__(self, student: Student, amp: str, tolerance: float, check_every: int, state: Optional[dict] = None,
                 tf32: bool = False, nondeterministic: bool = False):
        self.student, self.amp, self.tolerance, self.check_every = student, amp, tolerance, check_every
        self.kernels = dict(tf32=tf32, nondeterministic=nondeterministic)
        self.levers = "+".join([amp] * (amp != "off") + [k for k, on in self.kernels.items() if on])
        self.enabled = bool(self.levers)
        self.active = self.enabled and (state or {}).get("active", True)

    def state_dict(self) -> dict:
        return {"active": self.active}

    def match(self, match: Callable, syn: LearnableSet, start: tuple, target: tuple, schedule: list, iteration: int
              ) -> Tuple[MatchResult, Optional[dict]]:
        """(MatchResult, check record or None): one matching step, setting syn's .grad."""
        device = syn.image.device
        self.student.amp = self.amp if self.active else "off"
        if self.enabled:  # each step starts from the levers the guard holds (a fallback on another segment included)
            speed.kernels(device, **(self.kernels if self.active else {}))
        if not self.active or iteration % self.check_every:
            return match(self.student, syn, start, target, schedule), None
        rng = rng_state(device)
        self.student.amp = "off"
        with speed.strict_kernels(device):
            reference_result = match(self.student, syn, start, target, schedule)
        reference = [t.grad.clone() for t in syn.tensors()]
        syn.zero_grad()
        set_rng_state(rng, device)
        self.student.amp = self.amp
        result = match(self.student, syn, start, target, schedule)
        errors = gradient_errors([t.grad for t in syn.tensors()], reference)
        worst = max(errors[k] for k in DATA)
        record = {"event": "amp_check", "iteration": iteration + 1, "amp": self.amp, "levers": self.levers,
                  "amp_rel_err_max": worst, **{f"amp_rel_err_{k}": v for k, v in errors.items()},
                  "amp_tolerance": self.tolerance}
        if not worst <= self.tolerance:
            self.active = False  # strict float32 from the next step on
            self.student.amp = "off"
            for t, g in zip(syn.tensors(), reference):
                t.grad = g
            record["amp_fallback"] = True
            return reference_result, record
        return result, record


def describe(record: dict) -> str:
    """One line for the console."""
    return (f"{record.get('levers', record['amp'])} gradient vs strict float32 at iteration {record['iteration']}: "
            f"largest relative error {record['amp_rel_err_max']:.2e} (tolerance {record['amp_tolerance']:g})"
            + ("; float32 from now on" if record.get("amp_fallback") else ""))
