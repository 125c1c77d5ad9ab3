"""settings.py and recipes.py: every flag of every script is one declaration of the table; a recipe (--config) is the
command line it stands for, with the command line over it; the paper's and the demo's recipes are the command lines
sh/*.sh gave before they were files."""
import argparse
import functools
import json
import os

import pytest
import yaml

import buffer
import convexify
import evaluate
import prepare_data
from common.errors import UserError
from distill_utils import settings
from distill_utils.cli_args import config_of
from distill_utils.config import DistillConfig, EvalProtocol, ExpertConfig
from tests.helpers import ROOT, distill, distill_args, run_cli, saved_tensors

SCRIPTS = {settings.BUFFER: buffer, settings.CONVEXIFY: convexify, settings.DISTILL: distill,
           settings.EVALUATE: evaluate}


def command_parser(command):
    """The parser of one subcommand of prepare_data.py."""
    sub = next(a for a in prepare_data.make_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


PARSERS = {**{script: module.make_parser for script, module in SCRIPTS.items()},
           **{script: functools.partial(command_parser, command)
              for command, (script, _) in prepare_data.COMMANDS.items()}}


@pytest.mark.parametrize("script", PARSERS)
def test_every_flag_of_every_script_is_one_declaration_of_the_table(script):
    for action in PARSERS[script]()._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        declared = [s for s in settings.TABLE if s.name == action.dest and script in s.scripts]
        assert len(declared) == 1, action.dest
        s = declared[0]
        assert action.option_strings == [f"--{s.name}"] + ([f"--no-{s.name}"] if s.switch else [])
        assert action.default == s.default and action.help.startswith(s.help.replace("%", "%%"))
    names = [s.name for s in settings.TABLE if script in s.scripts]
    assert len(names) == len(set(names))


def test_no_script_or_module_declares_a_flag_of_its_own():
    """The table is the one place: add_argument appears only where a Setting adds itself (cli_args.py), and in no
    entry script. (Tools run as `python -m`, such as the dataset generator, keep a parser of their own.)"""
    sources = [f for f in os.listdir(ROOT) if f.endswith(".py")]
    for directory, _, files in os.walk(os.path.join(ROOT, "distill_utils")):
        sources += [os.path.relpath(os.path.join(directory, f), ROOT) for f in files if f.endswith(".py")]
    texts = {f: open(os.path.join(ROOT, f)).read() for f in sources}
    declaring = [f for f, text in texts.items() if "add_argument(" in text and not
                 (f.startswith("distill_utils") and 'if __name__ == "__main__"' in text)]
    assert declaring == [os.path.join("distill_utils", "cli_args.py")]


def _prepare(*argv):
    return settings.parse_args(prepare_data.make_parser(), argv)


@pytest.mark.parametrize("argv, message", [
    (["flickr", "--images", "x", "--out", "y"], "one of the arguments --karpathy --token is required"),
    (["flickr", "--karpathy", "k", "--token", "t", "--images", "x", "--out", "y"],
     "argument --token: not allowed with argument --karpathy"),
    (["coco", "--images", "x", "--out", "y"], "the following arguments are required: --karpathy"),  # coco: no --token
    (["cc3m", "--out", "y"], "one of the arguments --shards --parquet is required"),
    (["cc3m", "--shards", "s", "--val_shards", "v", "--val_parquet", "p", "--out", "y"],
     "argument --val_parquet: not allowed with argument --val_shards"),
    (["flickr", "--karpathy", "k", "--images", "x", "--out", "y", "--cache", "8"],
     "--cache 8: expected an image side from 16 to 4096 pixels"),
    (["cc3m", "--parquet", "p", "--out", "y", "--workers", "-1"], "--workers -1: expected a finite number, 0 or more"),
    (["buffers"], "the following arguments are required: --dataset"),
    (["buffers", "--dataset", "synthetic"], "argument --dataset: invalid choice: 'synthetic'"),
    (["check", "--dataset", "flickr", "--image_size", "0"], "--image_size 0: expected a finite positive number"),
])
def test_prepare_data_commands_refuse_in_one_line_as_their_settings_say(argv, message, capsys):
    code, err = run_cli(prepare_data.main, argv, capsys)
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err


def test_prepare_data_commands_take_the_data_settings_and_their_defaults():
    bare = _prepare("flickr", "--karpathy", "k", "--images", "x", "--out", "y", "--cache")
    assert (bare.cache, bare.copy, bare.workers, bare.token) == (224, False, 0, None)
    assert _prepare("coco", "--karpathy", "k", "--images", "x", "--out", "y").cache is None
    published = _prepare("buffers", "--dataset", "coco")
    assert (published.ann_root, published.image_encoder, published.text_encoder, published.image_size,
            published.buffer_path, published.revision) == ("data/Annotation", "nfnet", "bert", 224, "buffer", "main")
    check = _prepare("check", "--dataset", "flickr", "--image_root", "r", "--ann_root", "r")
    assert (check.size, check.image_size, check.text_encoder, check.feature_cache) == (500, 224, "bert", "cache")


def test_distill_help_lists_every_protocol_flag_of_evaluate(capsys):
    protocol = [s.name for s in settings.TABLE if settings.EVALUATE in s.scripts and s.group == settings.PROTOCOL]
    assert {"num_eval", "epoch_eval_train", "eval_points", "select_on", "lr_decay", "eval_mode", "protocol"} <= \
        set(protocol)
    with pytest.raises(SystemExit):
        distill.main(["--help"])
    text = capsys.readouterr().out
    assert all(f"--{name}" in text for name in protocol + ["batch_train", "loss_type"])
    # the in-run evaluation's protocol is built from the same flags as evaluate.py's
    args = settings.parse_args(distill.make_parser(), ["--eval_points", "3", "--select_on", "val", "--no-lr_decay",
                                                       "--device", "cpu"])
    from distill_utils.config import from_flags
    assert from_flags(EvalProtocol, args) == EvalProtocol(eval_points=3, select_on="val", lr_decay=False)


def test_typed_settings_take_their_defaults_from_the_table():
    for cls, script in ((ExpertConfig, settings.BUFFER), (DistillConfig, settings.DISTILL),
                        (EvalProtocol, settings.EVALUATE)):
        own, made = settings.of(script), cls()
        assert all(getattr(made, name) == own[name].default for name in cls.__annotations__ if name in own)
    assert ExpertConfig().loss_type == "InfoNCE" and EvalProtocol().loss_type == "WBCE"


def _recipe(tmp_path, recipe, name="r.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def _parse(script, argv):
    return vars(settings.parse_args(SCRIPTS[script].make_parser(), [*argv, "--device", "cpu"]))


PHASES = [{"buffer_path": "b0", "min_start_epoch": 0, "max_start_epoch": 2, "num_queries": 6, "iterations": 5},
          {"buffer_path": "b1", "min_start_epoch": 1, "max_start_epoch": 3, "num_queries": 8, "iterations": 7}]


def test_the_command_line_overrides_the_recipe_and_a_section_the_shared_settings(tmp_path):
    path = _recipe(tmp_path, {"image_trainable": True, "loss_type": "InfoNCE", "lr_teacher_img": 0.5, "syn_steps": 3,
                              "distill": {"loss_type": "WBCE", "lr_img": 100, "lr_lr": "1e-3", "phases": PHASES},
                              "buffer": {"num_experts": 3}})
    args = _parse(settings.DISTILL, ["--config", path, "--lr_img", "7", "--num_queries", "4", "4", "--no-image_trainable"])
    assert (args["lr_img"], args["lr_lr"], args["lr_teacher_img"], args["syn_steps"]) == (7.0, 0.001, 0.5, 3)
    assert args["loss_type"] == "WBCE" and args["image_trainable"] is False  # the section, then the command line
    assert (args["subset_num"], args["buffer_path"], args["num_queries"], args["Iteration"]) == \
        (2, ["b0", "b1"], [4, 4], [5, 7])
    experts = _parse(settings.BUFFER, ["--config", path])  # the same file: the shared settings and its own section
    assert (experts["loss_type"], experts["num_experts"], experts["image_trainable"]) == ("InfoNCE", 3, True)
    assert "syn_steps" not in experts


def test_phases_as_records_are_the_list_flags(tmp_path):
    lists = ["--buffer_path", "b0", "b1", "--min_start_epoch", "0", "1", "--max_start_epoch", "2", "3",
             "--num_queries", "6", "8", "--Iteration", "5", "7", "--subset_num", "2"]
    records = _parse(settings.DISTILL, ["--config", _recipe(tmp_path, {"phases": PHASES})])
    assert {**records, "config": None} == _parse(settings.DISTILL, lists)
    ranked = _parse(settings.DISTILL, ["--config", _recipe(tmp_path, {"distill": {
        "sim_type": "lowrank", "phases": [{**p, "sim_rank": 2 + i} for i, p in enumerate(PHASES)]}})])
    assert ranked["sim_rank"] == [2, 3]
    one = distill.check_args(argparse.Namespace(**{**records, "name": "x", "mini_batch_size": 4}))
    assert [(p.buffer_path, p.min_start_epoch, p.max_start_epoch, p.num_queries, p.iterations) for p in one] == \
        [("b0", 0, 2, 6, 5), ("b1", 1, 3, 8, 7)]


def test_a_runs_config_json_is_a_recipe_for_the_same_settings(tmp_path):
    argv = ["--config", _recipe(tmp_path, {"phases": PHASES, "lr_sim": 0.5, "name": "run"}), "--resume"]
    first = settings.parse_args(distill.make_parser(), [*argv, "--device", "cpu"])
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config_of(first)))
    again = settings.parse_args(distill.make_parser(), ["--config", str(path)])
    assert config_of(again) == config_of(first)


@pytest.mark.parametrize("recipe, message", [
    ({"lr_imgg": 1}, r"unknown setting 'lr_imgg'"),
    ({"buffer": {"syn_steps": 2}}, r"buffer: 'syn_steps' is not a setting of this script"),
    ({"distill": {"lr_img": "fast"}}, r"argument --lr_img: invalid float value: 'fast'"),
    ({"distill": {"sim_type": "dense"}}, r"argument --sim_type: invalid choice: 'dense'"),
    ({"image_trainable": "yes"}, r"image_trainable: expected true or false"),
    ({"syn_steps": [1, 2]}, r"syn_steps: expected one value"),
    ({"phases": [{"buffer_path": "b", "min_start_epoch": 0}]}, r"phases: record 0 has no max_start_epoch"),
    ({"phases": [{**PHASES[0], "iteration": 3}]}, r"phases: record 0 has unknown key 'iteration'"),
    ({"phases": PHASES, "num_queries": [1, 2]}, r"phases are given both as records \(phases\) and as --num_queries"),
    ({"config": "other.yaml"}, r"a recipe cannot name another recipe"),
    (["a", "list"], r"expected a mapping of setting names to values"),
])
def test_a_bad_recipe_is_refused_in_one_line_naming_the_file(recipe, message, tmp_path):
    path = _recipe(tmp_path, recipe)
    with pytest.raises(UserError, match=rf"--config {path}: {message}"):
        _parse(settings.DISTILL, ["--config", path])


def test_an_unreadable_recipe_is_one_line(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    for path, needle in ((tmp_path / "none.yaml", "No such file"), (tmp_path / "bad.yaml", "not valid YAML")):
        code, err = run_cli(distill.main, ["--config", str(path)], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err and str(path) in err, err


# the command lines of sh/buffer.sh, sh/distill.sh and sh/eval.sh before the recipes were files
def _old_distill(dataset, size):
    b = f"buffer/{dataset}/nfnet_bert/InfoNCE"
    mb = "40" if (dataset, size) == ("flickr", 500) else "20"
    phases = {500: ["--buffer_path", f"{b}/convexified_0_6", f"{b}/convexified_0_8", "--min_start_epoch", "0", "1",
                    "--max_start_epoch", "2", "3", "--num_queries", "200", "299", "--Iteration", "2000", "2000",
                    "--subset_num", "2"],
              200: ["--buffer_path", f"{b}/convexified_0_6", f"{b}/convexified_0_8", "--min_start_epoch", "0", "1",
                    "--max_start_epoch", "2", "3", "--num_queries", "99", "100", "--Iteration", "2000", "2000",
                    "--subset_num", "2"],
              100: ["--buffer_path", f"{b}/convexified_0_6", "--min_start_epoch", "0", "--max_start_epoch", "2",
                    "--num_queries", "99", "--Iteration", "2000", "--subset_num", "1"]}[size]
    return ["--dataset", dataset, "--image_encoder", "nfnet", "--text_encoder", "bert", "--image_trainable", *phases,
            "--syn_steps", "8", "--expert_epochs", "1", "--mini_batch_size", mb, "--lr_img", "1000", "--lr_txt", "1000",
            "--lr_lr", "0.01", "--lr_teacher_img", "0.1", "--lr_teacher_txt", "0.1", "--lr_sim",
            "10" if dataset == "flickr" else "50", "--sim_type", "full", "--loss_type", "WBCE", "--ema_decay", "0.99",
            "--eval_it", "500", "--num_eval", "5", "--epoch_eval_train", "100", "--name", f"ptm-st_{dataset}_{size}"]


def _old_buffer(dataset):
    return ["--dataset", dataset, "--image_encoder", "nfnet", "--text_encoder", "bert", "--image_trainable",
            "--image_size", "224", "--num_experts", "20", "--train_epochs", "10", "--lr_teacher_img", "0.1",
            "--lr_teacher_txt", "0.1", "--batch_train", "128", "--eval_freq", "5", "--loss_type", "InfoNCE",
            "--buffer_path", "buffer"]


def _old_eval(dataset):
    return ["--dataset", dataset, "--image_encoder", "nfnet", "--text_encoder", "bert", "--image_trainable",
            "--image_size", "224", "--loss_type", "WBCE", "--num_eval", "5", "--epoch_eval_train", "100",
            "--batch_train", "128", "--ckpt_path", "d.pt"]


DEMO = {settings.BUFFER: ["--dataset", "synthetic", "--image_encoder", "convnet", "--text_encoder", "minilm",
                          "--image_trainable", "--num_experts", "4", "--train_epochs", "8", "--lr_teacher_img", "0.1",
                          "--lr_teacher_txt", "0.1", "--batch_train", "128", "--eval_freq", "4", "--loss_type",
                          "InfoNCE", "--buffer_path", "buffer"],
        settings.DISTILL: ["--dataset", "synthetic", "--image_encoder", "convnet", "--text_encoder", "minilm",
                           "--image_trainable", "--buffer_path", "buffer/synthetic/convnet_minilm/InfoNCE/convexified_0_6",
                           "buffer/synthetic/convnet_minilm/InfoNCE/convexified_0_8", "--min_start_epoch", "0", "1",
                           "--max_start_epoch", "2", "3", "--num_queries", "25", "25", "--Iteration", "100", "100",
                           "--subset_num", "2", "--syn_steps", "8", "--expert_epochs", "1", "--mini_batch_size", "10",
                           "--lr_teacher_img", "0.03", "--lr_teacher_txt", "0.03", "--lr_img", "100", "--lr_txt", "10",
                           "--lr_sim", "0.01", "--lr_lr", "1e-3", "--sim_type", "full", "--loss_type", "InfoNCE",
                           "--ema_decay", "0.97", "--eval_it", "100", "--num_eval", "2", "--epoch_eval_train", "100",
                           "--batch_train", "128", "--name", "synthetic_demo",
                           "--constant_store", "graphs"],  # added since: the same bits (test_distill), faster
        settings.EVALUATE: ["--dataset", "synthetic", "--image_trainable", "--loss_type", "InfoNCE", "--ckpt_path",
                            "d.pt", "--baseline", "random", "--num_eval", "5", "--epoch_eval_train", "100",
                            "--batch_train", "128"]}


def _same(script, old, recipe, *extra):
    new = _parse(script, ["--config", os.path.join(ROOT, "recipes", recipe), *extra])
    assert {**new, "config": None} == _parse(script, old)
    assert all(type(new[k]) is type(v) for k, v in _parse(script, old).items() if k != "config")  # 100.0, not 100


@pytest.mark.parametrize("dataset", ["flickr", "coco", "cc3m"])
@pytest.mark.parametrize("size", [500, 200, 100])
def test_the_papers_recipes_are_the_old_command_lines(dataset, size):
    _same(settings.DISTILL, _old_distill(dataset, size), f"{dataset}_{size}.yaml")
    _same(settings.BUFFER, _old_buffer(dataset), f"{dataset}_{size}.yaml")
    _same(settings.EVALUATE, _old_eval(dataset), f"{dataset}_{size}.yaml", "--ckpt_path", "d.pt")


def test_the_demo_recipe_is_the_old_command_lines():
    for script, old in DEMO.items():
        extra = ["--ckpt_path", "d.pt", "--baseline", "random"] if script == settings.EVALUATE else []
        _same(script, old, "synthetic_demo.yaml", *extra)


def test_a_run_from_a_recipe_is_the_run_from_its_flags(tiny_args, expert_dir, tmp_path, capsys):
    """One distillation from flags, one from a recipe file of the same flags with phases as records."""
    flags = distill_args(tiny_args, expert_dir, tmp_path, "flags", "--num_eval", "0")
    assert run_cli(distill.main, flags, capsys)[0] == 0
    parsed = _parse(settings.DISTILL, flags)
    recipe = {k: v for k, v in config_of(argparse.Namespace(**parsed)).items()
              if k not in ("buffer_path", "min_start_epoch", "max_start_epoch", "num_queries", "Iteration",
                           "subset_num", "name", "device")}
    recipe["distill"] = {"phases": [{"buffer_path": expert_dir, "min_start_epoch": lo, "max_start_epoch": hi,
                                     "num_queries": n, "iterations": 3} for lo, hi, n in ((0, 1, 6), (1, 2, 8))]}
    path = _recipe(tmp_path, recipe)
    assert run_cli(distill.main, ["--config", path, "--name", "recipe", "--device", "cpu"], capsys)[0] == 0
    for p in (0, 1):
        a = saved_tensors(tmp_path / "synthetic" / "flags", f"distilled_{p}_final.pt")
        b = saved_tensors(tmp_path / "synthetic" / "recipe", f"distilled_{p}_final.pt")
        assert all(x.equal(y) for x, y in zip(a, b))
    configs = [json.load(open(tmp_path / "synthetic" / run / "config.json")) for run in ("flags", "recipe")]
    assert {**configs[0], "name": "recipe"} == configs[1]
