"""Evaluation of distilled data (SPEC section 6): fresh students trained phase by phase, then retrieval.

A *pair source* is anything with `name`, `lr_img`, `lr_txt`, `epochs` (None: the protocol's
epoch_eval_train), `__len__` and `batches(batch_size, generator, device)` yielding
(images, text features, target matrix). `SubsetSource` serves a distilled subset (targets: the
batch's sub-matrix of S), `RealPairSource` real training pairs (identity targets, streamed through
the ImageStore). `evaluate_sequence` trains `num_eval` students on the sources, with the one
training step of `method/student.py`, and reports mean and std over the runs.

Eval modes (how phased subsets D_1..D_P are used): `sequential` trains on D_1, then D_2, ...;
`cumulative` trains phase p on D_1 u ... u D_p; `union` on all of them at once. A joined set keeps
each subset's similarity block; pairs of different subsets are negatives (0), as any two distinct
pairs are in the identity S every subset starts from. It trains with the last subset's lrs: the
contrastive loss couples the pairs of a batch, so per-pair lrs are not defined, and a subset
distilled with --phase_conditioning cumulative learned its lrs for exactly these mixed batches.

Protocols: `ours` gives each phase a fresh SGD with its source's lrs (momentum 0.9, weight decay
5e-4); with `lr_decay` the lrs drop x0.1 for the second half of each phase's epochs. `authors`
follows the authors' code (LoRS `evaluate_synset_with_similarity`, called once per subset on one
network): one SGD for the whole sequence with the last subset's lrs, one x0.1 drop after global
epoch epoch_eval_train//2+1, epoch_eval_train+1 epochs per subset, each batch the first
batch_train pairs of a fresh permutation (ceil(N / batch_train) batches an epoch), test scored after
local epochs 0, E//10, 2E//10, ..., E of every phase, reporting the best of all those points.

Which number: `final` is the test score after the last epoch (the honest default); `best` is the
best test r_mean over the evaluation points (the paper's convention: optimistic, it selects on
test); `val` is the test score at the evaluation point with the best val r_mean.
"""
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm import tqdm

from common.errors import UserError
from distill_utils import parallel
from distill_utils.rng import eval_run_seed, seeded
from distill_utils.method.student import Student, evaluate_retrieval, identity_batches, make_sgd, train_epoch
from distill_utils.files.subset_file import DistilledSubset
from networks.names import same_model

ALL_KEYS = ("img_r1", "img_r5", "img_r10", "txt_r1", "txt_r5", "txt_r10", "img_r_mean", "txt_r_mean", "r_mean")
SELECTIONS = ("final", "val")
EVAL_MODES = ("sequential", "cumulative", "union")
PROTOCOLS = ("ours", "authors")
MEANING = {"final": "test score after the last epoch (the honest number)",
           "val_selected": "test score at the evaluation point with the best val r_mean",
           "best": "best test r_mean over the evaluation points (selects on test: the paper's "
                                    "convention, optimistic)",
           "authors": "best test r_mean over all evaluation points of all phases, the authors' protocol "
                      "(selects on test, optimistic)"}


class SubsetSource:
    """A distilled subset: its images, text features, similarity matrix (soft targets) and learned lrs."""

    def __init__(self, subset, name=None):
        self.image, self.text = subset.image.detach(), subset.text.detach()
        self.similarity = subset.similarity.detach()
        self.lr_img, self.lr_txt = float(subset.lr_img), float(subset.lr_txt)
        self.name = name or f"distilled[{len(self)}]"
        self.epochs = None
        self._on_device = None

    def __len__(self):
        return len(self.image)

    def _tensors(self, device):
        if self._on_device is None or self._on_device[0] != device:  # moved once, not every epoch
            self._on_device = (device, *(t.to(device) for t in (self.image, self.text, self.similarity)))
        return self._on_device[1:]

    def batches(self, batch_size, generator, device):
        image, text, sim = self._tensors(device)
        order = torch.randperm(len(self), generator=generator).to(device)
        for idx in torch.split(order, batch_size):
            yield image[idx], text[idx], sim[idx[:, None], idx]

    def authors_batches(self, batch_size, generator, device):
        """The authors' sampler: ceil(N / B) batches, each the first B pairs of a fresh permutation."""
        image, text, sim = self._tensors(device)
        for _ in range(math.ceil(len(self) / batch_size)):
            idx = torch.randperm(len(self), generator=generator)[:batch_size].to(device)
            yield image[idx], text[idx], sim[idx[:, None], idx]


def add_mode_args(group):
    """--eval_mode and --protocol, shared by evaluate.py and the in-run evaluation of distill_ptm-st.py."""
    group.add_argument("--eval_mode", default="sequential", choices=EVAL_MODES,
                       help="how phased subsets D_1..D_P are trained on: sequential (D_1, then D_2, ...), cumulative "
                            "(phase p on D_1 u ... u D_p) or union (all as one set); joined subsets keep their "
                            "similarity blocks and use the last subset's lrs (default: sequential)")
    group.add_argument("--protocol", default="ours", choices=PROTOCOLS,
                       help="ours: a fresh SGD per phase with its lrs, final epoch reported; authors: the authors' "
                            "evaluation (one SGD with the last subset's lrs, one x0.1 drop at epoch_eval_train//2+1 "
                            "over the whole sequence, epoch_eval_train+1 epochs per subset, their batch sampler, "
                            "scored after local epochs 0, E//10, ..., E of every subset: --eval_points does not "
                            "apply), reporting the best test score over all evaluation points unless --select_on "
                            "val (default: ours)")


def join_sources(sources, name=None):
    """Subsets trained on as one set: pairs concatenated, S block-diagonal, the last subset's lrs."""
    last = sources[-1]
    subset = DistilledSubset(torch.cat([s.image for s in sources]), torch.cat([s.text for s in sources]),
                             torch.block_diag(*[s.similarity for s in sources]), last.lr_img, last.lr_txt)
    return SubsetSource(subset, name or "+".join(s.name for s in sources))


def arrange(sources, mode):
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

    def __init__(self, train, indices, lr_img, lr_txt, name, epochs=None):
        self.train = train
        self.indices = torch.arange(len(train)) if indices is None else torch.as_tensor(indices, dtype=torch.long)
        self.lr_img, self.lr_txt, self.name, self.epochs = float(lr_img), float(lr_txt), name, epochs

    def __len__(self):
        return len(self.indices)

    def batches(self, batch_size, generator, device):
        order = self.indices[torch.randperm(len(self), generator=generator)]
        yield from identity_batches(self.train, order, batch_size, device)

    authors_batches = batches  # the authors evaluate real pairs with a shuffled DataLoader


def check_subset(subset, path, expected):
    """Refuse a distilled file the evaluation network cannot train on; returns notes worth printing.

    `expected`: dataset, image_encoder, text_encoder, image_size, image_trainable, text_dim of the
    evaluation. Image size and text dimension are checked on the tensors; with a `config` (our format)
    also dataset and text encoder. A different image encoder is cross-architecture evaluation: allowed.
    """
    where = f"distilled file {path}"
    for key, t in (("image", subset.image), ("text", subset.text), ("similarity", subset.similarity)):
        if not torch.isfinite(t).all():
            raise UserError(f"{where}: '{key}' holds NaN or inf values")
    if not all(math.isfinite(lr) and lr >= 0 for lr in (subset.lr_img, subset.lr_txt)):
        raise UserError(f"{where}: learned lrs must be finite and >= 0, found {subset.lr_img}, {subset.lr_txt}")
    size = expected["image_size"]
    if tuple(subset.image.shape[-2:]) != (size, size):
        raise UserError(f"{where}: images are {subset.image.shape[-2]}x{subset.image.shape[-1]}, "
                        f"the evaluation network takes {size}x{size} (--image_size)")
    if subset.text.shape[1] != expected["text_dim"]:
        raise UserError(f"{where}: text features are {subset.text.shape[1]}-d, --text_encoder "
                        f"{expected['text_encoder']} gives {expected['text_dim']}-d")
    cfg = subset.config
    if not cfg:
        return [f"{path}: no config (published format): checked image size and text dimension only"]
    ours, theirs = expected.get("text_encoder_weights"), cfg.get("text_encoder_weights")
    if ours and theirs and ours != theirs:
        raise UserError(f"{where}: distilled with other text-encoder weights than --text_encoder "
                        f"{expected['text_encoder']} (the features would not match)")
    if "text_encoder" in cfg and not same_model(cfg["text_encoder"], expected["text_encoder"]):
        raise UserError(f"{where}: distilled with text encoder {cfg['text_encoder']!r}, this evaluation uses "
                        f"{expected['text_encoder']!r} (--text_encoder)")
    if "dataset" in cfg and cfg["dataset"] != expected["dataset"]:
        raise UserError(f"{where}: distilled from dataset {cfg['dataset']!r}, "
                        f"this evaluation is on {expected['dataset']!r}")
    notes = []
    if "image_encoder" in cfg and not same_model(cfg["image_encoder"], expected["image_encoder"]):
        notes.append(f"{path}: cross-architecture evaluation: distilled with image encoder {cfg['image_encoder']!r}, "
                     f"evaluated with {expected['image_encoder']!r}")
    if "image_trainable" in cfg and bool(cfg["image_trainable"]) != expected["image_trainable"]:
        notes.append(f"{path}: distilled with image_trainable={cfg['image_trainable']}, evaluated with "
                     f"image_trainable={expected['image_trainable']}")
    return notes


@dataclass
class EvalProtocol:
    num_eval: int = 5
    epoch_eval_train: int = 100
    batch_train: int = 128
    loss_type: str = "WBCE"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    eval_points: int = 5       # test evaluations spread evenly over the whole sequence; the last is the final epoch
    select_on: str = "final"   # the headline number: "final" or "val"
    lr_decay: bool = True      # x0.1 for the second half of each phase's epochs (authors: once, see the doc)
    eval_mode: str = "sequential"  # how phased subsets are used: sequential | cumulative | union
    protocol: str = "ours"     # ours | authors

    def epochs_of(self, source):
        return source.epochs if source.epochs is not None else self.epoch_eval_train


def eval_epochs(total, points):
    """The global epochs (1-based) after which the test split is scored: `points` evenly spaced, the last = total."""
    return sorted({max(1, math.ceil(total * j / points)) for j in range(1, points + 1)})


@dataclass(frozen=True)
class PlannedEpoch:
    phase: int            # index of the source trained on
    epoch: int            # 1-based over the whole sequence
    lr_img: float         # the lrs this epoch trains with (drop included)
    lr_txt: float
    new_optimizer: bool   # a fresh SGD (momentum reset) before this epoch
    evaluate: bool        # score the test split after this epoch


def training_plan(sources, protocol):
    """Every epoch a student trains, in order, under `protocol` (see the module doc)."""
    if protocol.protocol == "authors":
        return _authors_plan(sources, protocol)
    total = sum(protocol.epochs_of(s) for s in sources)
    points, plan = set(eval_epochs(total, protocol.eval_points)), []
    for phase, source in enumerate(sources):
        epochs = protocol.epochs_of(source)
        for e in range(epochs):
            scale = 0.1 if protocol.lr_decay and epochs > 1 and e >= math.ceil(epochs / 2) else 1.0
            g = len(plan) + 1
            plan.append(PlannedEpoch(phase, g, source.lr_img * scale, source.lr_txt * scale, e == 0, g in points))
    return plan


def _authors_plan(sources, protocol):
    last, milestone, plan = sources[-1], protocol.epoch_eval_train // 2 + 1, []
    for phase, source in enumerate(sources):
        epochs = protocol.epochs_of(source)
        points = set(range(0, epochs + 1, max(epochs // 10, 1))) | {epochs}
        for e in range(epochs + 1):
            scale = 0.1 if protocol.lr_decay and len(plan) >= milestone else 1.0
            plan.append(PlannedEpoch(phase, len(plan) + 1, last.lr_img * scale, last.lr_txt * scale, not plan,
                                     e in points))
    return plan


def train_run(sources, net, test, protocol, seed, device, val=None, log=None, run=0, desc="eval"):
    """Train one fresh student on `sources` as training_plan says; returns its evaluation points and phases."""
    student = Student(net, protocol.loss_type)
    img, txt = (p.to(device).requires_grad_(True) for p in net.initial_params())
    generator = torch.Generator().manual_seed(seed)
    plan = training_plan(sources, protocol)
    points, trained, opt = [], [], None
    bar = tqdm(total=len(plan), desc=f"{desc} run {run}", leave=False)
    for step in plan:
        source = sources[step.phase]
        if len(trained) == step.phase:
            trained.append({"phase": step.phase, "name": source.name, "pairs": len(source),
                            "epochs": sum(s.phase == step.phase for s in plan), "lr_img": step.lr_img,
                            "lr_txt": step.lr_txt})
            if log:
                log.log({"event": "eval_phase", "run": run, **trained[-1]})
        if step.new_optimizer:
            opt = make_sgd(img, txt, step.lr_img, step.lr_txt, protocol.momentum, protocol.weight_decay)
        for group, lr in zip(opt.param_groups, (step.lr_img, step.lr_txt)):
            group["lr"] = lr
        sample = source.authors_batches if protocol.protocol == "authors" else source.batches
        loss = train_epoch(student, img, txt, opt, sample(protocol.batch_train, generator, device))
        bar.update(1)
        bar.set_postfix(phase=step.phase, loss=f"{loss:.4f}")
        if step.evaluate:
            points.append(_score(net, img, txt, test, val, device, step.epoch, step.phase, loss))
            if log:
                log.log({"event": "eval_point", "run": run, **_flat(points[-1])})
    bar.close()
    return points, trained


def _score(net, img, txt, test, val, device, epoch, phase, loss):
    point = {"epoch": epoch, "phase": phase, "train_loss": loss}
    for split, data in (("test", test), ("val", val)):
        if data is None:
            continue
        if torch.isfinite(img).all() and torch.isfinite(txt).all():
            point[split] = evaluate_retrieval(net, img, txt, data, device)
        else:  # a diverged student scores nothing (NaN scores would rank every query first)
            point[split] = {k: 0.0 for k in ALL_KEYS}
    return point


def _flat(point):
    out = {k: point[k] for k in ("epoch", "phase", "train_loss")}
    for split in ("test", "val"):
        out.update({f"{split}_{k}": v for k, v in point.get(split, {}).items()})
    return out


def summarize(runs_metrics):
    """{mean: {metric: x}, std: {metric: x}} over runs (population std, as the authors' np.std)."""
    keys = runs_metrics[0].keys()
    return {"mean": {k: float(np.mean([m[k] for m in runs_metrics])) for k in keys},
            "std": {k: float(np.std([m[k] for m in runs_metrics])) for k in keys}}


def _run_record(seed, points, trained, with_val):
    best = max(points, key=lambda p: p["test"]["r_mean"])
    record = {"seed": seed, "phases": trained, "points": points, "final": points[-1]["test"],
              "best": best["test"], "best_epoch": best["epoch"]}
    if with_val:
        chosen = max(points, key=lambda p: p["val"]["r_mean"])
        record.update(val_selected=chosen["test"], val_epoch=chosen["epoch"])
    return record


def evaluate_sequence(sources, factory, test, protocol, seed, device, val=None, log=None, desc="eval"):
    """Train `protocol.num_eval` fresh students (factory.build) on `sources` in order; a report dict.

    Run k uses eval_run_seed(seed, k) for its network, batch order and dropout; the caller's RNG state is
    left untouched, so a periodic evaluation does not perturb the run that calls it.
    """
    if not sources:
        raise ValueError("evaluate_sequence: no sources to train on")
    if protocol.select_on == "val" and val is None:
        raise ValueError("evaluate_sequence: select_on='val' needs the val split")
    if protocol.eval_mode not in EVAL_MODES or protocol.protocol not in PROTOCOLS:
        raise ValueError(f"evaluate_sequence: unknown eval mode {protocol.eval_mode!r} or protocol {protocol.protocol!r}")
    sources = arrange(sources, protocol.eval_mode)
    seeds = [eval_run_seed(seed, k) for k in range(protocol.num_eval)]
    runs = []
    for k in parallel.share(len(seeds)):  # under torchrun each rank trains its share of the students
        s = seeds[k]
        with seeded(s, device):  # dropout masks
            net = factory.build(seed=s, device=device)
            points, trained = train_run(sources, net, test, protocol, s, device, val, log, run=k, desc=desc)
        runs.append(_run_record(s, points, trained, val is not None))
    runs = parallel.gather(runs)
    report = {"protocol": asdict(protocol), "seeds": seeds, "phase_sequence": [p["name"] for p in runs[0]["phases"]],
              "phases": runs[0]["phases"], "eval_epochs": [p["epoch"] for p in runs[0]["points"]],
              "final": summarize([r["final"] for r in runs]),
              "best": summarize([r["best"] for r in runs]),
              "meaning": MEANING, "runs": runs}
    if val is not None:
        report["val_selected"] = summarize([r["val_selected"] for r in runs])
    report["reported"] = ("val_selected" if protocol.select_on == "val" else
                          "best" if protocol.protocol == "authors" else "final")
    return report


def headline(report):
    """The reported mean metrics (final epoch, or val-selected)."""
    return report[report["reported"]]["mean"]


ROWS = (("final", "final epoch"), ("val_selected", "val-selected"), ("best", "best on test"))
COLUMNS = (("IR@1", "img_r1"), ("IR@5", "img_r5"), ("IR@10", "img_r10"),
           ("TR@1", "txt_r1"), ("TR@5", "txt_r5"), ("TR@10", "txt_r10"), ("mean", "r_mean"))


def format_table(report, title=None):
    """IR@1/5/10, TR@1/5/10 and their mean as mean ± std, one row per selection; the reported row is starred."""
    label_width = max(len(label) for _, label in ROWS) + 2
    lines = [title] if title else []
    lines.append(" " * label_width + "".join(f"  {name:>14}" for name, _ in COLUMNS))
    for key, label in ROWS:
        if key not in report:
            continue
        mean, std = report[key]["mean"], report[key]["std"]
        star = "*" if key == report["reported"] else " "
        cells = "".join(f"  {mean[k]:6.2f} ± {std[k]:5.2f}" for _, k in COLUMNS)
        lines.append(f"{star}{label:<{label_width - 1}}{cells}")
    n = len(report["seeds"])
    if report["protocol"].get("protocol") == "authors":
        lines.append(f"(authors' protocol: * = {MEANING['authors']})")
    lines.append(f"(* reported; mean ± std over {n} run{'s' if n != 1 else ''}; eval points at epochs "
                 f"{report['eval_epochs']}; 'best on test': each run's best test r_mean over them, the paper's "
                 "convention, optimistic)")
    return "\n".join(lines)

