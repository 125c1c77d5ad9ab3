"""Decoded, resized, normalised images: in memory for small sets, streamed for large ones."""
from typing import TYPE_CHECKING, Iterator, List, Optional, Tuple

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms
from tqdm import tqdm

from common.errors import UserError

if TYPE_CHECKING:
    from distill_utils.datasets.image_cache import ImageCache

# CLIP's normalisation, as in BLIP/LoRS/PTM-ST.
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
IN_MEMORY_LIMIT_BYTES = 2 * 1024**3


def read_image(path: str, image_size: int) -> torch.Tensor:
    """Decode and resize one image to a uint8 tensor [3, S, S]."""
    try:
        with Image.open(path) as img:
            img = img.convert("RGB").resize((image_size, image_size), Image.BICUBIC)
    except FileNotFoundError:
        raise UserError(f"image file {path} is missing") from None
    except Image.DecompressionBombError:
        raise UserError(f"image file {path} is too large to decode safely (over {2 * Image.MAX_IMAGE_PIXELS} "
                        "pixels: a decompression bomb?)") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise UserError(f"image file {path} is unreadable ({type(err).__name__})") from None
    return transforms.functional.pil_to_tensor(img)


def normalize(uint8_images: torch.Tensor) -> torch.Tensor:
    """uint8 [..., 3, H, W] -> float, CLIP-normalised."""
    x = uint8_images.float().div_(255.0)
    mean = torch.tensor(MEAN, device=x.device).view(3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(3, 1, 1)
    return (x - mean) / std


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """Inverse of `normalize` (to [0, 1], for drawing)."""
    mean = torch.tensor(MEAN, device=images.device).view(3, 1, 1)
    std = torch.tensor(STD, device=images.device).view(3, 1, 1)
    return (images * std + mean).clamp(0, 1)


def _from_workers(loader):
    """Iterate a DataLoader; an image error raised in a worker process comes back as its own one line, not as
    the worker's traceback that DataLoader wraps around it."""
    it = iter(loader)
    while True:
        try:
            yield next(it)
        except StopIteration:
            return
        except UserError as err:
            lines = [line for line in str(err).splitlines() if line.strip()]
            raise UserError(lines[-1].split("UserError: ", 1)[-1] if lines else "an image worker failed") from None


class _PathDataset(Dataset):
    def __init__(self, paths, image_size):
        self.paths, self.image_size = paths, image_size

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return read_image(self.paths[i], self.image_size), i


class ImageStore:
    """Images addressed by pair index. Each distinct file is decoded once when kept in memory; with an image cache
    (image_cache.ImageCache) holding every file, pixels are read from it instead of decoding."""

    def __init__(self, paths: List[str], image_size: int, in_memory: Optional[bool] = None, workers: int = 0,
                 cache: Optional["ImageCache"] = None):
        self.paths, self.image_size, self.workers = list(paths), image_size, workers
        unique = list(dict.fromkeys(self.paths))
        self._slot = torch.tensor([{p: k for k, p in enumerate(unique)}[p] for p in self.paths])
        if in_memory is None:
            in_memory = len(unique) * 3 * image_size * image_size <= IN_MEMORY_LIMIT_BYTES
        self.pixels = None
        self.cache, self._cache_rows = cache, cache.rows(unique) if cache is not None else None
        if in_memory and self._cache_rows is not None:
            self.pixels = cache.read(self._cache_rows)
        elif in_memory:
            loader = DataLoader(_PathDataset(unique, image_size), batch_size=64, num_workers=workers)
            chunks = [imgs for imgs, _ in tqdm(_from_workers(loader), total=len(loader), desc="decoding images",
                                               leave=False, disable=len(unique) < 2000)]
            self.pixels = torch.cat(chunks)

    def __len__(self):
        return len(self.paths)

    def get(self, indices: torch.Tensor) -> torch.Tensor:
        """Normalised images [B, 3, S, S] for pair indices (a LongTensor)."""
        if self.pixels is not None:
            return normalize(self.pixels[self._slot[indices]])
        if self._cache_rows is not None:
            return normalize(self.cache.read(self._cache_rows[self._slot[indices]]))
        return normalize(torch.stack([read_image(self.paths[i], self.image_size) for i in indices.tolist()]))

    def batches(self, order: torch.Tensor, batch_size: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """Yield (images, indices) over `order` in chunks; streams through worker processes when not in memory."""
        chunks = torch.split(order, batch_size)
        if self.pixels is not None or self.workers == 0 or self._cache_rows is not None:
            for idx in chunks:
                yield self.get(idx), idx
            return
        loader = DataLoader(_PathDataset(self.paths, self.image_size), batch_sampler=[c.tolist() for c in chunks],
                            num_workers=self.workers, persistent_workers=False)
        for imgs, idx in _from_workers(loader):
            yield normalize(imgs), idx
