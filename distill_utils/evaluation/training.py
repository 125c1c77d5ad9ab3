"""Evaluation students (SPEC section 6): the epochs a student trains through, and the runs that train them.

`evaluate_sequence` trains `num_eval` students on pair sources (sources.py), with the one training step of
`method/student.py`, each as `training_plan` says, and reports mean and std over the runs (summary.py).

Protocols: `ours` gives each phase a fresh SGD with its source's lrs (momentum 0.9, weight decay
5e-4); with `lr_decay` the lrs drop x0.1 for the second half of each phase's epochs. `authors`
follows the authors' code (LoRS `evaluate_synset_with_similarity`, called once per subset on one
network): one SGD for the whole sequence with the last subset's lrs, one x0.1 drop after global
epoch epoch_eval_train//2+1, epoch_eval_train+1 epochs per subset, each batch the first
batch_train pairs of a fresh permutation (ceil(N / batch_train) batches an epoch), test scored after
local epochs 0, E//10, 2E//10, ..., E of every phase, reporting the best of all those points.
"""
import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple

import torch
from tqdm import tqdm

from distill_utils import parallel
from distill_utils.evaluation.sources import EVAL_MODES, Source, arrange
from distill_utils.evaluation.summary import ALL_KEYS, MEANING, run_record, summarize
from distill_utils.rng import eval_run_seed, seeded
from distill_utils.files.run_log import RunLog
from distill_utils.method.student import RetrievalData, Student, evaluate_retrieval, make_sgd, train_epoch
from networks.dual_encoder import DualEncoder, NetworkFactory

if TYPE_CHECKING:  # config.py imports the settings table, which imports this module's constants
    from distill_utils.config import EvalProtocol

PROTOCOLS = ("ours", "authors")


def eval_epochs(total: int, points: int) -> List[int]:
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


def training_plan(sources: Sequence[Source], protocol: "EvalProtocol") -> List[PlannedEpoch]:
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


def train_run(sources: Sequence[Source], net: DualEncoder, test: RetrievalData, protocol: "EvalProtocol", seed: int,
              device: torch.device, val: Optional[RetrievalData] = None, log: Optional[RunLog] = None, run: int = 0,
              desc: str = "eval") -> Tuple[List[dict], List[dict]]:
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


def evaluate_sequence(sources: Sequence[Source], factory: NetworkFactory, test: RetrievalData, protocol: "EvalProtocol",
                      seed: int, device: torch.device, val: Optional[RetrievalData] = None,
                      log: Optional[RunLog] = None, desc: str = "eval") -> dict:
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
        runs.append(run_record(s, points, trained, val is not None))
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
