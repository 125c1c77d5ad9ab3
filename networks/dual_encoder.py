"""The CLIP-style dual encoder of SPEC section 2 and its functional (external-parameter) forward.

"img params" are the trainable image side (the whole encoder with --image_trainable, else an
image projection head on a frozen encoder); "txt params" are the text projection head. Every
forward can take them from outside, so experts, distillation students and evaluation students
run the same code.
"""
from dataclasses import dataclass, asdict
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from .heads import ProjectionHead
from .image_encoders import build_image_encoder, is_convnet
from .params import ParamLayout


def _normalize(x):
    """L2-normalise rows; half-precision outputs (autocast) are normalised in float32."""
    return F.normalize(x.float() if x.dtype in (torch.float16, torch.bfloat16) else x, dim=1)


class DualEncoder(nn.Module):
    def __init__(self, image_encoder: nn.Module, image_dim: int, text_dim: int, image_trainable: bool,
                 out_embedding: int = 768, temperature: float = 0.07):
        super().__init__()
        self.image_encoder = image_encoder
        self.image_trainable = image_trainable
        embed_dim = image_dim if image_trainable else out_embedding
        self.image_head = None if image_trainable else ProjectionHead(image_dim, embed_dim)
        self.text_head = ProjectionHead(text_dim, embed_dim)
        self.logit_scale = 1.0 / temperature  # fixed, as in the paper
        self.amp = "off"  # autocast dtype the Student runs this network under (--amp)
        self.channels_last = False  # images enter the encoder channels-last (--channels_last)
        if not image_trainable:
            self.image_encoder.requires_grad_(False)
        self.img_layout = ParamLayout(self.img_module)
        self.txt_layout = ParamLayout(self.txt_module)

    @property
    def img_module(self) -> nn.Module:
        return self.image_encoder if self.image_trainable else self.image_head

    @property
    def txt_module(self) -> nn.Module:
        return self.text_head

    def train(self, mode: bool = True) -> "DualEncoder":
        super().train(mode)
        if not self.image_trainable:
            self.image_encoder.eval()  # a frozen encoder never runs in training mode
        return self

    def initial_params(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(img_flat, txt_flat): detached copies of the module's own parameters."""
        return (self.img_layout.flatten([p.detach() for p in self.img_module.parameters()]).clone(),
                self.txt_layout.flatten([p.detach() for p in self.txt_module.parameters()]).clone())

    def image_module_inputs(self, images: torch.Tensor) -> torch.Tensor:
        """What the trained image module takes: the frozen encoder's features, or the images when it trains."""
        if self.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        return images if self.image_trainable else self.image_encoder(images)

    def represent_image_inputs(self, inputs: torch.Tensor, img_flat: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The trained image module's output on its inputs (image_module_inputs), before the L2 normalisation."""
        module = self.img_module
        return module(inputs) if img_flat is None else functional_call(module, self.img_layout.unflatten(img_flat), (inputs,))

    def represent_images(self, images: torch.Tensor, img_flat: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The image side's output before the L2 normalisation."""
        return self.represent_image_inputs(self.image_module_inputs(images), img_flat)

    def represent_texts(self, text_features: torch.Tensor, txt_flat: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The text head's output before the L2 normalisation."""
        module = self.txt_module
        return module(text_features) if txt_flat is None else functional_call(module, self.txt_layout.unflatten(txt_flat), (text_features,))

    def embed_images(self, images: torch.Tensor, img_flat: Optional[torch.Tensor] = None) -> torch.Tensor:
        return _normalize(self.represent_images(images, img_flat))

    def embed_texts(self, text_features: torch.Tensor, txt_flat: Optional[torch.Tensor] = None) -> torch.Tensor:
        return _normalize(self.represent_texts(text_features, txt_flat))

    def similarity(self, img_repr: torch.Tensor, txt_repr: torch.Tensor) -> torch.Tensor:
        """Logits [B_img, B_txt] = scale * cos of two sets of representations."""
        return self.logit_scale * _normalize(img_repr) @ _normalize(txt_repr).t()

    def logits(self, images: torch.Tensor, text_features: torch.Tensor, img_flat: Optional[torch.Tensor] = None,
               txt_flat: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Image-to-text logits [B_img, B_txt] = scale * cos."""
        return self.similarity(self.represent_images(images, img_flat), self.represent_texts(text_features, txt_flat))


@dataclass(frozen=True)
class NetConfig:
    image_encoder: str
    image_size: int
    text_dim: int
    image_trainable: bool
    out_embedding: int = 768
    image_pretrained: Optional[bool] = None
    image_checkpoint: Optional[str] = None
    temperature: float = 0.07
    amp: str = "off"
    channels_last: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


class NetworkFactory:
    """Builds fresh dual encoders: the image encoder's starting weights are read once, heads are random per seed."""

    def __init__(self, config: NetConfig):
        self.config = config
        self._encoder_state = None
        self._external_weights = config.image_checkpoint is not None or (
            config.image_pretrained is not False and not is_convnet(config.image_encoder))

    def build(self, seed: int, device: Union[str, torch.device] = "cpu") -> DualEncoder:
        c = self.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed if c.image_trainable else 0)  # a frozen random encoder is shared by all nets
            if self._encoder_state is None:
                encoder, dim = build_image_encoder(c.image_encoder, c.image_size, c.image_pretrained, c.image_checkpoint)
                if self._external_weights:
                    self._encoder_state = {k: v.clone() for k, v in encoder.state_dict().items()}
            else:
                encoder, dim = build_image_encoder(c.image_encoder, c.image_size, False, None)
                encoder.load_state_dict(self._encoder_state)
            torch.manual_seed(seed)
            net = DualEncoder(encoder, dim, c.text_dim, c.image_trainable, c.out_embedding, c.temperature)
        net.amp, net.channels_last = c.amp, c.channels_last
        return net.to(device)
