"""Helpers shared by the test modules (fixtures live in conftest.py): the tiny settings, running an entry point
in-process, reading and changing flags by name, the distillation run of the end-to-end tests, hand-made files."""
import importlib.util
import os

import torch

from common.io import save_json
from distill_utils.files.buffers import MANIFEST, BufferDir
from distill_utils.files.subset_file import DistilledSubset
from distill_utils.method.learnable_set import SynOptim, SyntheticSet
from distill_utils.method.matching import minibatch_schedule
from distill_utils.method.similarity import make_similarity
from distill_utils.method.student import Student
from networks.dual_encoder import DualEncoder
from networks.image_encoders import build_image_encoder

TINY_SYNTHETIC = ["--synthetic_train_images", "40", "--synthetic_test_images", "10"]
WORDS = ("a an the on of in at with is there that picture image showing backdrop background over small large "
         "little tiny big huge red green blue yellow purple orange white black grey gray navy sand beige mint "
         "circle disc square block triangle cross plus sign diamond rhombus left right top bottom centre middle "
         "side half edge near upper lower part dog cat , ;").split()
TEXT_DIM = 32  # the tiny BERT of conftest
FAST = ["--image_trainable", "--num_eval", "2", "--epoch_eval_train", "3", "--eval_points", "2"]  # evaluate.py, quick
# the matching problem of tiny_matching: pairs, student steps, minibatch size, text-feature width
MATCH_PAIRS, MATCH_STEPS, MATCH_BATCH, MATCH_TEXT_DIM = 6, 4, 4, 5
IMG_SHAPES, TXT_SHAPES = [(3, 2), (4,)], [(2, 5), (5,), (1,)]  # the parameter shapes of write_buffer's experts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("distill_ptm_st", os.path.join(ROOT, "distill_ptm-st.py"))
distill = importlib.util.module_from_spec(_spec)  # the entry script (its file name is not a module name)
_spec.loader.exec_module(distill)


def tiny_flags(tiny_data, tiny_text_encoder, tmp_path_factory):
    """The tiny_args fixture's flags (also for module-scoped fixtures, which cannot take it)."""
    cache = str(tmp_path_factory.getbasetemp() / "feature_cache")
    return ["--dataset", "synthetic", "--ann_root", tiny_data, "--feature_cache", cache,
            "--text_encoder", tiny_text_encoder, "--image_size", "16", "--image_encoder", "convnet_w8_d2_e32",
            "--device", "cpu", *TINY_SYNTHETIC]


def run_cli(main, argv, capsys):
    """Run an entry point in-process; returns (exit status, its `error:` lines, or all of stderr if none)."""
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    return code, "\n".join(errors) if errors else err


def flag_value(argv, flag):
    """The value given to `flag` in an argument list."""
    return argv[argv.index(flag) + 1]


def with_flag(argv, flag, *values):
    """`argv` with the values of `flag` (up to the next --flag) replaced by `values`."""
    i = argv.index(flag) + 1
    end = next((j for j in range(i, len(argv)) if str(argv[j]).startswith("--")), len(argv))
    return [*argv[:i], *values, *argv[end:]]


def distill_args(tiny_args, expert_dir, runs, name, *extra):
    """A two-phase distillation of 3 iterations each on the tiny data, a checkpoint every iteration."""
    return [*tiny_args, "--image_trainable", "--buffer_path", expert_dir, expert_dir, "--min_start_epoch", "0", "1",
            "--max_start_epoch", "1", "2", "--num_queries", "6", "8", "--Iteration", "3", "3", "--subset_num", "2",
            "--syn_steps", "3", "--mini_batch_size", "4", "--lr_img", "0.1", "--lr_txt", "0.1", "--lr_sim", "0.1", "--lr_lr", "1e-5",
            "--eval_it", "2", "--num_eval", "1", "--epoch_eval_train", "2", "--batch_train", "4",
            "--checkpoint_it", "1", "--runs_dir", str(runs), "--name", name, *extra]


def saved_tensors(run_dir, name):
    """The tensors of a saved subset, in a fixed order."""
    obj = torch.load(os.path.join(run_dir, name), weights_only=True)
    return [obj["image"], obj["text"], obj["similarity_mat"], *obj["similarity_params"], obj["syn_lr_img"], obj["syn_lr_txt"]]


def whole_killed_resumed(tiny_args, expert_dir, tmp_path, capsys, monkeypatch, *extra):
    """Runs "whole" uninterrupted, and "killed", stopped at phase 1 iteration 2 (after the checkpoint of iteration 1),
    then resumed; returns the run directories."""
    assert run_cli(distill.main, distill_args(tiny_args, expert_dir, tmp_path, "whole", *extra), capsys)[0] == 0
    from distill_utils.method.learnable_set import SyntheticSet
    real_step, calls = SyntheticSet.step, {"n": 0}

    def dying_step(self):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        real_step(self)

    monkeypatch.setattr(SyntheticSet, "step", dying_step)
    assert run_cli(distill.main, distill_args(tiny_args, expert_dir, tmp_path, "killed", *extra), capsys)[0] == 130
    monkeypatch.setattr(SyntheticSet, "step", real_step)
    killed = tmp_path / "synthetic" / "killed"
    ckpt = torch.load(killed / "checkpoint.pt", weights_only=True)
    assert (ckpt["phase"], ckpt["iteration"]) == (1, 1)
    assert run_cli(distill.main, distill_args(tiny_args, expert_dir, tmp_path, "killed", "--resume", *extra), capsys)[0] == 0
    return tmp_path / "synthetic" / "whole", killed


def assert_same_saves(whole, killed, names=("distilled_0_final.pt", "distilled_1_2.pt", "distilled_1_final.pt")):
    for name in names:
        for a, b in zip(saved_tensors(whole, name), saved_tensors(killed, name)):
            assert torch.equal(a, b), name


class TensorImages:
    """An in-memory stand-in for ImageStore (what embed_split needs)."""

    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def batches(self, order, batch_size):
        for idx in torch.split(order, batch_size):
            yield self.images[idx], idx


def random_subset(n, seed, size=16, dim=TEXT_DIM):
    g = torch.Generator().manual_seed(seed)
    return DistilledSubset(torch.randn(n, 3, size, size, generator=g), torch.randn(n, dim, generator=g),
                           torch.eye(n) + 0.05 * torch.rand(n, n, generator=g), 0.05, 0.05)


def write_published(path, n, seed, lowrank=False, **overrides):
    """A distilled file as the authors publish it, built from plain lists and tensors (no config)."""
    s = random_subset(n, seed)
    obj = {"image": s.image.tolist(), "text": s.text, "syn_lr_img": 0.05, "syn_lr_txt": torch.tensor(0.05)}
    if lowrank:
        obj["similarity_params"] = [torch.ones(n), torch.randn(n, 2), torch.zeros(n, 2)]
    else:
        obj["similarity_params"] = [s.similarity.tolist()]
        obj["similarity_mat"] = s.similarity.tolist()
    obj.update(overrides)
    torch.save(obj, path)
    return str(path)


def our_file(path, tiny_args, **config):
    s = random_subset(4, 3)
    full = {"dataset": "synthetic", "image_encoder": "convnet_w8_d2_e32", "image_size": 16, "image_trainable": True,
            "text_encoder": flag_value(tiny_args, "--text_encoder"), "text_dim": TEXT_DIM, "phase": 0} | config
    torch.save({"image": s.image, "text": s.text, "similarity_params": [s.similarity], "similarity_mat": s.similarity,
                "syn_lr_img": torch.tensor(0.05), "syn_lr_txt": torch.tensor(0.05), "config": full}, path)
    return str(path)


def tiny_matching(sim_kind="full", trainable=True, loss_type="WBCE", seed=0):
    """A float64 dual encoder, a synthetic set and an expert segment (start, target) small enough for exact
    references: returns (net, student, syn, start, target, schedule)."""
    torch.manual_seed(seed)
    encoder, dim = build_image_encoder("convnet_w4_d1_e6", 4)
    net = DualEncoder(encoder, dim, MATCH_TEXT_DIM, trainable, out_embedding=6).double()
    student = Student(net, loss_type)
    g = torch.Generator().manual_seed(seed)
    sim = make_similarity(sim_kind, MATCH_PAIRS, rank=2, alpha=1.0, generator=g)
    sim.params = [p.double() for p in sim.params]
    if sim_kind == "lowrank":
        sim.params[2] = torch.randn(MATCH_PAIRS, 2, generator=g).double() * 0.3  # R = 0 would hide the L gradient
    else:
        sim.params[0] = sim.params[0] + 0.1 * torch.rand(MATCH_PAIRS, MATCH_PAIRS, generator=g).double()
    syn = SyntheticSet(torch.randn(MATCH_PAIRS, 3, 4, 4, generator=g).double(), torch.randn(MATCH_PAIRS, MATCH_TEXT_DIM, generator=g).double(),
                       sim, 0.05, 0.08, SynOptim(1.0, 1.0, 1.0, 1.0))
    img0, txt0 = (p.double() for p in net.initial_params())
    start = (img0, txt0)
    target = (img0 + 0.05 * torch.randn(img0.shape, generator=g).double(),
              txt0 + 0.05 * torch.randn(txt0.shape, generator=g).double())
    schedule = minibatch_schedule(MATCH_PAIRS, MATCH_BATCH, MATCH_STEPS, g)
    return net, student, syn, start, target, schedule


def grads_of(syn):
    return [t.grad.clone() for t in syn.tensors()]


def seeded_grads(matches, student, syn, start, target, schedule, seed=7):
    """The synthetic set's gradients from each matching function, every one from the same RNG state."""
    grads = []
    for match in matches:
        syn.zero_grad()
        torch.manual_seed(seed)
        match(student, syn, start, target, schedule)
        grads.append(grads_of(syn))
    return grads


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def read_all(root):
    """{relative path: bytes} of every file below `root`."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                out[os.path.relpath(os.path.join(dirpath, name), root)] = f.read()
    return out


def trajectory(shapes, timestamps, seed):
    g = torch.Generator().manual_seed(seed)
    stamp, traj = [torch.randn(s, generator=g) for s in shapes], []
    for _ in range(timestamps):
        traj.append(stamp)
        stamp = [p + torch.rand(1, generator=g) * torch.randn(p.shape, generator=g) for p in stamp]
    return traj


def write_buffer(directory, pairs=2, experts=2, timestamps=6, manifest=None):
    """A normal/ directory of `pairs` img/txt files, each holding `experts` trajectories (and `manifest`, written as
    given: the tests use partial ones)."""
    os.makedirs(directory, exist_ok=True)
    buf = BufferDir(str(directory))
    for n in range(pairs):
        img, txt = ([trajectory(shapes, timestamps, seed=100 * n + 10 * e + len(side) + len(shapes)) for e in range(experts)]
                    for side, shapes in (("img", IMG_SHAPES), ("txt", TXT_SHAPES)))
        buf.save_pair(n, img, txt)
    if manifest is not None:
        save_json(manifest, os.path.join(directory, MANIFEST))
    return buf.path
