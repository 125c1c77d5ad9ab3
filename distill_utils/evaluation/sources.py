"""What an evaluation student trains on (SPEC section 6): pair sources, and the eval modes that arrange them.

A *pair source* is anything with `name`, `lr_img`, `lr_txt`, `epochs` (None: the protocol's
epoch_eval_train), `__len__` and `batches(batch_size, generator, device)` yielding
(images, text features, target matrix). `SubsetSource` serves a distilled subset (targets: the
batch's sub-matrix of S), `RealPairSource` real training pairs (identity targets, streamed through
the ImageStore).

Eval modes (how phased subsets D_1..D_P are used): `sequential` trains on D_1, then D_2, ...;
`cumulative` trains phase p on D_1 u ... u D_p; `union` on all of them at once. A joined set keeps
each subset's similarity block; pairs of different subsets are negatives (0), as any two distinct
pairs are in the identity S every subset starts from. It trains with the last subset's lrs: the
contrastive loss couples the pairs of a batch, so per-pair lrs are not defined, and a subset
distilled with --phase_conditioning cumulative learned its lrs for exactly these mixed batches.
"""
import math
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import torch

from distill_utils.datasets.loading import TrainData
from distill_utils.method.student import identity_batches
from distill_utils.files.subset_file import DistilledSubset

EVAL_MODES = ("sequential", "cumulative", "union")
Batch = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # images, text features, target similarities


class SubsetSource:
    """A distilled subset: its images, text features, similarity matrix (soft targets) and learned lrs."""

    def __init__(self, subset: DistilledSubset, name: Optional[str] = None):
        self.image, self.text = subset.image.detach(), subset.text.detach()
        self.similarity = subset.similarity.detach()
        self.lr_img, self.lr_txt = float(subset.student_lr_img), float(subset.student_lr_txt)
        self.name = name or f"distilled[{len(self)}]"
        self.epochs = None
        self._on_device = None

    def __len__(self):
        return len(self.image)

    def _tensors(self, device):
        if self._on_device is None or self._on_device[0] != device:  # moved once, not every epoch
            self._on_device = (device, *(t.to(device) for t in (self.image, self.text, self.similarity)))
        return self._on_device[1:]

    def batches(self, batch_size: int, generator: torch.Generator, device: torch.device) -> Iterator[Batch]:
        image, text, sim = self._tensors(device)
        order = torch.randperm(len(self), generator=generator).to(device)
        for idx in torch.split(order, batch_size):
            yield image[idx], text[idx], sim[idx[:, None], idx]

    def authors_batches(self, batch_size: int, generator: torch.Generator, device: torch.device) -> Iterator[Batch]:
        """The authors' sampler: ceil(N / B) batches, each the first B pairs of a fresh permutation."""
        image, text, sim = self._tensors(device)
        for _ in range(math.ceil(len(self) / batch_size)):
            idx = torch.randperm(len(self), generator=generator)[:batch_size].to(device)
            yield image[idx], text[idx], sim[idx[:, None], idx]


def join_sources(sources: Sequence[SubsetSource], name: Optional[str] = None) -> SubsetSource:
    """Subsets trained on as one set: pairs concatenated, S block-diagonal, the last subset's lrs."""
    last = sources[-1]
    subset = DistilledSubset(torch.cat([s.image for s in sources]), torch.cat([s.text for s in sources]),
                             torch.block_diag(*[s.similarity for s in sources]), last.lr_img, last.lr_txt)
    return SubsetSource(subset, name or "+".join(s.name for s in sources))


def arrange(sources: Sequence["Source"], mode: str) -> List["Source"]:
    """The phases a student trains through under eval mode `mode` (see the module doc)."""
    if mode == "sequential" or len(sources) == 1:
        return list(sources)
    if not all(isinstance(s, SubsetSource) for s in sources):
        raise ValueError(f"eval mode {mode!r} joins distilled subsets only")
    if mode == "cumulative":
        return [sources[0]] + [join_sources(sources[:p + 1]) for p in range(1, len(sources))]
    return [join_sources(sources)]


class RealPairSource:
    """Real training pairs `indices` of a TrainData (all of them when None), with identity targets."""

    def __init__(self, train: TrainData, indices: Optional[Sequence[int]], lr_img: float, lr_txt: float, name: str,
                 epochs: Optional[int] = None):
        self.train = train
        self.indices = torch.arange(len(train)) if indices is None else torch.as_tensor(indices, dtype=torch.long)
        self.lr_img, self.lr_txt, self.name, self.epochs = float(lr_img), float(lr_txt), name, epochs

    def __len__(self):
        return len(self.indices)

    def batches(self, batch_size: int, generator: torch.Generator, device: torch.device) -> Iterator[Batch]:
        order = self.indices[torch.randperm(len(self), generator=generator)]
        yield from identity_batches(self.train, order, batch_size, device)

    authors_batches = batches  # the authors evaluate real pairs with a shuffled DataLoader


Source = Union[SubsetSource, RealPairSource]
