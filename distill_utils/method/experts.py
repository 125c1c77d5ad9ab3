"""Expert training (SPEC section 3): SGD with the contrastive loss on real pairs, recording the
img and txt parameters at epoch 0 and after every epoch."""
from typing import TYPE_CHECKING, Iterator, List, Tuple

import torch
from tqdm import trange

from common.errors import UserError
from distill_utils.evaluation.retrieval import format_metrics
from distill_utils.datasets.loading import TrainData
from distill_utils.files.run_log import RunLog
from distill_utils.method.student import (RetrievalData, Student, evaluate_retrieval, identity_batches, make_sgd,
                                          train_epoch)
from networks.dual_encoder import DualEncoder

if TYPE_CHECKING:  # config.py imports the settings table, which imports the method modules
    from distill_utils.config import ExpertConfig


def real_batches(train: TrainData, order: torch.Tensor, batch_size: int, device: torch.device) -> Iterator[tuple]:
    """(images, text features, identity targets) over `order`; a short last batch is dropped, as in the paper."""
    chunks = list(torch.split(order, batch_size))
    if len(chunks) > 1 and len(chunks[-1]) < batch_size:
        order = order[: (len(chunks) - 1) * batch_size]
    return identity_batches(train, order, batch_size, device)


def train_expert(net: DualEncoder, train: TrainData, test: RetrievalData, cfg: "ExpertConfig", device: torch.device,
                 seed: int, log: RunLog, expert_id: int, eval_untrained: bool = False
                 ) -> Tuple[List[List[torch.Tensor]], List[List[torch.Tensor]]]:
    """Train one expert from `net`'s initial parameters as `cfg` (config.ExpertConfig) says; returns
    (img_timestamps, txt_timestamps)."""
    torch.manual_seed(seed)  # dropout masks
    order_gen = torch.Generator().manual_seed(seed)
    student = Student(net, cfg.loss_type)
    img, txt = (p.to(device).requires_grad_(True) for p in net.initial_params())
    opt = make_sgd(img, txt, cfg.lr_teacher_img, cfg.lr_teacher_txt, cfg.mom, cfg.l2)
    snapshot = lambda: ([t.detach().cpu().clone() for t in net.img_layout.split(img)],
                        [t.detach().cpu().clone() for t in net.txt_layout.split(txt)])
    img_stamps, txt_stamps = map(lambda s: [s], snapshot())
    if eval_untrained:
        m = evaluate_retrieval(net, img, txt, test, device)
        log.log({"expert": expert_id, "epoch": 0, **m}, echo=f"expert {expert_id} untrained | {format_metrics(m)}")
    bar = trange(cfg.train_epochs, desc=f"expert {expert_id}", leave=False)
    for epoch in bar:
        order = torch.randperm(len(train), generator=order_gen)
        loss = train_epoch(student, img, txt, opt, real_batches(train, order, cfg.batch_train, device))
        bar.set_postfix(loss=f"{loss:.4f}")
        if not (torch.isfinite(img).all() and torch.isfinite(txt).all()):
            raise UserError(f"expert {expert_id} diverged in epoch {epoch + 1} (non-finite parameters); nothing is saved "
                            "for it: lower --lr_teacher_img/--lr_teacher_txt")
        img_now, txt_now = snapshot()
        img_stamps.append(img_now)
        txt_stamps.append(txt_now)
        record = {"expert": expert_id, "epoch": epoch + 1, "train_loss": loss}
        echo = None
        if (epoch + 1) % cfg.eval_freq == 0 or epoch + 1 == cfg.train_epochs:
            m = evaluate_retrieval(net, img, txt, test, device)
            record.update(m)
            echo = f"expert {expert_id} epoch {epoch + 1} loss {loss:.4f} | {format_metrics(m)}"
        log.log(record, echo=echo)
    return img_stamps, txt_stamps
