"""The experts of a buffer directory in the order a distillation visits them (files/buffers.py holds the format)."""
import contextlib
import os
from typing import Tuple

import torch

from common.errors import UserError
from distill_utils.files.buffers import BufferDir, describe_file, load_experts
from distill_utils.rng import pass_order_seed


class ExpertStream:
    """Cycles through a buffer's experts, holding one file memory-mapped; the file order is reshuffled each pass.

    An iteration reads two timestamps of an expert, so a file is mapped rather than read: only the pages of the
    timestamps used are read (at the paper's size 2 x 131 MB of an expert's 1.4 GB), and the next file is announced
    to the kernel for read-ahead while this one is in use. Its position is three integers, so a resumed
    distillation continues with the same experts.
    """

    def __init__(self, buffer: BufferDir, seed: int):
        self.directory, self.seed = buffer.path, seed
        self.pairs = buffer.pairs()
        self.pass_idx = self.file_pos = self.expert_pos = 0
        self._loaded, self._counts = None, {}

    def _order(self):
        g = torch.Generator().manual_seed(pass_order_seed(self.seed, self.pass_idx))
        return torch.randperm(len(self.pairs), generator=g).tolist()

    def _file(self):
        n, img_path, txt_path = self.pairs[self._order()[self.file_pos]]
        if self._loaded is None or self._loaded[0] != n:
            img, txt = load_experts(img_path, mmap=True), load_experts(txt_path, mmap=True)
            if len(img) != len(txt):
                raise UserError(f"buffer pair {img_path}: {len(img)} img experts but {len(txt)} txt experts")
            self._loaded = (n, img, txt, img_path)
            self._read_ahead()
        return self._loaded

    def _read_ahead(self):
        """Ask the kernel to start reading the next file of this pass (a hint: nothing waits for it)."""
        if not hasattr(os, "posix_fadvise") or self.file_pos + 1 >= len(self.pairs):
            return
        for path in self.pairs[self._order()[self.file_pos + 1]][1:]:
            with contextlib.suppress(OSError):
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
                finally:
                    os.close(fd)

    def next(self) -> Tuple[list, list, str]:
        """(img_trajectory, txt_trajectory, source path) of the next expert."""
        _, img, txt, path = self._file()
        out = (img[self.expert_pos], txt[self.expert_pos], path)
        self._advance(len(img))
        return out

    def skip(self) -> None:
        """Move past the next expert without loading it (another torchrun rank matches it)."""
        n, img_path, _ = self.pairs[self._order()[self.file_pos]]
        if n not in self._counts:  # read memory-mapped, without the tensors
            self._counts[n] = describe_file(img_path)[0]
        self._advance(self._counts[n])

    def _advance(self, experts_in_file):
        self.expert_pos += 1
        if self.expert_pos == experts_in_file:
            self.expert_pos, self.file_pos = 0, self.file_pos + 1
            if self.file_pos == len(self.pairs):
                self.file_pos, self.pass_idx = 0, self.pass_idx + 1

    def state_dict(self) -> dict:
        return {"pass_idx": self.pass_idx, "file_pos": self.file_pos, "expert_pos": self.expert_pos,
                "files": [n for n, _, _ in self.pairs]}

    def load_state_dict(self, state: dict) -> None:
        files = [n for n, _, _ in self.pairs]
        if state.get("files", files) != files:  # another set of experts would silently change the result
            raise UserError(f"--resume: the buffer {self.directory} holds experts {files}, the checkpoint was made "
                            f"with {state['files']}; resume with the buffer as it was")
        self.pass_idx, self.file_pos, self.expert_pos = state["pass_idx"], state["file_pos"], state["expert_pos"]
