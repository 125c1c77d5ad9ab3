"""Exponential moving average over a list of tensors: ema = decay * ema + (1 - decay) * current."""
from typing import Iterable

import torch


class EMA:
    def __init__(self, tensors: Iterable[torch.Tensor], decay: float):
        self.decay = decay
        self.shadow = [t.detach().clone() for t in tensors]

    @torch.no_grad()
    def update(self, tensors: Iterable[torch.Tensor]) -> None:
        for s, t in zip(self.shadow, tensors):
            s.mul_(self.decay).add_(t.detach(), alpha=1.0 - self.decay)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        self.shadow = [s.clone() for s in state["shadow"]]
