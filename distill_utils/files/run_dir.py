"""A distillation run directory, <runs_dir>/<dataset>/<name>/, and everything in it: config.json (the run's
settings), metrics.jsonl, the saved subsets with their pictures and captions, and checkpoint.pt, from which
--resume continues a killed run so that it ends exactly where an uninterrupted one would."""
import json
import os
from typing import TYPE_CHECKING, Optional

import torch

from common.errors import UserError, one_line
from common.io import atomic_path, ensure_writable_dir, load_json_object, load_torch, save_json, save_torch
from distill_utils import parallel
from distill_utils.files.pictures import save_captions, save_image_grid
from distill_utils.files.run_log import RunLog, read_records
from distill_utils.files.subset_file import DistilledSubset, load_subset, save_subset
from distill_utils.rng import rng_state, set_rng_state

if TYPE_CHECKING:  # named in hints only
    from distill_utils.datasets.loading import TrainData
    from distill_utils.files.expert_stream import ExpertStream
    from distill_utils.method.learnable_set import SyntheticSet
    from distill_utils.phases import Phase

CONFIG, LOG, CHECKPOINT = "config.json", "metrics.jsonl", "checkpoint.pt"
# Options that may change when a run is resumed: they do not alter its result.
RESUMABLE_CHANGES = {"resume", "device", "wandb", "workers", "feature_cache", "adjoint_store",
                     "constant_store"}
CHECKPOINT_KEYS = {"phase": int, "iteration": int, "syn": dict, "experts": dict, "generator": torch.Tensor,
                   "rng": torch.Tensor}


class RunDir:
    """Owns one run directory; `open` checks it, `start` claims it, then the run saves, logs and checkpoints
    through it. Under torchrun every rank opens it and reads from it, rank 0 alone writes (`writer`)."""

    def __init__(self, path: str, name: str, config: dict, resume: bool):
        self.path, self.name, self.config, self.resume = path, name, config, resume
        self.last_save = None  # the newest saved subset: named when the run stops on a non-finite value
        self._log = None
        self.writer = parallel.is_main()

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    @classmethod
    def open(cls, runs_dir: str, dataset: str, name: str, config: dict, resume: bool, defaults: dict) -> "RunDir":
        """A new run, or with `resume` one started with the same `config` (settings missing from its config.json
        were added since: the run ran with their `defaults`). Nothing is written here: config.json only once the
        run can start (`start`), so a failed start blocks nothing."""
        run = cls(os.path.join(runs_dir, dataset, name), name, config, resume)
        config_path = run.file(CONFIG)
        if resume and not os.path.isfile(config_path):
            if not os.path.isdir(run.path) or [f for f in os.listdir(run.path) if not f.startswith(".")]:
                raise UserError(f"--resume: {run.path} holds no run to continue (no config.json)")
            print(f"--resume: {run.path} was stopped before its run started; starting it")
            run.resume = False  # a kill during start-up left an empty directory: nothing to continue
            run.config = {**config, "resume": False}
        if run.resume:
            saved = {**defaults, **load_json_object(config_path, what="run config")}
            changed = [k for k in config if k not in RESUMABLE_CHANGES and saved.get(k) != config[k]]
            if changed:
                k = changed[0]
                raise UserError(f"--resume: --{k} was {saved.get(k)!r} in {run.path}, now {config[k]!r}; "
                                "resume with the same settings")
        elif os.path.exists(config_path):
            raise UserError(f"--name {name}: {run.path} exists; pass --resume to continue it or choose another --name")
        if run.writer:
            ensure_writable_dir(run.path, "--runs_dir")
        return run

    def start(self, checkpoint: Optional[dict], wandb: str = "disabled") -> None:
        """The run can start: from here on the directory is this run's. A new run writes config.json; a resumed
        one drops the log records written after its checkpoint (all of them without one)."""
        if self.writer and self.resume:
            self.truncate_log(*((checkpoint["phase"], checkpoint["iteration"]) if checkpoint else (-1, -1)))
        elif self.writer:
            save_json(self.config, self.file(CONFIG))
        self._log = RunLog(self.path, self.config, wandb, name=self.name)

    def log(self, record: dict, echo: Optional[str] = None) -> None:
        self._log.log(record, echo=echo)

    def close(self) -> None:
        self._log.close()

    def truncate_log(self, phase: int, iteration: int) -> None:
        """Drop the records written after (phase, iteration) and any line a kill tore: the resumed run writes
        them again."""
        path = self.file(LOG)
        if not os.path.isfile(path):
            return
        keep = [r for r in read_records(path) if (r.get("phase", -1), r.get("iteration", -1)) <= (phase, iteration)]
        with atomic_path(path) as tmp, open(tmp, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in keep)

    # --- subsets ---

    def save_subset(self, subset: DistilledSubset, stem: str, train: "TrainData") -> str:
        """distilled_<stem>.pt with images_<stem>.png and captions_<stem>.txt (the nearest real caption of each
        synthetic text); returns the .pt path."""
        path = self.file(f"distilled_{stem}.pt")
        if self.writer:
            save_subset(subset, path)
            save_image_grid(subset.image, self.file(f"images_{stem}.png"))
            save_captions(subset.text, train.text_features, train.pairs.captions, self.file(f"captions_{stem}.txt"))
        self.last_save = path
        return path

    def save_final(self, phase_index: int, final: DistilledSubset, raw: Optional[DistilledSubset] = None) -> None:
        """distilled_<p>_final.pt (the EMA subset) and, when given, distilled_<p>_final_raw.pt (without EMA)."""
        if not self.writer:
            return
        save_subset(final, self.file(f"distilled_{phase_index}_final.pt"))
        if raw is not None:
            save_subset(raw, self.file(f"distilled_{phase_index}_final_raw.pt"))

    def load_final(self, phase_index: int) -> DistilledSubset:
        return load_subset(self.file(f"distilled_{phase_index}_final.pt"))

    # --- checkpoints ---

    def write_checkpoint(self, phase_index: int, iteration: int, states: dict, device: torch.device) -> None:
        """`states`: the state dicts of what the phase continues from (syn, experts, amp_guard, generator); the
        global RNG states are added here."""
        if not self.writer:
            return
        rng, cuda_rng = rng_state(device)
        save_torch({"phase": phase_index, "iteration": iteration, **states, "rng": rng, "cuda_rng": cuda_rng,
                    "last_save": self.last_save}, self.file(CHECKPOINT))

    def read_checkpoint(self, num_phases: int) -> Optional[dict]:
        """The checkpoint of a resumed run (None for a new run or if there is none), refused in one line if it is
        not one of ours or lies beyond the run's phases."""
        path = self.file(CHECKPOINT)
        if not self.resume or not os.path.isfile(path):
            return None
        ckpt = load_torch(path, what="checkpoint")
        if not (isinstance(ckpt, dict) and all(isinstance(ckpt.get(k), t) for k, t in CHECKPOINT_KEYS.items())
                and isinstance(ckpt["syn"].get("tensors"), list)
                and all(torch.is_tensor(v) for v in ckpt["syn"]["tensors"])
                and all(isinstance(ckpt["experts"].get(k), int) for k in ("pass_idx", "file_pos", "expert_pos"))):
            raise UserError(f"checkpoint {path}: not a checkpoint of this program (expected phase, iteration, syn, "
                            "experts and RNG states); move it away to restart the run")
        if not all(torch.isfinite(v).all() for v in ckpt["syn"]["tensors"]):
            raise UserError(f"checkpoint {path}: holds NaN or inf values; move it away to restart the run")
        if not 0 <= ckpt["phase"] < num_phases:
            raise UserError(f"--resume: {path} is in phase {ckpt['phase']}, this run has phases "
                            f"0..{num_phases - 1}; move it away to restart the run")
        return ckpt

    def restore(self, ckpt: dict, phase: "Phase", syn: "SyntheticSet", stream: "ExpertStream",
                generator: torch.Generator, device: torch.device) -> int:
        """Continue phase `phase` from `ckpt`: the subset, the expert stream, the generator and the global RNGs.
        A checkpoint that does not fit the phase's subset is refused, never half-loaded. Returns its iteration."""
        where = f"checkpoint {self.file(CHECKPOINT)}"
        saved = ckpt["syn"]["tensors"]
        if [tuple(t.shape) for t in saved] != [tuple(t.shape) for t in syn.tensors()] or \
                not 0 <= ckpt["iteration"] <= phase.iterations:
            raise UserError(f"{where}: does not fit phase {phase.index} of this run (iteration {ckpt['iteration']} "
                            f"of {phase.iterations}, {len(saved)} tensors); move it away to restart the run")
        try:
            syn.load_state_dict(ckpt["syn"])
            stream.load_state_dict(ckpt["experts"])
            generator.set_state(ckpt["generator"])
            set_rng_state((ckpt["rng"], ckpt.get("cuda_rng")), device)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as err:
            raise UserError(f"{where}: damaged ({one_line(err)[:160]}); move it away to restart the run") from None
        self.last_save = ckpt.get("last_save")
        return ckpt["iteration"]
