"""Every flag of the entry scripts, declared once, in TABLE: its name (as in the paper's scripts), default, help,
the scripts that take it, its --help group and the check its values must pass. A new flag goes here.

From the table come each script's parser (`parser`), the parsing of a command line with its recipe (`parse_args`,
--config FILE: recipes.py) and the defaults of the typed settings in config.py (`with_defaults`). Two settings
may share a flag name in different scripts when they mean different things (--buffer_path: the buffers' root in
buffer.py, each phase's expert directory in distillation, the prototype baseline's experts in evaluate.py).
Each subcommand of prepare_data.py is a script of the table (prepare_<command>; `command_parser`).
"""
import argparse
import sys
from typing import Callable, Dict, Optional, Sequence, Tuple

from distill_utils import recipes
from distill_utils.cli_args import Parser, Setting as S, add_settings, build_parser, finalize
from distill_utils.datasets.annotations import LAYOUTS, REAL_DATASETS
from distill_utils.evaluation.coresets import BASELINES
from distill_utils.evaluation.sources import EVAL_MODES
from distill_utils.evaluation.summary import SELECTIONS
from distill_utils.evaluation.training import PROTOCOLS
from distill_utils.method.conditioning import CONDITIONING
from distill_utils.method.losses import LOSS_TYPES
from distill_utils.method.matching import CONSTANT_STORES, MATCHING, STORES
from distill_utils.paper_recipe import SIZES
from distill_utils.speed import AMP_DTYPES

BUFFER, CONVEXIFY, DISTILL, EVALUATE = "buffer", "convexify", "distill", "evaluate"
TRAINING = (BUFFER, DISTILL, EVALUATE)  # the scripts that train networks on a dataset
EVALUATING = (DISTILL, EVALUATE)  # the scripts that evaluate distilled data
# prepare_data.py's subcommands
PREPARE_FLICKR, PREPARE_COCO, PREPARE_CC3M = CONVERT = ("prepare_flickr", "prepare_coco", "prepare_cc3m")
PREPARE_CACHE, PREPARE_BUFFERS, PREPARE_CHECK = "prepare_cache", "prepare_buffers", "prepare_check"
PREPARE_ENCODER = "prepare_encoder"
READING = TRAINING + (PREPARE_CACHE, PREPARE_CHECK)  # the scripts that read a dataset
RECIPE, DATA, NETWORK, TRAIN = "recipe", "data", "network", "training (experts and students)"
EXPERTS, PHASES, DISTILLATION = "experts", "phases (one value per phase)", "distillation"
TARGETS, PROTOCOL, SAVING = "what to evaluate", "evaluation protocol", "saving and resuming"
RUNTIME, SPEED, WINDOW = "runtime", "speed", "shortcut window"
SOURCES, OUTPUT, PUBLISHED, PAPER = "the distributed files", "output", "the published files", "the paper's recipe"
ENCODER = "the exported image encoder"

TABLE = [
    S("config", None, "a recipe: a YAML file of these settings (keys: the flag names; `phases` as a list of records; "
      "shared settings at the top, a script's own under buffer:, distill: or evaluate:); flags given on the command "
      "line override it (recipes/, distill_utils/recipes.py)", TRAINING, RECIPE, metavar="FILE"),
    # data
    S("dataset", "synthetic", "dataset (synthetic: the built-in one; synthetic_hard: its harder level, two shapes "
      "per image; synthetic_paper: two textured shapes per image, 20,000 train pairs, the paper's ratios)", READING,
      DATA, choices=list(LAYOUTS)),
    S("dataset", None, "whose published buffers and annotations", (PREPARE_BUFFERS,), DATA, choices=REAL_DATASETS,
      required=True),
    S("image_root", None, "image directory (default: data/synthetic, or distill_utils/data/<Flickr30k|COCO|CC3M>)",
      READING, DATA),
    S("ann_root", None, "directory of the annotation JSON files (default: data/synthetic, or data/Annotation)",
      READING + (PREPARE_BUFFERS,), DATA),
    S("image_size", None, "image side in pixels (default: 32 for synthetic, 224 otherwise)",
      READING + (PREPARE_BUFFERS,), DATA, type=int, check="positive", at_most=4096),
    S("text_encoder", None, "bert | distilbert | minilm | <hub name> | <local model dir> | openclip:ARCH[@WEIGHTS] "
      "(default: minilm for synthetic, bert otherwise)", READING + (PREPARE_BUFFERS,), DATA),
    S("feature_cache", "cache", "directory of the cached text features", READING, DATA),
    S("workers", 0, "image decoding worker processes", READING + CONVERT, DATA, type=int, check="non_negative",
      at_most=256),
    S("data_seed", 0, "seed of the synthetic dataset generator", READING, DATA, type=int, check="seed"),
    S("synthetic_train_images", None, "synthetic: train images, 2 captions each (default: 1000; synthetic_paper: "
      "10000)", READING, DATA, type=int, check="positive"),
    S("synthetic_test_images", None, "synthetic: val and test images, 5 captions each (default: 200; "
      "synthetic_paper: 1000)", READING, DATA, type=int, check="positive"),
    # network
    S("image_encoder", None, "convnet[_wW][_dD][_eE][_in|_gn|_nonorm] | nfnet | <timm model name> (default: convnet "
      "for synthetic, nfnet otherwise)", TRAINING + (PREPARE_BUFFERS,), NETWORK),
    S("image_pretrained", None, "start the image encoder from timm's pretrained weights (default: yes for timm "
      "models, no for convnet)", TRAINING, NETWORK, type=bool),
    S("image_checkpoint", None, "local weights file (.pt/.pth/.safetensors) for the image encoder", TRAINING, NETWORK),
    S("image_trainable", False, "train the whole image encoder (else a head on a frozen one)", TRAINING, NETWORK,
      type=bool),
    S("out_embedding", 768, "embedding dimension when both sides project", TRAINING, NETWORK, type=int,
      check="positive", at_most=65536),
    # training: what experts, distillation students and evaluation students share
    S("lr_teacher_img", 0.1, "SGD lr of the img params: the experts' (buffer.py), the initial learned student lr "
      "(distillation), the random/prototype baselines' (evaluate.py)", TRAINING, TRAIN, type=float, check="positive"),
    S("lr_teacher_txt", 0.1, "SGD lr of the txt params, as --lr_teacher_img", TRAINING, TRAIN, type=float,
      check="positive"),
    S("batch_train", 128, "real pairs per expert batch (buffer.py); pairs per evaluation student batch", TRAINING,
      TRAIN, type=int, check="positive"),
    S("loss_type", "InfoNCE", "the experts' contrastive loss", (BUFFER,), TRAIN, choices=LOSS_TYPES),
    S("loss_type", "WBCE", "contrastive loss of the distillation's and the evaluation's students", EVALUATING, TRAIN,
      choices=LOSS_TYPES),
    # experts (buffer.py)
    S("num_experts", 5, "experts wanted in the buffer directory", (BUFFER,), EXPERTS, type=int, check="positive"),
    S("train_epochs", 10, "epochs per expert", (BUFFER,), EXPERTS, type=int, check="positive"),
    S("buffer_path", "buffer", "root of the buffers", (BUFFER, PREPARE_BUFFERS, PREPARE_CHECK), EXPERTS),
    S("mom", 0.0, "expert SGD momentum", (BUFFER,), EXPERTS, type=float, check="non_negative"),
    S("l2", 0.0, "expert SGD weight decay", (BUFFER,), EXPERTS, type=float, check="non_negative"),
    S("eval_freq", 5, "report test retrieval every N epochs", (BUFFER,), EXPERTS, type=int, check="positive"),
    # phases (distill_ptm-st.py; a recipe gives them as `phases` records, phases.py)
    S("subset_num", 2, "number of phases P", (DISTILL,), PHASES, type=int, check="positive"),
    S("buffer_path", None, "expert buffer directory of each phase (normal/ or convexified_S_E/)", (DISTILL,), PHASES,
      nargs="+"),
    S("min_start_epoch", None, "lowest start epoch T of each phase", (DISTILL,), PHASES, type=int, nargs="+"),
    S("max_start_epoch", None, "start epochs are drawn from [min, max)", (DISTILL,), PHASES, type=int, nargs="+"),
    S("num_queries", None, "synthetic pairs N_p of each phase", (DISTILL,), PHASES, type=int, nargs="+"),
    S("Iteration", None, "distillation iterations I_p of each phase", (DISTILL,), PHASES, type=int, nargs="+"),
    S("sim_rank", None, "rank of S in each phase (--sim_type lowrank only)", (DISTILL,), PHASES, type=int, nargs="+"),
    # distillation (distill_ptm-st.py)
    S("syn_steps", 8, "student SGD steps per iteration", (DISTILL,), DISTILLATION, type=int, check="positive"),
    S("expert_epochs", 1, "target = expert epoch T + this", (DISTILL,), DISTILLATION, type=int, check="positive"),
    S("experts_per_it", 1, "expert segments (expert, start epoch) matched per iteration, their gradients averaged; "
      "under torchrun split over the ranks, at least one each", (DISTILL,), DISTILLATION, type=int, check="positive"),
    S("mini_batch_size", 40, "synthetic pairs per student step", (DISTILL,), DISTILLATION, type=int, check="positive"),
    S("lr_img", 1000, "lr of the synthetic pixels", (DISTILL,), DISTILLATION, type=float, check="positive"),
    S("lr_txt", 1000, "lr of the synthetic text features", (DISTILL,), DISTILLATION, type=float, check="positive"),
    S("lr_sim", 10.0, "lr of the similarity parameters", (DISTILL,), DISTILLATION, type=float, check="non_negative"),
    S("lr_lr", 0.01, "lr of the two learned student lrs", (DISTILL,), DISTILLATION, type=float, check="non_negative"),
    S("clamp_lr", 0.0, "lower bound of the learned student lrs (0: a learning rate never turns negative)", (DISTILL,),
      DISTILLATION, type=float, check="non_negative"),
    S("sim_type", "full", "similarity matrix", (DISTILL,), DISTILLATION, choices=["full", "lowrank"]),
    S("alpha", 1.0, "lowrank: S = diag(a) + alpha/r L R^T", (DISTILL,), DISTILLATION, type=float,
      check="non_negative"),
    S("ema_decay", 0.99, "EMA decay of the saved subset; 0 = no EMA", (DISTILL,), DISTILLATION, type=float,
      check="fraction"),
    S("matching", "constant", "constant: the authors' two-pass gradient (student points held constant, an "
      "approximation), memory independent of --syn_steps; adjoint: the exact gradient by a reverse sweep, about the "
      "time of constant, the student's points kept as --adjoint_store says; unrolled: exact back-propagation through "
      "all steps, memory linear in steps", (DISTILL,), DISTILLATION, choices=sorted(MATCHING)),
    S("constant_store", "replay", "--matching constant: pass 2's step graphs. replay: recomputed (memory independent "
      "of --syn_steps); graphs: kept from pass 1 (faster, memory grows with --syn_steps; docs/speed.md). Same gradient "
      "bit for bit", (DISTILL,), DISTILLATION, choices=CONSTANT_STORES),
    S("adjoint_store", "cpu", "--matching adjoint: where the student points are kept. cpu: host memory (accelerator "
      "memory does not grow with --syn_steps); device: on the accelerator (no copies, --syn_steps x the parameters "
      "more); recompute: every ceil(sqrt(syn_steps))-th point kept, the rest recomputed (least memory); graphs: "
      "every step's graph kept (fastest; memory grows with steps). Same bits", (DISTILL,), DISTILLATION, choices=STORES),
    S("phase_conditioning", "none", "none: each phase distills its subset alone; cumulative: in phase p > 1 the "
      "student's steps see the frozen D_1..D_{p-1} with the learnable D_p (block-diagonal S, D_p's lrs), so D_p "
      "complements them; pair it with --eval_mode cumulative", (DISTILL,), DISTILLATION, choices=CONDITIONING),
    S("blend", 0.0, "representation blending (RepBlend's released form): each distillation student step draws lam "
      "~ Beta(BLEND, BLEND) and a permutation of its minibatch and blends each pair's image-module input (frozen "
      "encoder features, or pixels) and text features with another pair's, targets unchanged; 0 = off (PTM-ST, same "
      "bits)", (DISTILL,), DISTILLATION, type=float, check="non_negative"),
    # what evaluate.py evaluates
    S("ckpt_path", [], "distilled subset files, trained on in this order", (EVALUATE,), TARGETS, nargs="+"),
    S("baseline", None, "real-pair baseline: random | prototype (k-means coreset) | full; the pairs are chosen once "
      "(with --seed) and shared by all --num_eval runs", (EVALUATE,), TARGETS, choices=BASELINES),
    S("num_pairs", None, "pairs of the random/prototype baseline (default: the --ckpt_path total)", (EVALUATE,),
      TARGETS, type=int, check="positive"),
    S("buffer_path", None, "prototype baseline: directory of expert files whose first expert's final parameters embed "
      "the train pairs (default: buffer/<dataset>/<image_encoder>_<text_encoder>/InfoNCE/normal, where buffer.py "
      "writes)", (EVALUATE,), TARGETS),
    S("full_epochs", 10, "full baseline: epochs over the whole train set (the experts' budget)", (EVALUATE,), TARGETS,
      type=int, check="positive"),
    S("full_lr", None, "full baseline: student lr, both groups (default: the teacher lrs x (1 - momentum) = 0.01, the "
      "experts' effective step: they train without momentum)", (EVALUATE,), TARGETS, type=float, check="positive"),
    S("out", None, "write config, seeds and all numbers to this JSON file", (EVALUATE,), TARGETS),
    # the evaluation protocol: evaluate.py and the in-run evaluation of distill_ptm-st.py
    S("num_eval", 5, "fresh students trained and averaged per evaluation (distill_ptm-st.py: 0 = save without "
      "evaluating)", EVALUATING, PROTOCOL, type=int, check="non_negative"),
    S("epoch_eval_train", 100, "student epochs per distilled subset / coreset", EVALUATING, PROTOCOL, type=int,
      check="positive"),
    S("eval_points", 5, "test evaluations spread over training, the last at the final epoch", EVALUATING, PROTOCOL,
      type=int, check="positive"),
    S("select_on", "final", "reported number: final epoch, or the evaluation point best on the val split",
      EVALUATING, PROTOCOL, choices=SELECTIONS),
    S("lr_decay", True, "lr x0.1 for the second half of each phase's epochs, as the authors' code", EVALUATING,
      PROTOCOL, type=bool),
    S("eval_mode", "sequential", "how phased subsets D_1..D_P are trained on: sequential (D_1, then D_2, ...), "
      "cumulative (phase p on D_1 u ... u D_p) or union (all as one set); joined subsets keep their similarity blocks "
      "and use the last subset's lrs", EVALUATING, PROTOCOL, choices=EVAL_MODES),
    S("protocol", "ours", "ours: a fresh SGD per phase with its lrs, final epoch reported; authors: the authors' "
      "evaluation (one SGD with the last subset's lrs, one x0.1 drop at epoch_eval_train//2+1 over the whole "
      "sequence, epoch_eval_train+1 epochs per subset, their batch sampler, scored after local epochs 0, E//10, ..., "
      "E of every subset: --eval_points does not apply), reporting the best test score over all evaluation points "
      "unless --select_on val", EVALUATING, PROTOCOL, choices=PROTOCOLS),
    # saving and resuming (distill_ptm-st.py)
    S("eval_it", 50, "save (and evaluate) every N iterations and at each phase end", (DISTILL,), SAVING, type=int,
      check="positive"),
    S("checkpoint_it", 25, "write a resumable checkpoint every N iterations", (DISTILL,), SAVING, type=int,
      check="positive"),
    S("name", None, "run name (default: ptm-st_<date>_<time>)", (DISTILL,), SAVING),
    S("runs_dir", "runs", "root of the run directories", (DISTILL,), SAVING),
    S("resume", False, "continue runs/<dataset>/<name> from its checkpoint", (DISTILL,), SAVING, type=bool),
    # runtime
    S("seed", 0, "random seed", TRAINING, RUNTIME, type=int, check="seed"),
    S("device", "auto", "auto | cpu | cuda | cuda:N (auto = cuda when present)", TRAINING, RUNTIME),
    S("wandb", "disabled", "Weights & Biases logging", TRAINING, RUNTIME, choices=["disabled", "offline", "online"]),
    # speed levers (speed.py)
    S("amp", "off", "mixed precision (torch.autocast) for the student networks: experts, evaluation students and, "
      "while their synthetic-data gradient stays within --amp_tolerance of float32, the distillation passes",
      TRAINING, SPEED, choices=list(AMP_DTYPES)),
    S("channels_last", False, "feed images to the image encoder in channels-last memory format (a speed lever for "
      "convolutional encoders, measured in docs/paper_scale.md)", TRAINING, SPEED, type=bool),
    S("tf32", False, "CUDA: TensorFloat-32 products in matmuls and cuDNN convolutions; guarded in distillation "
      "(--amp_tolerance)", TRAINING, SPEED, type=bool),
    S("nondeterministic", False, "CUDA: cuDNN picks its algorithms by timing (cudnn.benchmark) and kernels may sum in "
      "any order; the replay of constant matching and --resume are then no longer bit for bit; guarded in "
      "distillation (--amp_tolerance)", TRAINING, SPEED, type=bool),
    S("threads", None, "CPU threads of the computation (default: torch's, one per core)", TRAINING, SPEED, type=int,
      check="positive"),
    S("amp_tolerance", 0.05, "--amp, --tf32, --nondeterministic: largest relative error of the synthetic-data "
      "gradient against strict float32 on the same iteration; above it the rest of the run uses strict float32",
      (DISTILL,), SPEED, type=float, check="positive"),
    S("amp_check_it", 100, "compare the levers' gradient against strict float32 every N iterations, starting with the "
      "first", (DISTILL,), SPEED, type=int, check="positive"),
    # the shortcut window of convexify.py
    S("start", None, "first timestamp of the window (epoch, 0 = initialisation)", (CONVEXIFY,), WINDOW, type=int,
      required=True, check="non_negative"),
    S("end", None, "end of the window, exclusive (at most the timestamps recorded)", (CONVEXIFY,), WINDOW, type=int,
      required=True),
    S("normal_dir", None, "buffer directory holding img_/txt_replay_buffer_<n>.pt pairs", (CONVEXIFY,), WINDOW,
      required=True),
    S("out_dir", None, "output directory; must not exist yet (default: <parent of normal_dir>/convexified_<start>_"
      "<end>)", (CONVEXIFY,), WINDOW),
    # prepare_data.py flickr | coco | cc3m: the files of a dataset as it is distributed ...
    S("karpathy", None, "Karpathy's split file, dataset_flickr30k.json or dataset_coco.json (the paper's splits)",
      (PREPARE_FLICKR, PREPARE_COCO), SOURCES, required=True, one_of="source"),
    S("token", None, "Flickr30k's results_20130124.token (no splits: 5% held out for each of val and test)",
      (PREPARE_FLICKR,), SOURCES, required=True, one_of="source"),
    S("images", None, "the folder of the images: Flickr30k's .jpg files, or COCO's train2014/ and val2014/",
      (PREPARE_FLICKR, PREPARE_COCO), SOURCES, required=True),
    S("shards", None, "webdataset .tar shards ('dir/{00000..00331}.tar', globs)", (PREPARE_CC3M,), SOURCES,
      nargs="+", metavar="PATTERN", required=True, one_of="source"),
    S("parquet", None, "parquet files, images inside or in the folder beside each", (PREPARE_CC3M,), SOURCES,
      nargs="+", metavar="FILES", required=True, one_of="source"),
    S("val_shards", None, "shards of the validation data, written as both val and test (default: a fixed, seeded 5% "
      "of the pairs is held out for each)", (PREPARE_CC3M,), SOURCES, nargs="+", metavar="PATTERN",
      one_of="validation"),
    S("val_parquet", None, "parquet files of the validation data, as --val_shards", (PREPARE_CC3M,), SOURCES,
      nargs="+", metavar="FILES", one_of="validation"),
    # ... and the dataset root they write
    S("out", None, "the dataset root to write (must not exist, or be empty)", CONVERT, OUTPUT, required=True),
    S("copy", False, "copy the files instead of linking to them (the image folders; buffers: the files in the "
      "Hugging Face cache)", CONVERT + (PREPARE_BUFFERS,), OUTPUT, type=bool),
    S("cache", None, "also write the decoded image cache at SIZE px (default SIZE: 224, the paper's)", CONVERT,
      OUTPUT, type=int, nargs="?", const=224, metavar="SIZE", check="image_side"),
    # prepare_data.py buffers: the published experts and annotations
    S("revision", "main", "revision of the hub repository", (PREPARE_BUFFERS,), PUBLISHED),
    # prepare_data.py check: the paper's recipe checked
    S("size", 500, "distilled pairs of the recipe", (PREPARE_CHECK,), PAPER, type=int, choices=SIZES),
    # prepare_data.py encoder: a trained expert's image encoder as a local checkpoint (symmetric heads' frozen encoder)
    S("normal_dir", None, "buffer directory of experts that trained the whole image encoder (--image_trainable), "
      "with its manifest.json", (PREPARE_ENCODER,), ENCODER, required=True),
    S("expert", 0, "which expert of the directory (0: the first of img_replay_buffer_0.pt)", (PREPARE_ENCODER,),
      ENCODER, type=int, check="non_negative"),
    S("epoch", None, "which timestamp (default: the last, the end of the expert's training)", (PREPARE_ENCODER,),
      ENCODER, type=int, check="non_negative"),
    S("out", None, "the checkpoint file to write (.pt, a state dict): pass it as --image_checkpoint", (PREPARE_ENCODER,),
      ENCODER, required=True),
]


def of(script: str) -> dict:
    """{name: Setting} of the settings `script` takes, in table order."""
    return {s.name: s for s in TABLE if script in s.scripts}


def parser(script: str, description: str = None) -> Parser:
    p = build_parser(TABLE, script, description)
    p.script, p.commands = script, {}
    return p


def command_parser(commands: Dict[str, Tuple[str, str]], description: str = None) -> Parser:
    """The parser of a script of subcommands, {command: (its script in the table, its --help line)}: each command
    takes the settings of its script."""
    p = Parser(description=description)
    p.script, p.commands = None, {command: script for command, (script, _) in commands.items()}
    sub = p.add_subparsers(dest="command", required=True, metavar="{" + ",".join(commands) + "}")
    for command, (script, line) in commands.items():
        add_settings(sub.add_parser(command, help=line, description=line), TABLE, script)
    return p


def parse_args(p: Parser, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The settings of a command line: its recipe (--config) first, the flags given over it; then the dataset-
    dependent defaults and every check of the table (cli_args.finalize). With subcommands, those of the command."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if p.commands:
        args = p.parse_args(argv)
        return finalize(args, of(p.commands[args.command]).values())
    own, before = of(p.script), []
    path = p.parse_known_args(argv)[0].config if "config" in own else None
    if path:
        where = f"--config {path}"
        names = {script: of(script) for script in recipes.SECTIONS}
        before = recipes.to_argv(recipes.values_for(recipes.load(path), p.script, names, where), own, where)
        p.where = where  # the recipe's own values are checked first, so that an error names the file
        try:
            p.parse_args(before)
        finally:
            p.where = None
    return finalize(p.parse_args(before + argv), own.values())


def with_defaults(script: str) -> Callable[[type], type]:
    """A class decorator (under @dataclass): each field named after a setting of `script` defaults to its value."""
    def fill(cls):
        own = of(script)
        for name in cls.__annotations__:
            if name in own and name not in cls.__dict__:
                setattr(cls, name, own[name].default)
        return cls
    return fill
