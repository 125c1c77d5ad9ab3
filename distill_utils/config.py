"""Typed settings, built once from the parsed flags by the entry scripts; the library takes these, never the
argparse namespace. Field names are the flag names (the paper's scripts); where a class has defaults, they are the
flags' (settings.with_defaults: each flag is declared once, in settings.py)."""
import argparse
from dataclasses import asdict, dataclass, fields
from typing import Any, Optional, Type, TypeVar

import torch

from distill_utils import settings
from distill_utils.files.published import sha256
from networks.dual_encoder import NetConfig
from networks.text_encoders import weights_digest

T = TypeVar("T")


def from_flags(cls: Type[T], args: argparse.Namespace) -> T:
    """An instance of dataclass `cls` from the namesake flags in `args`; a field without a flag keeps its default."""
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})


@dataclass(frozen=True)
class DataConfig:
    """Where a dataset lies and how its images and text features are read."""
    dataset: str
    ann_root: str
    image_root: str
    image_size: int
    text_encoder: str
    feature_cache: str
    workers: int
    data_seed: int
    synthetic_train_images: int
    synthetic_test_images: int
    device: torch.device


@dataclass(frozen=True)
class NetworkSpec:
    """The dual encoder a script trains, with the data it is trained on."""
    dataset: str
    image_encoder: str
    text_encoder: str
    image_size: int
    image_trainable: bool
    out_embedding: int
    image_pretrained: Optional[bool]
    image_checkpoint: Optional[str]
    amp: str
    channels_last: bool

    def identity(self) -> dict:
        """The settings that identify the network and its data: recorded in buffer manifests and distilled files,
        and compared when a buffer or a distilled file is used. Call it once the text features are loaded (a
        text encoder that is not installed is named by the digest its feature cache recorded)."""
        return {"dataset": self.dataset, "image_encoder": self.image_encoder, "text_encoder": self.text_encoder,
                "text_encoder_weights": weights_digest(self.text_encoder), "image_size": self.image_size,
                "image_trainable": self.image_trainable, "out_embedding": self.out_embedding,
                **({"image_weights": sha256(self.image_checkpoint)} if self.image_checkpoint else {})}

    def net_config(self, text_dim: int) -> NetConfig:
        return NetConfig(self.image_encoder, self.image_size, text_dim, self.image_trainable, self.out_embedding,
                         self.image_pretrained, self.image_checkpoint, amp=self.amp, channels_last=self.channels_last)


@dataclass(frozen=True)
@settings.with_defaults(settings.BUFFER)
class ExpertConfig:
    """How buffer.py trains an expert (SPEC section 3)."""
    train_epochs: int
    lr_teacher_img: float
    lr_teacher_txt: float
    mom: float
    l2: float
    batch_train: int
    eval_freq: int
    loss_type: str

    def recorded(self) -> dict:
        """The fields a buffer manifest records (eval_freq only changes what is reported)."""
        return {k: v for k, v in asdict(self).items() if k != "eval_freq"}


@dataclass(frozen=True)
@settings.with_defaults(settings.DISTILL)
class DistillConfig:
    """The distillation settings of distill_ptm-st.py that are the same in every phase (SPEC section 5)."""
    seed: int
    syn_steps: int
    expert_epochs: int
    mini_batch_size: int
    lr_img: float
    lr_txt: float
    lr_sim: float
    lr_lr: float
    lr_teacher_img: float
    lr_teacher_txt: float
    clamp_lr: float
    sim_type: str
    alpha: float
    ema_decay: float
    matching: str
    constant_store: str
    adjoint_store: str
    phase_conditioning: str
    loss_type: str
    blend: float        # representation blending of the student's loss (method/blending.py); 0 = off
    amp: str
    amp_tolerance: float
    amp_check_it: int
    eval_it: int        # save (and evaluate) every eval_it iterations and at each phase end
    checkpoint_it: int  # write a resumable checkpoint every checkpoint_it iterations
    experts_per_it: int  # expert segments matched per iteration (split over torchrun ranks)
    tf32: bool              # CUDA kernel levers (speed.py), guarded with --amp
    nondeterministic: bool

    def recorded(self) -> dict:
        """The fields every distilled file records about how it was distilled."""
        return {k: getattr(self, k) for k in ("syn_steps", "expert_epochs", "sim_type", "loss_type", "matching",
                                              "phase_conditioning", "ema_decay", "experts_per_it")
                } | ({"blend": self.blend} if self.blend else {})  # recorded only when on: files without it are unchanged


@dataclass
@settings.with_defaults(settings.EVALUATE)
class EvalProtocol:
    """How distilled data are evaluated (SPEC section 6): evaluate.py and the in-run evaluation of distill_ptm-st.py."""
    num_eval: int
    epoch_eval_train: int
    batch_train: int
    loss_type: str
    momentum: float = 0.9
    weight_decay: float = 5e-4
    eval_points: int           # test evaluations spread evenly over the whole sequence; the last is the final epoch
    select_on: str             # the headline number: "final" or "val"
    lr_decay: bool             # x0.1 for the second half of each phase's epochs (authors: once, see the doc)
    eval_mode: str             # how phased subsets are used: sequential | cumulative | union
    protocol: str              # ours | authors

    def epochs_of(self, source: Any) -> int:
        return source.epochs if source.epochs is not None else self.epoch_eval_train
