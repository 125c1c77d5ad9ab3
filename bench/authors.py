"""This repository's distillation iteration side by side with the authors' own (Previsior/PTM-ST), run from a
checkout of their repository whose path is given; nothing of it is copied here (docs/speed.md).

    python -m bench.authors --authors /path/to/PTM-ST                # CPU, one thread, 5 interleaved rounds
    python -m bench.authors --authors /path/to/PTM-ST --device cuda  # the same on a GPU

Theirs: the code their distill_ptm-st.py times itself (main()'s loop from `_t0 = ...` to `_distill_time_accum_s +=`),
read from their file and run as it stands but for its hard-coded 'cuda' (the benchmark's device) and wandb.log (a
no-op); their ConvNet and ProjectionHead (read from src/networks.py, whose imports need `clip`) stand in for
CLIPModel_full, which has no convnet; ReparamModule, the similarity, loss and EMA classes imported from their files.
Identical inputs: our worker builds bench.speed's CPU configuration from seeds and saves it; theirs loads it (images,
text features, similarity, student lrs, expert start and target cut into their buffer format by our parameter shapes,
optimiser settings; their torch.randperm seeded to draw our minibatches; shapes and minibatches checked). Dropout
off on both sides (their pass 2 would draw new masks). One process per side per round, alternating. Time: medians of
--repeats iterations after a warm-up; memory: peak resident set, and its rise over the start (CUDA: peak allocated).
"""
import argparse
import ast
import importlib.util
import json
import math
import os
import statistics
import sys
import tempfile
import types

import numpy as np
import torch

from bench.measure import Memory, machine
from bench.speed import GRADS, PRESETS, Workload, add_preset_flags, apply_preset, row_of, timed
from bench.speed_report import rel_errors
from common.errors import UserError, cli_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT, START, END = "distill_ptm-st.py", "_t0", "_distill_time_accum_s"


def _read(root, rel):
    path = os.path.join(root, rel)
    if not os.path.isfile(path):
        raise UserError(f"--authors {root}: no {rel} (expected a checkout of Previsior/PTM-ST)")
    with open(path) as f:
        return path, f.read()


def _target(stmt):
    targets = stmt.targets if isinstance(stmt, ast.Assign) else [getattr(stmt, "target", None)]
    return next((t.id for t in targets if isinstance(t, ast.Name)), None)


class _OnDevice(ast.NodeTransformer):
    def visit_Constant(self, node):
        return ast.copy_location(ast.Name("DEVICE", ast.Load()), node) if node.value == "cuda" else node


def iteration_code(root):
    """Their timed iteration, compiled from their file inside a one-pass loop (it may `break`)."""
    path, text = _read(root, SCRIPT)
    for loop in ast.walk(ast.parse(text)):
        if isinstance(loop, ast.For):
            names = [_target(s) for s in loop.body]
            if START in names and END in names:
                body = loop.body[names.index(START) + 1:names.index(END)]
                once = ast.For(ast.Name("_once", ast.Store()), ast.parse("range(1)", mode="eval").body, body, [])
                tree = ast.fix_missing_locations(_OnDevice().visit(ast.Module([once], [])))
                return compile(tree, path, "exec")
    raise UserError(f"{path}: no loop timed from {START} to {END} (their distillation iteration) in it")


def _module(root, rel):
    path, _ = _read(root, rel)
    spec = importlib.util.spec_from_file_location("authors_" + rel.replace("/", "_")[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def authors_classes(root):
    """{name: class} of what their iteration needs, from their files."""
    path, text = _read(root, "src/networks.py")
    wanted = {"ConvNet", "ProjectionHead"}
    nodes = [n for n in ast.parse(text).body if isinstance(n, ast.ClassDef) and n.name in wanted]
    if {n.name for n in nodes} != wanted:
        raise UserError(f"{path}: no class {' or '.join(sorted(wanted - {n.name for n in nodes}))} in it")
    found = {"torch": torch, "nn": torch.nn, "F": torch.nn.functional}
    exec(compile(ast.Module(nodes, []), path, "exec"), found)
    found["ReparamModule"] = _module(root, "src/reparam_module.py").ReparamModule
    sim = _module(root, "src/similarity_mining.py")
    found.update(FullSimilarityGenerator=sim.FullSimilarityGenerator, MultilabelContrastiveLoss=sim.MultilabelContrastiveLoss,
                 ModelEmaV2=_module(root, "model_ema.py").ModelEmaV2)
    return found


def no_dropout(module):
    for m in module.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return module


class Ours:
    """This repository's iteration (expert read from its buffer file, constant matching, update) on bench.speed's
    Workload; `inputs()` is what the authors' side is given."""

    def __init__(self, a, tmp):
        self.work, self.mode = Workload(a, tmp), a.mode
        no_dropout(self.work.net)

    def inputs(self):
        w, s = self.work, self.work.syn
        start, target = w.segment()
        enc = w.net.image_encoder
        convs = [m for m in enc.modules() if isinstance(m, torch.nn.Conv2d)]
        copy = lambda t: t.detach().clone()
        return dict(image=copy(s.image), text=copy(s.text), sim=copy(s.sim_params[0]), start=start, target=target,
                    lr_img=s.student_lr_img.item(), lr_txt=s.student_lr_txt.item(), schedule=w.schedule(),
                    img_shapes=w.net.img_layout.shapes, txt_shapes=w.net.txt_layout.shapes, opt=vars(s.opt),
                    convnet=dict(width=convs[0].out_channels, depth=len(convs), embed=enc.fc.out_features),
                    scale=w.net.logit_scale, text_dim=w.a.text_dim, image_size=w.a.image_size)

    def iteration(self, keep):
        w = self.work
        start, target = w.segment()
        w.match(self.mode, w.schedule(), start, target)
        grads = {k: v.detach().clone() for k, v in w.grads().items()} if keep else None
        w.syn.step()
        return grads


class Authors:
    """Their iteration on the inputs `Ours.inputs()` saved, in the namespace their loop would give it."""

    def __init__(self, a, root, inputs):
        c, x, dev = authors_classes(root), inputs, torch.device(a.device)
        self.code, self.schedule, self.checked = iteration_code(root), [t.tolist() for t in x["schedule"]], False
        net = x["convnet"]

        def clip_model(args, temperature=0.07, **_):  # stands in for their CLIPModel_full, image side trainable
            with torch.random.fork_rng(devices=[]):  # as if built before their minibatches are drawn
                m = torch.nn.Module()
                m.image_encoder = c["ConvNet"](3, net["embed"], net["width"], net["depth"], "relu", "instancenorm",
                                               "avgpooling", (x["image_size"],) * 2)
                m.text_projection = c["ProjectionHead"](x["text_dim"], net["embed"])
            return no_dropout(m).to(args.device)

        probe = clip_model(argparse.Namespace(device="cpu"))
        for side, module in (("img", probe.image_encoder), ("txt", probe.text_projection)):
            if [tuple(p.shape) for p in module.parameters()] != [tuple(s) for s in x[f"{side}_shapes"]]:
                raise UserError(f"--authors {root}: their {side} network's parameters differ from ours in shape")
        like = dict(device=dev, dtype=x["image"].dtype)
        image, text = (x[k].to(**like).requires_grad_(True) for k in ("image", "text"))
        lr_img, lr_txt = (torch.tensor(x[k], **like).requires_grad_(True) for k in ("lr_img", "lr_txt"))
        sim = c["FullSimilarityGenerator"](len(image)).to(**like)
        sim.sim_mat.data = x["sim"].to(**like)
        o = x["opt"]
        optimizer = torch.optim.SGD([
            {"params": [image], "lr": o["lr_img"], "momentum": o["momentum"]},
            {"params": [text], "lr": o["lr_txt"], "momentum": o["momentum"]},
            {"params": [lr_img, lr_txt], "lr": o["lr_lr"], "momentum": o["momentum"]},
            {"params": sim.get_indexed_parameters(), "lr": o["lr_sim"], "momentum": o["momentum"]}], lr=0)
        split = lambda flat, shapes: [t.reshape(s).cpu() for t, s in zip(torch.split(flat, [math.prod(s) for s in shapes]), shapes)]
        buffers = {side: [[split(p[i], x[f"{side}_shapes"]) for p in (x["start"], x["target"])]]
                   for i, side in enumerate(("img", "txt"))}
        args = argparse.Namespace(device=a.device, image_trainable=True, distributed=False, syn_steps=a.syn_steps,
                                  mini_batch_size=a.mini_batch_size, min_start_epoch=0, max_start_epoch=1, expert_epochs=1,
                                  max_files=1, sim_type="full", clamp_lr=None, temperature=1 / x["scale"],
                                  current_subset_num=0)
        self.ns = dict(torch=torch, np=np, math=math, nn=torch.nn, wandb=types.SimpleNamespace(log=lambda *_, **__: None), DEVICE=a.device, args=args, it=1,
                       CLIPModel_full=clip_model, ReparamModule=c["ReparamModule"], shuffle_files=lambda i, t: (i, t),
                       img_buffer=buffers["img"], txt_buffer=buffers["txt"], img_expert_files=["-"], txt_expert_files=["-"],
                       image_syn=image, text_syn=text, syn_lr_img=lr_img, syn_lr_txt=lr_txt, sim_generator=sim,
                       logit_scale=torch.nn.Parameter(torch.ones([], dtype=like["dtype"]) * np.log(x["scale"])),
                       contrastive_criterion=c["MultilabelContrastiveLoss"](a.loss_type), optimizer=optimizer,
                       ema=c["ModelEmaV2"]([image, text, *sim.get_indexed_parameters(), lr_img, lr_txt], decay=o["ema_decay"]),
                       get_time=lambda: "", _alloc_samples_bytes=[])
        self.grad_of = dict(zip(GRADS, (image, text, sim.sim_mat, lr_img, lr_txt)))

    def iteration(self, keep):
        torch.manual_seed(1)  # their torch.randperm then draws bench.speed's minibatches
        self.ns.update(expert_idx=0, file_idx=0)
        exec(self.code, self.ns)
        if not self.checked:
            drawn = [t.tolist() for t in self.ns["indices_chunks_copy"]]
            if drawn != self.schedule:
                raise SystemExit(f"their minibatches {drawn} differ from ours {self.schedule}: the inputs are not identical")
            self.checked = True
        return {k: t.grad.detach().clone() for k, t in self.grad_of.items()} if keep else None


def worker(a):
    """One side, one process: `repeats` timed iterations after a warm-up; the warm-up's gradient to a file."""
    if a.side == "ours" or a.same_malloc:
        import distill_utils.startup  # noqa: F401  (as in our entry scripts: process-level settings, malloc's)
    torch.set_num_threads(a.threads)
    if a.side == "authors" and a.dtype == "float64":
        torch.set_default_dtype(torch.float64)  # their buffers are torch.zeros(shape): float32 otherwise
    device = torch.device(a.device)
    with tempfile.TemporaryDirectory() as tmp:
        if a.side == "ours":
            side = Ours(a, tmp)
            if a.inputs_out:
                torch.save(side.inputs(), a.inputs_out)
        else:
            side = Authors(a, a.authors, torch.load(a.inputs, weights_only=True))
        memory = Memory(device)
        memory.reset()
        before, runs = memory.current_gb(), []
        for i in range(a.repeats + 1):
            wall, cpu, grads = timed(lambda: side.iteration(keep=i == 0), device)
            if i == 0:
                torch.save({k: v.cpu() for k, v in grads.items()}, a.grads_out)
            runs.append((wall, cpu))
        peak = memory.peak_gb()
    times = runs[1:] or runs
    print("ROW " + json.dumps(dict(wall=statistics.median(w for w, _ in times), cpu=statistics.median(c for _, c in times),
                                   peak_gb=peak, rise_gb=peak - before)), flush=True)


def run_side(a, side, dtype, tmp, repeats, inputs_out=None):
    flags = [f"--{k}={getattr(a, k)}" for k in (*PRESETS["cpu"], "device", "authors", "mode")]
    cmd = [sys.executable, "-m", "bench.authors", "--worker", f"--side={side}", f"--dtype={dtype}", f"--repeats={repeats}",
           f"--inputs={os.path.join(tmp, f'inputs_{dtype}.pt')}", f"--grads_out={os.path.join(tmp, f'{side}_{dtype}.pt')}",
           *flags, *([f"--inputs_out={inputs_out}"] if inputs_out else []), *(["--same_malloc"] if a.same_malloc else [])]
    return row_of(cmd, ROOT)


def spread(values):
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def report(rows, grads):
    """Medians over rounds (range in brackets) of each side's figures and of the per-round ratios ours / theirs."""
    ours, theirs = rows["ours"], rows["authors"]
    print("\n| figure | this repository | authors | ours / authors, per round |\n|---|---|---|---|")
    for key, label in (("wall", "iteration, s wall"), ("cpu", "iteration, s CPU"), ("peak_gb", "peak memory, GB"),
                       ("rise_gb", "peak memory above the start, GB")):
        o, t = [r[key] for r in ours], [r[key] for r in theirs]
        print(f"| {label} | {spread(o)} | {spread(t)} | {spread([x / y for x, y in zip(o, t)])} |")
    errors = {label: rel_errors(x, y) for label, x, y in grads}
    for label, e in errors.items():
        print(f"gradient of the first iteration, {label}: " + ", ".join(f"{k} {v:.1e}" for k, v in e.items()))
    return errors


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_preset_flags(p)
    p.add_argument("--authors", required=True, help="a checkout of the authors' repository (Previsior/PTM-ST)")
    p.add_argument("--rounds", type=int, default=5, help="rounds, each side once per round (default: 5)")
    p.add_argument("--repeats", type=int, default=3, help="timed iterations per round after a warm-up (default: 3)")
    p.add_argument("--mode", default="constant", choices=["constant", "constant/graphs"],
                   help="our side's matching: constant, or constant with --constant_store graphs (default: constant)")
    p.add_argument("--same_malloc", action="store_true", help="give their process our malloc settings too "
                   "(distill_utils.startup): what the code saves apart from what the settings save")
    p.add_argument("--out", help="write the rows of every round and the gradient errors as JSON to this file")
    for hidden in ("worker", "side", "dtype", "inputs", "inputs_out", "grads_out"):
        p.add_argument(f"--{hidden}", action="store_true" if hidden == "worker" else None, help=argparse.SUPPRESS)
    a = apply_preset(p.parse_args(argv))
    a.authors = os.path.abspath(a.authors)
    from networks.convnet import parse_convnet
    convnet = parse_convnet(a.image_encoder)
    if convnet is None or convnet.get("norm", "in") != "in":
        raise UserError(f"--image_encoder {a.image_encoder}: bench.authors runs their ConvNet (instance norm) only")
    return a


@cli_main
def main(argv=None):
    a = parse_args(argv)
    if a.worker:
        return worker(a)
    iteration_code(a.authors), authors_classes(a.authors)  # a checkout lacking what is needed fails here, in one line
    print(f"config: {json.dumps({k: v for k, v in vars(a).items() if k not in ('worker', 'side', 'dtype', 'inputs', 'inputs_out', 'grads_out')})}")
    print(f"machine: {machine(torch.device(a.device))}", flush=True)
    rows = {"ours": [], "authors": []}
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in ("float64", "float32"):  # the inputs, and the gradients of the first iteration in each dtype
            run_side(a, "ours", dtype, tmp, 0, os.path.join(tmp, f"inputs_{dtype}.pt"))
            run_side(a, "authors", dtype, tmp, 0)
        load = lambda name: torch.load(os.path.join(tmp, f"{name}.pt"), weights_only=True)
        grads = {k: load(k) for k in ("ours_float32", "authors_float32", "ours_float64", "authors_float64")}
        for r in range(a.rounds):
            for side in ("ours", "authors")[::1 if r % 2 == 0 else -1]:
                rows[side].append(run_side(a, side, "float32", tmp, a.repeats))
                print(f"round {r + 1}, {side}: {json.dumps(rows[side][-1])}", flush=True)
    ref = {k: v.float() for k, v in grads["ours_float64"].items()}
    errors = report(rows, (("ours vs authors, float32", grads["ours_float32"], grads["authors_float32"]),
                  ("ours vs authors, float64", grads["ours_float64"], grads["authors_float64"]),
                  ("ours float32 vs ours float64", grads["ours_float32"], ref),
                  ("authors float32 vs ours float64", grads["authors_float32"], ref)))
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"config": vars(a), "machine": machine(torch.device(a.device)), "rows": rows, "gradient_errors": errors},
                      f, indent=1)


if __name__ == "__main__":
    main()
