"""The command line of the entry scripts: the Setting a flag is declared with (the declarations themselves are the
table of settings.py), the parser built from them, the checks a value must pass, and the dataset-dependent defaults."""
import argparse
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, NoReturn, Optional, Sequence

import torch

from distill_utils.datasets.annotations import LEVEL_SIZES, SYNTHETIC_LEVELS, default_roots
from common.errors import UserError


class Parser(argparse.ArgumentParser):
    """argparse with its errors in one line (no usage block): `error: argument --flag: what was expected`. While
    `where` names a recipe file, an error is a UserError naming it."""

    def __init__(self, **kwargs):
        super().__init__(formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
        self.where = None

    def error(self, message: str) -> NoReturn:
        if self.where:
            raise UserError(f"{self.where}: {message}")
        self.exit(2, f"error: {message} (see --help)\n")


@dataclass(frozen=True)
class Setting:
    """One flag, --<name>: its default, help, the scripts that take it, the --help group it is listed under and the
    check every value must pass (`check`: positive | non_negative | fraction | seed | image_side; `at_most`: a
    bound). The flags of a script that share a `one_of` name are mutually exclusive (with `required`: one of them
    must be given; a script that takes only one of them takes it as a plain flag)."""
    name: str
    default: Any
    help: str
    scripts: tuple
    group: str
    type: Optional[Callable] = None  # bool: a --name / --no-name switch
    choices: Optional[Sequence] = None
    nargs: Optional[str] = None
    const: Any = None  # the value of a bare --name, with nargs="?"
    check: Optional[str] = None
    at_most: Optional[int] = None
    required: bool = False
    metavar: Optional[str] = None
    one_of: Optional[str] = None

    @property
    def switch(self) -> bool:
        return self.type is bool

    def add_to(self, group: argparse._ArgumentGroup, exclusive: bool = False) -> None:
        """Add the flag to `group` (`exclusive`: a mutually exclusive group, which says whether it is required)."""
        shown = " ".join(map(str, self.default)) if isinstance(self.default, list) else self.default
        hidden = shown is None or shown is False or shown == ""  # no default worth printing (0 is one)
        text = self.help + ("" if hidden else f" (default: {'on' if shown is True else shown})")
        text = text.replace("%", "%%")  # argparse formats help with %
        if self.switch:
            group.add_argument(f"--{self.name}", action=argparse.BooleanOptionalAction, default=self.default, help=text)
            return
        extra = {k: v for k, v in (("type", self.type), ("choices", self.choices), ("nargs", self.nargs),
                                   ("const", self.const), ("metavar", self.metavar)) if v is not None}
        group.add_argument(f"--{self.name}", default=self.default, help=text, required=self.required and not exclusive,
                           **extra)

    def validate(self, args: argparse.Namespace) -> None:
        if self.check:
            CHECKS[self.check](args, self.name)
        if self.at_most is not None:
            at_most(args, **{self.name: self.at_most})


def add_settings(p: argparse.ArgumentParser, table: Sequence[Setting], script: str) -> None:
    """Add every Setting of `table` that names `script` to `p`, listed under its group."""
    own = [s for s in table if script in s.scripts]
    groups, exclusive = {}, {}
    for s in own:
        if s.group not in groups:
            groups[s.group] = p.add_argument_group(s.group)
        if s.one_of is None or sum(t.one_of == s.one_of for t in own) == 1:
            s.add_to(groups[s.group])
            continue
        if s.one_of not in exclusive:
            exclusive[s.one_of] = groups[s.group].add_mutually_exclusive_group(required=s.required)
        s.add_to(exclusive[s.one_of], exclusive=True)


def build_parser(table: Sequence[Setting], script: str, description: Optional[str]) -> Parser:
    """The parser of `script`: every Setting of `table` that names it, listed under its group."""
    p = Parser(description=description)
    add_settings(p, table, script)
    return p


def config_of(args: argparse.Namespace) -> dict:
    """The resolved settings as a JSON-able dict (config.json, --out, W&B): what a recipe gave is in them, so the
    recipe file itself (--config) is left out."""
    return {k: (str(v) if k == "device" else v) for k, v in vars(args).items() if k != "config"}


SEED_LIMIT = 2**32  # the seeds distill_utils/rng.py derives (seed * 100003 + n, ...) stay within torch's 64-bit range


def _values(args, name):
    value = getattr(args, name)
    return [] if value is None else value if isinstance(value, list) else [value]


def positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        for value in _values(args, name):
            if not (math.isfinite(value) and value > 0):
                raise UserError(f"--{name} {value}: expected a finite positive number")


def non_negative(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        for value in _values(args, name):
            if not (math.isfinite(value) and value >= 0):
                raise UserError(f"--{name} {value}: expected a finite number, 0 or more")


INT_LIMIT = 2**31  # no count, size or epoch of a run comes near; beyond it torch overflows with a traceback


def all_finite(args: argparse.Namespace) -> None:
    """Refuse NaN or inf in any numeric flag (argparse's float() accepts 'nan' and 'inf'), and integers that
    overflow torch's 64-bit arithmetic."""
    for name in vars(args):
        for value in _values(args, name):
            if isinstance(value, float) and not math.isfinite(value):
                raise UserError(f"--{name} {value}: expected a finite number")
            if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= INT_LIMIT \
                    and "seed" not in name:
                raise UserError(f"--{name} {value}: expected a number below 2**31")


def at_most(args: argparse.Namespace, **limits: float) -> None:
    for name, limit in limits.items():
        for value in _values(args, name):
            if value > limit:
                raise UserError(f"--{name} {value}: expected at most {limit}")


def fraction(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        for value in _values(args, name):
            if not 0 <= value < 1:
                raise UserError(f"--{name} {value}: expected a number in [0, 1)")


def check_seed(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        for value in _values(args, name):
            if not 0 <= value < SEED_LIMIT:
                raise UserError(f"--{name} {value}: expected an integer in [0, 2**32)")


def image_side(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        for value in _values(args, name):
            if not 16 <= value <= 4096:
                raise UserError(f"--{name} {value}: expected an image side from 16 to 4096 pixels")


CHECKS = {"positive": positive, "non_negative": non_negative, "fraction": fraction, "seed": check_seed,
          "image_side": image_side}


def check_run_name(name: str, flag: str = "--name") -> str:
    """A run name is one directory level: no separators, no '..', so it stays inside --runs_dir."""
    if not re.fullmatch(r"[A-Za-z0-9_.+=@-]+", name) or name in (".", ".."):
        raise UserError(f"{flag} {name!r}: expected a plain directory name (letters, digits, _.+=@-; no '/' or '..')")
    return name


def not_a_file(path: Optional[str], flag: str) -> None:
    if path and os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{flag} {path}: is a file, expected a directory")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    return device


def _fill(args: argparse.Namespace, **defaults: Any) -> None:
    """Give each of these settings the script takes and was not given its default."""
    for name, value in defaults.items():
        if hasattr(args, name) and getattr(args, name) in (None, ""):
            setattr(args, name, value)


def finalize(args: argparse.Namespace, settings: Iterable[Setting] = ()) -> argparse.Namespace:
    """Fill the dataset-dependent defaults, then check every value: finite, and as its Setting in `settings` says."""
    if hasattr(args, "dataset"):
        synthetic = args.dataset in SYNTHETIC_LEVELS
        image_root, ann_root = default_roots(args.dataset)
        _fill(args, ann_root=ann_root)
        _fill(args, image_root=args.ann_root if synthetic else image_root, image_size=32 if synthetic else 224,
              text_encoder="minilm" if synthetic else "bert", image_encoder="convnet" if synthetic else "nfnet")
        train_images, test_images = LEVEL_SIZES.get(args.dataset, LEVEL_SIZES["synthetic"])
        _fill(args, synthetic_train_images=train_images, synthetic_test_images=test_images)
    all_finite(args)
    for setting in settings:
        setting.validate(args)
    if hasattr(args, "feature_cache"):
        not_a_file(args.feature_cache, "--feature_cache")
    if hasattr(args, "device"):
        args.device = resolve_device(args.device)
    return args
