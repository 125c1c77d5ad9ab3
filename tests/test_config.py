"""distill_utils/config.py: the entry scripts build the same typed settings from the same flags, and the one
NetworkSpec.identity() is what buffer manifests and distilled files record and what their checks compare."""
import importlib

import pytest
import torch

import buffer
import evaluate
from common.errors import UserError
from common.io import save_json
from distill_utils import settings
from distill_utils.config import DataConfig, DistillConfig, EvalProtocol, ExpertConfig, NetworkSpec, from_flags
from distill_utils.distill_loop import PhaseRun, RunContext
from distill_utils.files.buffers import BufferDir
from distill_utils.files.run_dir import RunDir
from distill_utils.files.subset_file import check_subset
from distill_utils.method.learnable_set import SynOptim, SyntheticSet
from distill_utils.method.similarity import make_similarity
from distill_utils.phases import Phase
from networks.dual_encoder import NetConfig, NetworkFactory

distill = importlib.import_module("distill_ptm-st")
TEXT_DIM = 32  # the tiny BERT's hidden size


@pytest.fixture
def flags(tiny_text_encoder, tmp_path):
    return ["--dataset", "synthetic", "--ann_root", str(tmp_path / "data"), "--text_encoder", tiny_text_encoder,
            "--image_encoder", "convnet_w8_d2_e32", "--image_size", "16", "--image_trainable", "--device", "cpu",
            "--out_embedding", "24", "--loss_type", "InfoNCE"]


def _parsed(script, flags):
    return settings.parse_args(script.make_parser(), flags)


def test_every_entry_script_builds_the_same_network_and_data_settings(flags):
    specs = [from_flags(NetworkSpec, _parsed(s, flags)) for s in (buffer, distill, evaluate)]
    assert specs[0] == specs[1] == specs[2]
    assert specs[0].net_config(TEXT_DIM) == NetConfig("convnet_w8_d2_e32", 16, TEXT_DIM, True, 24, None, None)
    data = [from_flags(DataConfig, _parsed(s, flags)) for s in (buffer, distill, evaluate)]
    assert data[0] == data[1] == data[2] and data[0].image_size == 16


def test_a_setting_without_a_flag_keeps_its_default(flags):
    protocol = from_flags(EvalProtocol, _parsed(distill, flags + ["--num_eval", "3"]))
    assert protocol == EvalProtocol(num_eval=3, loss_type="InfoNCE")  # momentum, eval_points, ... as defined
    expert = from_flags(ExpertConfig, _parsed(buffer, flags))
    assert expert.recorded() == {"train_epochs": 10, "lr_teacher_img": 0.1, "lr_teacher_txt": 0.1, "mom": 0.0,
                                 "l2": 0.0, "batch_train": 128, "loss_type": "InfoNCE"}


def _changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    return "convnet_w4_d2_e32" if value == "convnet_w8_d2_e32" else value + "_other"


def test_identity_is_recorded_by_manifest_and_subset_and_compared_by_the_checks(flags, tmp_path):
    spec = from_flags(NetworkSpec, _parsed(buffer, flags))
    identity = spec.identity()
    assert set(identity) == {"dataset", "image_encoder", "text_encoder", "text_encoder_weights", "image_size",
                             "image_trainable", "out_embedding"}
    net = NetworkFactory(spec.net_config(TEXT_DIM)).build(seed=0)
    args = _parsed(buffer, flags)
    manifest = buffer.manifest_for(spec, from_flags(ExpertConfig, args), from_flags(DataConfig, args), net)
    assert {k: manifest[k] for k in identity} == identity

    cfg = from_flags(DistillConfig, _parsed(distill, flags))
    ctx = RunContext(cfg, RunDir(str(tmp_path / "run"), "r", {}, False), None, None, None, None,
                     {**identity, "text_dim": TEXT_DIM}, torch.device("cpu"))
    syn = SyntheticSet(torch.zeros(2, 3, 16, 16), torch.zeros(2, TEXT_DIM), make_similarity("full", 2), 0.1, 0.1,
                       SynOptim(1.0, 1.0, 1.0, 1.0))
    config = PhaseRun(ctx, Phase(0, "buf", 0, 1, 2, 3), [], syn, None, None, None).subset_config(3)
    assert {k: config[k] for k in identity} == identity
    assert check_subset(syn.subset(config), "d.pt", {**identity, "text_dim": TEXT_DIM}) == []

    directory = tmp_path / "buf"
    directory.mkdir()
    save_json(manifest, str(directory / "manifest.json"))
    BufferDir(str(directory)).check_identity(identity)
    for key, value in identity.items():
        with pytest.raises(UserError, match=f"trained with {key}="):
            BufferDir(str(directory)).check_identity({**identity, key: _changed(value)})
