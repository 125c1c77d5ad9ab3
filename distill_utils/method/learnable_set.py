"""The learnable synthetic subset of one phase (SPEC section 5): pixels X, text features Y, the
similarity parameters of S and two student learning rates, with their optimiser and EMA copy; and
`LearnableSet`, the interface the matching step trains a student on and differentiates, which it and the
conditioned set of method/conditioning.py share."""
from dataclasses import dataclass
from typing import List, Optional, Protocol, Tuple, runtime_checkable

import torch

from distill_utils.method.ema import EMA
from distill_utils.method.similarity import Similarity, make_similarity
from distill_utils.datasets.loading import TrainData
from distill_utils.files.subset_file import DistilledSubset


@runtime_checkable
class LearnableSet(Protocol):
    """What the student's steps train on (minibatch indices run over all its pairs) and the matching step
    differentiates: the gradient reaches `tensors()` (image, text, similarity parameters and the two learned
    student lrs, in that order), the learnable side of the set."""

    @property
    def image(self) -> torch.Tensor: ...

    @property
    def text(self) -> torch.Tensor: ...

    @property
    def sim_params(self) -> List[torch.Tensor]: ...

    @property
    def student_lr_img(self) -> torch.Tensor: ...

    @property
    def student_lr_txt(self) -> torch.Tensor: ...

    def __len__(self) -> int: ...

    def batch(self, idx: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...

    def tensors(self) -> List[torch.Tensor]: ...

    def zero_grad(self) -> None: ...


@dataclass(frozen=True)
class SynOptim:
    """How the subset learns: lr_img, lr_txt (the --lr_img/--lr_txt flags) are the lrs of its pixels and text
    features, not the student lrs it learns (SyntheticSet.student_lr_img/_txt, whose lr is lr_lr)."""
    lr_img: float          # lr of the pixels
    lr_txt: float          # lr of the text features
    lr_sim: float          # lr of the similarity parameters
    lr_lr: float           # lr of the two student lrs
    momentum: float = 0.5
    ema_decay: float = 0.99
    clamp_lr: float = 0.0   # lower bound of the student lrs


class SyntheticSet:
    """One phase's learnable subset (a LearnableSet) with its optimiser and EMA copy."""

    def __init__(self, image: torch.Tensor, text: torch.Tensor, similarity: Similarity, student_lr_img: float,
                 student_lr_txt: float, opt: SynOptim):
        self.similarity = similarity
        self.image = image.detach().clone().requires_grad_(True)
        self.text = text.detach().clone().requires_grad_(True)
        self.sim_params = [p.detach().clone().requires_grad_(True) for p in similarity.params]
        like = dict(dtype=self.image.dtype, device=self.image.device, requires_grad=True)
        self.student_lr_img = torch.tensor(float(student_lr_img), **like)  # learned: the lrs a student steps with
        self.student_lr_txt = torch.tensor(float(student_lr_txt), **like)
        self.opt = opt
        self.optimizer = torch.optim.SGD([
            {"params": [self.image], "lr": opt.lr_img},
            {"params": [self.text], "lr": opt.lr_txt},
            {"params": [self.student_lr_img, self.student_lr_txt], "lr": opt.lr_lr},
            {"params": self.sim_params, "lr": opt.lr_sim},
        ], lr=opt.lr_img, momentum=opt.momentum)
        self.ema = EMA(self.tensors(), opt.ema_decay)

    @classmethod
    def from_real(cls, train: TrainData, n: int, sim_kind: str, sim_rank: Optional[int], alpha: float,
                  student_lr_img: float, student_lr_txt: float, opt: SynOptim, generator: torch.Generator,
                  device: torch.device) -> "SyntheticSet":
        """X, Y from n random real pairs; S from the identity (low rank: a = 1, L random, R = 0)."""
        idx = torch.randperm(len(train), generator=generator)[:n]
        similarity = make_similarity(sim_kind, n, sim_rank, alpha, device, generator)
        return cls(train.images.get(idx).to(device), train.text_features[idx].to(device), similarity,
                   student_lr_img, student_lr_txt, opt)

    def __len__(self) -> int:
        return len(self.image)

    def tensors(self) -> List[torch.Tensor]:
        """Everything that learns, in a fixed order (the EMA and checkpoints use it)."""
        return [self.image, self.text, *self.sim_params, self.student_lr_img, self.student_lr_txt]

    def batch(self, idx: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(pixels, text features, similarity sub-matrix) of minibatch `idx`, differentiable in all three."""
        return self.image[idx], self.text[idx], self.similarity.batch(self.sim_params, idx)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        """Apply the gradients set by the matching step, clamp the lrs, update the EMA copy."""
        self.optimizer.step()
        with torch.no_grad():
            self.student_lr_img.clamp_(min=self.opt.clamp_lr)
            self.student_lr_txt.clamp_(min=self.opt.clamp_lr)
        self.ema.update(self.tensors())
        self.zero_grad()

    def subset(self, config: dict, ema: bool = True) -> DistilledSubset:
        """The (EMA) subset in the published format."""
        values = self.ema.shadow if ema else self.tensors()
        image, text, *sim_params, lr_img, lr_txt = (v.detach().cpu().clone() for v in values)  # the student lrs
        return DistilledSubset(image, text, self.similarity.matrix(sim_params), lr_img.item(), lr_txt.item(),
                               sim_params, dict(config))

    def state_dict(self) -> dict:
        return {"tensors": [t.detach().cpu() for t in self.tensors()], "optimizer": self.optimizer.state_dict(),
                "ema": self.ema.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for t, saved in zip(self.tensors(), state["tensors"]):
                t.copy_(saved)
        self.optimizer.load_state_dict(state["optimizer"])
        self.ema.load_state_dict({**state["ema"], "shadow": [s.to(self.image.device) for s in state["ema"]["shadow"]]})
