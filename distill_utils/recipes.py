"""Run recipes (--config FILE): a run's settings in one YAML file, as timm's and torchtune's configs are.

Keys are the flag names of settings.py. Settings at the top level are shared: each script takes those it has
(a key no script has is refused). A script's own settings go under its name (`buffer:`, `distill:`,
`evaluate:`) and override the shared ones. In place of the five list flags, `phases` (distill) is a list of
records, one per phase: {buffer_path, min_start_epoch, max_start_epoch, num_queries, iterations[, sim_rank]}.

A recipe is read as the command line it stands for, placed before the real one: flags given on the command
line override it, and the same values give the same run bit for bit. A run's config.json (the resolved
settings) is itself a recipe.
"""
from typing import Any

import yaml

from common.errors import UserError, one_line
from distill_utils.phases import lists_from_records

SECTIONS = ("buffer", "distill", "evaluate")


def load(path: str) -> dict:
    """The recipe in `path` as a dict, refused in one line if it cannot be read or is not a mapping."""
    try:
        with open(path) as f:
            recipe = yaml.safe_load(f)
    except OSError as err:
        raise UserError(f"--config {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise UserError(f"--config {path}: not valid YAML ({one_line(err)})") from None
    if recipe is None:
        return {}
    if not isinstance(recipe, dict):
        raise UserError(f"--config {path}: expected a mapping of setting names to values")
    return recipe


def values_for(recipe: dict, script: str, names: dict, where: str) -> dict:
    """{setting: value} of `script` in `recipe`: the shared ones it has, then its section over them.

    `names`: {script: the names of its settings} for every script a recipe has a section for."""
    names = {sc: set(ns) | ({"phases"} if sc == "distill" else set()) for sc, ns in names.items()}
    known = set().union(*names.values())
    for key in recipe:
        if key not in SECTIONS and key not in known:
            raise UserError(f"{where}: unknown setting {key!r} (the keys are the scripts' flag names)")
    for section in SECTIONS:
        values = recipe.get(section) or {}
        if not isinstance(values, dict):
            raise UserError(f"{where}: {section}: expected a mapping of setting names to values")
        for key in values:
            if key not in names[section]:
                raise UserError(f"{where}: {section}: {key!r} is not a setting of this script (see its --help)")
    shared = {k: v for k, v in recipe.items() if k in names[script]}
    return {**shared, **(recipe.get(script) or {})}


def to_argv(values: dict, own: dict, where: str) -> list:
    """The command line `values` stand for ({setting: value}; `own`: the script's Settings by name)."""
    values = dict(values)
    if "phases" in values:
        lists = lists_from_records(values.pop("phases"), where)
        both = [k for k in lists if k in values]
        if both:
            raise UserError(f"{where}: phases are given both as records (phases) and as --{both[0]}; keep one")
        values.update(lists)
    argv = []
    for name, value in values.items():
        if name == "config":
            raise UserError(f"{where}: a recipe cannot name another recipe (config)")
        argv += _tokens(own[name], value, where)
    return argv


def _tokens(setting, value: Any, where: str) -> list:
    name = setting.name
    if value is None or value == []:
        return []
    if setting.switch:
        if not isinstance(value, bool):
            raise UserError(f"{where}: {name}: expected true or false, got {value!r}")
        return [f"--{name}" if value else f"--no-{name}"]
    if setting.nargs:
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, (list, dict)) for v in values):
            raise UserError(f"{where}: {name}: expected a list of values, got {value!r}")
        return [f"--{name}", *map(str, values)]
    if isinstance(value, (list, dict)):
        raise UserError(f"{where}: {name}: expected one value, got {value!r}")
    return [f"--{name}={value}"]
