"""One buffer directory and everything it holds: the expert files, manifest.json and the claims of the
processes that fill it (buffer.py), checked against the network of a script that reads it (distillation,
the prototype baseline). The file formats are in buffers.py, the claims in claims.py."""
import os
import time

import torch

from common.errors import UserError
from distill_utils.files import buffers
from distill_utils.files.claims import claim_next, live_claims

POLL_S = 10.0  # how often a process that has nothing left to claim looks whether the others have finished


class BufferDir:
    def __init__(self, path, flag="--buffer_path"):
        self.path, self.flag = path, flag

    @classmethod
    def of_network(cls, root, dataset, image_encoder, text_encoder, loss_type):
        """<root>/<dataset>/<image_encoder>_<text_encoder>/<loss_type>/normal, where buffer.py writes."""
        return cls(buffers.buffer_dir(root, dataset, image_encoder, text_encoder, loss_type))

    def __str__(self):
        return self.path

    # --- filling it (buffer.py) ---

    def expert_done(self, n):
        return os.path.exists(buffers.pair_paths(self.path, n)[0])  # the img file is written last

    def next_expert(self, num_experts):
        """Claim the next expert to train; waits while others train the last ones. None when none is left."""
        said = False
        while True:
            claim, held = claim_next(self.path, num_experts, self.expert_done)
            if claim is not None or not held:
                return claim
            if not said:
                print(f"waiting for experts {held} that other processes are training", flush=True)
                said = True
            time.sleep(POLL_S)

    def write_manifest(self, manifest, holding=None):
        """Create manifest.json or check that it agrees (buffers.write_manifest); `holding`: the expert this
        process has claimed, so that other live claims show that the manifest is backed by a writer."""
        live_others = holding is not None and bool(live_claims(self.path, exclude=[holding]))
        return buffers.write_manifest(self.path, manifest, live_others=live_others)

    def save_pair(self, n, img_experts, txt_experts):
        buffers.save_pair(self.path, n, img_experts, txt_experts)

    def check_complete(self, num_experts, timestamps):
        """Every expert file exists and loads with the recorded number of timestamps."""
        for n in range(num_experts):
            for path in buffers.pair_paths(self.path, n):
                _, length, _ = buffers.describe_file(path)
                if length != timestamps:
                    raise UserError(f"buffer file {path}: {length} timestamps per expert, this buffer's experts have "
                                    f"{timestamps}; move it away and rerun to retrain expert {n}")

    # --- reading it ---

    def pairs(self):
        return buffers.list_pairs(self.path, self.flag)

    def read_manifest(self):
        return buffers.read_manifest(self.path)

    def check_network(self, net):
        """Every pair's shapes fit `net` (read without loading the tensors); (timestamps of the shortest expert,
        its file)."""
        return buffers.check_pairs(self.path, net.img_layout, net.txt_layout, self.flag)

    def check_identity(self, identity, where=None):
        """Refuse a buffer whose manifest records another network identity (NetworkSpec.identity())."""
        buffers.check_manifest(self.path, identity, where or f"{self.flag} {self.path}")

    def stream(self, seed):
        return buffers.ExpertStream(self.path, seed, self.flag)

    def final_expert(self, net, identity):
        """(img_flat, txt_flat): the last timestamp of the first expert, checked against `net` and `identity`; a
        buffer without a manifest (published) is checked by parameter shapes only."""
        self.check_identity(identity)
        _, img_path, txt_path = self.pairs()[0]
        img, txt = buffers.load_experts(img_path)[0][-1], buffers.load_experts(txt_path)[0][-1]
        buffers.check_shapes(buffers.shapes_of(img), net.img_layout, "img", f"{self.flag} {img_path}")
        buffers.check_shapes(buffers.shapes_of(txt), net.txt_layout, "txt", f"{self.flag} {txt_path}")
        img, txt = net.img_layout.flatten(img).float(), net.txt_layout.flatten(txt).float()
        if not (torch.isfinite(img).all() and torch.isfinite(txt).all()):
            raise UserError(f"{self.flag} {img_path} (or its txt twin): the final expert parameters hold NaN or inf")
        return img, txt
