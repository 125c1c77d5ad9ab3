"""The paper's recipe per dataset and budget, as sh/buffer.sh and sh/distill.sh run it (tests/test_preflight.py
reads those scripts' command lines, with the recipes they name, and holds this table to them): what
`prepare_data.py check` checks a machine against before the first step."""
from dataclasses import dataclass, replace

from common.errors import UserError


@dataclass(frozen=True)
class Recipe:
    dataset: str
    image_encoder: str = "nfnet"
    text_encoder: str = "bert"
    image_size: int = 224
    num_experts: int = 20         # buffer.py: experts ...
    train_epochs: int = 10        # ... of this many epochs
    expert_batch: int = 128       # buffer.py --batch_train
    windows: tuple = ((0, 6), (0, 8))   # convexify.py --start/--end, one per phase
    min_start_epoch: tuple = (0, 1)
    max_start_epoch: tuple = (2, 3)
    num_queries: tuple = (200, 299)
    expert_epochs: int = 1
    mini_batch_size: int = 20
    eval_batch: int = 128         # distill_ptm-st.py / evaluate.py --batch_train
    loss_type: str = "InfoNCE"    # of the experts (the buffer directory)

    def shortcut_dirs(self, normal_dir):
        """The buffer directory of each phase: convexified_<start>_<end> beside normal/."""
        parent = normal_dir.rstrip("/").rsplit("/", 1)[0]
        return [f"{parent}/convexified_{s}_{e}" for s, e in self.windows]


SIZES = (100, 200, 500)


def paper_recipe(dataset, size):
    if size not in SIZES:
        raise UserError(f"--size {size}: the paper's budgets are {', '.join(map(str, SIZES))} pairs")
    base = Recipe(dataset, mini_batch_size=40 if (dataset, size) == ("flickr", 500) else 20)
    if size == 200:
        return replace(base, num_queries=(99, 100))
    if size == 100:
        return replace(base, windows=((0, 6),), min_start_epoch=(0,), max_start_epoch=(2,), num_queries=(99,))
    return base
