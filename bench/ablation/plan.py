"""What the ablation measures: the distillation runs, the rows they give, the dataset levels and budgets, and the
command lines of every step, built from the demo's recipe (recipes/synthetic_demo.yaml) with overrides."""
import re
from typing import NamedTuple

ENCODER, CROSS_ENCODER, TEXT = "convnet", "convnet_w32_d4_gn", "minilm"  # the recipe's encoders; the cross check's
RECIPE = "recipes/synthetic_demo.yaml"
NUM_EXPERTS = 2
# what each step changes in the recipe (the rest, e.g. the distillation's lrs and minibatches, is the recipe's)
EXPERTS = ["--config", RECIPE, "--num_experts", str(NUM_EXPERTS), "--eval_freq", "1"]
ITERATIONS = 100  # per phase, as the paper's recipes give each phase its own iteration count
DISTILL = ["--config", RECIPE, "--num_eval", "0", "--checkpoint_it", "25"]
EMA = 0.97  # the recipe's; runs without EMA override it with 0
PROTOCOL = ["--config", RECIPE, "--select_on", "val", "--seed", "0"]
SHORTCUT_PHASES = [("convexified_0_6", 0, 2), ("convexified_0_8", 1, 3)]
LATE = "convexified_0_11"  # `synthetic_hard`'s whole expert run (11 timestamps) as one shortcut window


BLEND = 1.0  # --blend of the RepBlend rows: lambda ~ Beta(1, 1), uniform, as RepBlend's released default; not tuned


class Run(NamedTuple):
    """A distillation run: phases as (trajectory, min start, max start); split: the first phase's share of N;
    ema: --ema_decay; blend: --blend; heads: symmetric heads (experts, distillation and evaluation on the frozen
    exported encoder); lrs: (flag, value) pairs overriding the recipe's distillation lrs."""
    phases: list
    ema: float = 0.0
    conditioning: str = "none"
    matching: str = "constant"
    split: float = 0.5
    blend: float = 0.0
    heads: bool = False
    lrs: tuple = ()


RUNS = {"normal": Run([("normal", 0, 2)], ema=EMA),
        "phased": Run([("normal", 0, 2), ("normal", 1, 3)]),
        "shortcut": Run(SHORTCUT_PHASES[:1]),
        "phased_shortcut": Run(SHORTCUT_PHASES, ema=EMA),
        "conditioned": Run(SHORTCUT_PHASES, ema=EMA, conditioning="cumulative"),
        "shortcut_exact": Run(SHORTCUT_PHASES[:1], matching="adjoint"),
        "conditioned_exact": Run(SHORTCUT_PHASES, ema=EMA, conditioning="cumulative", matching="adjoint")}
# the levers of `synthetic_hard`: start windows on LATE where its experts still improve, the same windows as
# one phase (at the full budget), and the budget split between two conditioned phases: (starts, first share)
LEVERS = [([(0, 3)], 1), ([(3, 6)], 1), ([(0, 6)], 1), ([(0, 3), (3, 6)], 0.5), ([(0, 3), (6, 9)], 0.5),
          ([(0, 3), (3, 6)], 0.4), ([(0, 3), (3, 6)], 0.6)]


def _lever(starts, split):
    """(run name, row label) of a lever: e.g. late_0-3_3-6_20+30, 'late [0,3) then [3,6), 20+30 of 50'."""
    name = "late_" + "_".join(f"{lo}-{hi}" for lo, hi in starts)
    label = "late " + " then ".join(f"[{lo},{hi})" for lo, hi in starts)
    if split != 0.5 and len(starts) > 1:
        name += f"_{round(100 * split)}+{round(100 * (1 - split))}"
        label += f", split {round(100 * split)}/{round(100 * (1 - split))}"
    return name, label


for starts, split in LEVERS:
    name, _ = _lever(starts, split)
    RUNS[name] = Run([(LATE, lo, hi) for lo, hi in starts], ema=EMA, split=split,
                     conditioning="cumulative" if len(starts) > 1 else "none")
# ablation rows: (name, run, files). The EMA never feeds back into the optimisation, so a run with EMA
# also yields the row without it: its distilled_<p>_final_raw.pt files.
ROWS = [("BASE", "normal", "final_raw"), ("EMA", "normal", "final"), ("PTM", "phased", "final"),
        ("ST", "shortcut", "final"), ("PTM+ST", "phased_shortcut", "final_raw"),
        ("PTM+ST+EMA", "phased_shortcut", "final"), ("PTM+ST, conditioned", "conditioned", "final_raw"),
        ("PTM+ST+EMA, conditioned", "conditioned", "final"), ("ST, exact gradient", "shortcut_exact", "final"),
        ("PTM+ST+EMA, conditioned, exact gradient", "conditioned_exact", "final")]
for starts, split in LEVERS:
    name, label = _lever(starts, split)
    kind = "PTM+ST{}, conditioned" if len(starts) > 1 else "ST{}"
    ROWS += [(f"{kind.format('')}, {label}", name, "final_raw"), (f"{kind.format('+EMA')}, {label}", name, "final")]
for split in (0.6, 0.4):  # the budget split between the standard windows' conditioned phases
    tag = f"{round(100 * split)}/{round(100 * (1 - split))}"
    RUNS[f"conditioned_{tag.replace('/', '+')}"] = RUNS["conditioned"]._replace(split=split)
    ROWS += [(f"PTM+ST, conditioned, split {tag}", f"conditioned_{tag.replace('/', '+')}", "final_raw"),
             (f"PTM+ST+EMA, conditioned, split {tag}", f"conditioned_{tag.replace('/', '+')}", "final")]
# a control on `synthetic`: two conditioned phases on the same start window, so the budget split is there and the
# later teacher is not; it tells which of the two costs the phased rows their points
RUNS["conditioned_same"] = RUNS["conditioned"]._replace(phases=[SHORTCUT_PHASES[0]] * 2)
CONTROL_ROWS = ["PTM+ST, conditioned, both phases [0,2)", "PTM+ST+EMA, conditioned, both phases [0,2)"]
ROWS += [(CONTROL_ROWS[0], "conditioned_same", "final_raw"), (CONTROL_ROWS[1], "conditioned_same", "final")]
# RepBlend's two ideas (issue 22) on the PTM+ST+EMA run, and on ST alone
RUNS["blend"] = RUNS["phased_shortcut"]._replace(blend=BLEND)
RUNS["heads"] = RUNS["phased_shortcut"]._replace(heads=True)
RUNS["heads_blend"] = RUNS["phased_shortcut"]._replace(heads=True, blend=BLEND)
RUNS["shortcut_heads_blend"] = RUNS["shortcut"]._replace(heads=True, blend=BLEND)
RUNS["shortcut_exact_blend"] = RUNS["shortcut_exact"]._replace(blend=BLEND)  # on the bar's own row
RUNS["shortcut_exact_heads_blend"] = RUNS["shortcut_exact"]._replace(heads=True, blend=BLEND)
RUNS["shortcut_exact_blend_weak"] = RUNS["shortcut_exact"]._replace(blend=0.2)  # lambda mostly near 0 or 1
REPBLEND_ROWS = ["PTM+ST+EMA, blending", "PTM+ST+EMA, symmetric heads", "PTM+ST+EMA, symmetric heads, blending",
                 "ST, symmetric heads, blending", "ST, exact gradient, blending",
                 "ST, exact gradient, symmetric heads, blending", "ST, exact gradient, blending 0.2"]
ROWS += [(label, run, "final") for label, run in zip(REPBLEND_ROWS, ("blend", "heads", "heads_blend",
                                                                     "shortcut_heads_blend", "shortcut_exact_blend",
                                                                     "shortcut_exact_heads_blend",
                                                                     "shortcut_exact_blend_weak"))]
# the paper's own 100-pair recipe (recipes/flickr_100.yaml): one phase of 99 pairs on the first window, EMA 0.99
RUNS["paper_100"] = RUNS["shortcut"]._replace(ema=0.99)
PAPER_100 = "ST+EMA, the paper's 100-pair recipe (99 pairs, EMA 0.99)"
ROWS.append((PAPER_100, "paper_100", "final"))
# the distillation lrs chosen on `synthetic_paper`'s val split (issue 21): the recipe's image and text lrs (chosen
# at N <= 50 on `synthetic`) against 0.3x of them, on ST and on the phased row val picked at N = 200
LOWER_LRS = (("lr_img", 30), ("lr_txt", 3))
RUNS["shortcut_lr0.3"] = RUNS["shortcut"]._replace(lrs=LOWER_LRS)
RUNS["conditioned_lr0.3"] = RUNS["conditioned"]._replace(lrs=LOWER_LRS)
LR_ROWS = ["ST, lr_img 30, lr_txt 3", "PTM+ST+EMA, conditioned, lr_img 30, lr_txt 3"]
ROWS += [(LR_ROWS[0], "shortcut_lr0.3", "final"), (LR_ROWS[1], "conditioned_lr0.3", "final")]
LEVER_ROWS = [r[0] for r in ROWS if r[1].startswith("late_") or "split" in r[0]]
STANDARD = [r[0] for r in ROWS if r[0] not in ["PTM", PAPER_100] + LR_ROWS + LEVER_ROWS + CONTROL_ROWS + REPBLEND_ROWS]
# the paper's regime (issue 21): its budgets, each phased budget split as its recipes split it, the rows in priority
# order (the baselines always run), 2,000 iterations per phase unless --iterations says otherwise
PAPER_ROWS = ["ST", "PTM+ST+EMA", "PTM+ST", "PTM+ST, conditioned", "PTM+ST+EMA, conditioned", "ST, exact gradient",
              "PTM+ST+EMA, conditioned, exact gradient"]
# dataset levels: expert epochs, shortcut windows, budgets, the rows run at each budget; optional: iterations per
# phase (default ITERATIONS) and the phases' pair counts per budget (default: halves; one phase: their sum)
LEVELS = {"synthetic": {"epochs": 8, "windows": [(0, 6), (0, 8)],
                        "sizes": {50: STANDARD + CONTROL_ROWS + REPBLEND_ROWS, 20: STANDARD + REPBLEND_ROWS[:4]}},
          "synthetic_hard": {"epochs": 10, "windows": [(0, 6), (0, 8), (0, 11)],
                             "sizes": {50: ["BASE", "EMA", "ST", "PTM+ST", "PTM+ST+EMA", "PTM+ST, conditioned",
                                            "PTM+ST+EMA, conditioned", *LEVER_ROWS, *REPBLEND_ROWS[:4]]}},
          "synthetic_paper": {"epochs": 10, "windows": [(0, 6), (0, 8)],
                              "sizes": {500: PAPER_ROWS + REPBLEND_ROWS[:4], 200: PAPER_ROWS + REPBLEND_ROWS[:4] + LR_ROWS,
                                        99: [PAPER_100]},
                              "iterations": 2000, "phase_sizes": {200: (99, 100), 500: (200, 299)}}}
AUTHORS_ROWS = ("PTM+ST+EMA", "PTM+ST+EMA, conditioned")  # also evaluated under --protocol authors (`synthetic`)
CROSS_SIZE = 50  # the cross-architecture check runs at this budget


def level_iterations(level):
    """The level's distillation iterations per phase (what --iterations overrides)."""
    return LEVELS[level].get("iterations", ITERATIONS)


def phase_sizes(level, run, n):
    """The pair count of each phase of `run` at budget n: the level's split, or `run`'s share; one phase: all."""
    phases, split = RUNS[run].phases, RUNS[run].split
    given = LEVELS[level].get("phase_sizes", {}).get(n)
    if given:
        return [sum(given)] if len(phases) == 1 else list(given)
    return [n] if len(phases) == 1 else [round(n * split), n - round(n * split)]


def row(name):
    """(name, run, files) of a row."""
    return next(r for r in ROWS if r[0] == name)


def run_of(name):
    return RUNS[row(name)[1]]


def modes(name):
    """The eval modes a phased row is meant for, one picked on val: the paper's sequential or the union for
    subsets distilled alone; the cumulative training they were distilled for or the union for conditioned ones."""
    return ("cumulative", "union") if run_of(name).conditioning == "cumulative" else ("sequential", "union")


def heads(name):
    return run_of(name).heads


def phased(name):
    return len(run_of(name).phases) > 1


def slug(name):
    return re.sub(r"[^A-Za-z0-9+.=@-]+", "_", name).strip("_")
