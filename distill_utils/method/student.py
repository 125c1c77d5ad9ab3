"""Training a dual encoder from external flat parameters: the one code path for experts,
distillation students and evaluation students."""
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, Iterable, Iterator, Optional, Tuple

import torch
from torch import Tensor

from distill_utils.method import blending
from distill_utils.method.losses import contrastive_loss
from distill_utils.evaluation.retrieval import retrieval_metrics
from distill_utils.speed import autocast
from networks.dual_encoder import DualEncoder

if TYPE_CHECKING:  # datasets/loading.py imports RetrievalData from here
    from distill_utils.datasets.loading import TrainData


class Student:
    """A network plus a loss, evaluated at given (img_flat, txt_flat) parameters.

    amp ('off', 'bf16', 'fp16'; default: the network's `amp`): the network's forward runs under autocast,
    the loss in float32. fp16 training scales the loss (one GradScaler per student, kept across epochs).
    """

    def __init__(self, net: DualEncoder, loss_type: str, amp: Optional[str] = None, blend: float = 0.0):
        self.net, self.loss_type = net, loss_type
        self.criterion = contrastive_loss(loss_type)
        self.amp = getattr(net, "amp", "off") if amp is None else amp
        self.blend = blend  # --blend: Beta concentration of representation blending (blending.py); 0 = off
        self.scaler = None

    def loss(self, img_flat: Tensor, txt_flat: Tensor, images: Tensor, texts: Tensor, targets: Tensor) -> Tensor:
        if self.blend:
            return self._blended_loss(img_flat, txt_flat, images, texts, targets)
        if self.amp == "off":
            return self.criterion(self.net.logits(images, texts, img_flat, txt_flat), targets)
        with autocast(images.device, self.amp):
            logits = self.net.logits(images, texts, img_flat, txt_flat)
        return self.criterion(logits.float(), targets)

    def _blended_loss(self, img_flat, txt_flat, images, texts, targets):
        lam, perm = blending.draw(self.blend, len(images))
        with autocast(images.device, self.amp):
            inputs = blending.mix(self.net.image_module_inputs(images), lam, perm)
            z_img = self.net.represent_image_inputs(inputs, img_flat)
            z_txt = self.net.represent_texts(blending.mix(texts, lam, perm), txt_flat)
        return self.criterion(self.net.similarity(_full(z_img), _full(z_txt)), targets)

    def backward_step(self, loss: Tensor, optimizer: torch.optim.Optimizer) -> None:
        """loss.backward() and optimizer.step(), through a GradScaler under fp16 (skips steps with inf grads)."""
        if self.amp != "fp16":
            loss.backward()
            optimizer.step()
            return
        if self.scaler is None:
            self.scaler = torch.amp.GradScaler(loss.device.type)
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()

    def grads(self, img_flat: Tensor, txt_flat: Tensor, images: Tensor, texts: Tensor, targets: Tensor,
              create_graph: bool = False) -> Tuple[Tensor, Tensor, Tensor]:
        """(loss, d loss / d img_flat, d loss / d txt_flat) at the given parameters."""
        loss = self.loss(img_flat, txt_flat, images, texts, targets)
        g_img, g_txt = torch.autograd.grad(loss, (img_flat, txt_flat), create_graph=create_graph)
        return loss, g_img, g_txt


def _full(z: Tensor) -> Tensor:
    """Autocast's half-precision outputs in float32; float32/64 as they are."""
    return z.float() if z.dtype in (torch.float16, torch.bfloat16) else z


def make_sgd(img_flat: Tensor, txt_flat: Tensor, lr_img: float, lr_txt: float, momentum: float,
             weight_decay: float) -> torch.optim.SGD:
    return torch.optim.SGD([{"params": [img_flat], "lr": lr_img}, {"params": [txt_flat], "lr": lr_txt}],
                           lr=lr_img, momentum=momentum, weight_decay=weight_decay)


def identity_batches(train: "TrainData", order: Tensor, batch_size: int, device: torch.device
                     ) -> Iterator[Tuple[Tensor, Tensor, Tensor]]:
    """(images, text features, identity targets) of the real pairs `order` of a TrainData, in chunks of batch_size."""
    for images, idx in train.images.batches(order, batch_size):
        yield images.to(device), train.text_features[idx].to(device), torch.eye(len(idx), device=device)


def train_epoch(student: Student, img_flat: Tensor, txt_flat: Tensor, optimizer: torch.optim.Optimizer,
                batches: Iterable[Tuple[Tensor, Tensor, Tensor]]) -> float:
    """One pass of SGD over `batches` of (images, text features, target matrix); returns the mean loss."""
    student.net.train()
    total, count = 0.0, 0
    for images, texts, targets in batches:
        optimizer.zero_grad(set_to_none=True)
        loss = student.loss(img_flat, txt_flat, images, texts, targets)
        student.backward_step(loss, optimizer)
        total, count = total + loss.item() * len(images), count + len(images)
    return total / max(count, 1)


@dataclass
class RetrievalData:
    """A val/test split ready for scoring: its image store, text features and text -> image map."""
    images: object
    text_features: torch.Tensor
    txt2img: torch.Tensor


@torch.no_grad()
def embed_split(net: DualEncoder, img_flat: Tensor, txt_flat: Tensor, data: RetrievalData, device: torch.device,
                batch_size: int = 256, text_batch_size: int = 4096) -> Tuple[Tensor, Tensor]:
    """(image embeddings, text embeddings) of every image in `data.images` and every row of `data.text_features`,
    in eval mode."""
    was_training = net.training
    net.eval()
    order = torch.arange(len(data.images))
    img = torch.cat([net.embed_images(x.to(device), img_flat) for x, _ in data.images.batches(order, batch_size)])
    txt = torch.cat([net.embed_texts(t.to(device), txt_flat) for t in torch.split(data.text_features, text_batch_size)])
    net.train(was_training)
    return img, txt


def evaluate_retrieval(net: DualEncoder, img_flat: Tensor, txt_flat: Tensor, data: RetrievalData, device: torch.device,
                       batch_size: int = 256) -> Dict[str, float]:
    img, txt = embed_split(net, img_flat, txt_flat, data, device, batch_size)
    return retrieval_metrics(img @ txt.t(), data.txt2img)
