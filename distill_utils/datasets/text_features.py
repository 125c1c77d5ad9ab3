"""Frozen text features, computed once per (caption list, encoder) and cached on disk.

The cache key holds a hash of the normalised captions, a fingerprint of the encoder's config and
tokenizer files and the digest of its weights, so an edited caption file or a different checkpoint
is recomputed, never reused. Caches written before the key named the weights once (a `fingerprint`
of weights and files together) are read when captions, encoder name and weights agree.
"""
import hashlib
import os
from typing import List, Optional

import torch
from tqdm import tqdm

from networks.names import slug
from networks.text_encoders import TextEncoder, build_text_encoder, fingerprint, remember_weights_digest, weights_digest
from common.errors import UserError
from common.io import ensure_writable_dir, load_torch, save_torch


def captions_digest(texts: List[str]) -> str:
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()


def cache_path(cache_dir: str, tag: str, encoder_spec: str) -> str:
    name = f"{tag}__{slug(encoder_spec)[:40]}-{hashlib.sha1(encoder_spec.encode()).hexdigest()[:8]}.pt"
    return os.path.join(cache_dir, "text_features", name)


def encode_texts(encoder: TextEncoder, texts: List[str], batch_size: int = 256) -> torch.Tensor:
    chunks = [encoder.encode(texts[i:i + batch_size])
              for i in tqdm(range(0, len(texts), batch_size), desc="text features", leave=False)]
    return torch.cat(chunks)


def _same_key(found, key):
    if isinstance(found, dict) and "files" not in found and "fingerprint" in found:  # an older cache
        found, key = {k: v for k, v in found.items() if k != "fingerprint"}, {k: v for k, v in key.items() if k != "files"}
    return found == key


def _valid(cached, key, n):
    features = cached.get("features") if isinstance(cached, dict) and _same_key(cached.get("key"), key) else None
    return (torch.is_tensor(features) and features.dim() == 2 and len(features) == n and features.is_floating_point()
            and bool(torch.isfinite(features).all()))


def text_features(texts: List[str], encoder_spec: str, cache_dir: str, tag: str, device: str = "cpu",
                  encoder: Optional[TextEncoder] = None) -> torch.Tensor:
    """Features [len(texts), D] (float32, CPU) for `texts`, from the cache when it is valid.

    Where the encoder is not installed (a GPU machine the features were carried to), a cache made for the
    same captions and encoder name is used as it is: its files cannot be checked, and it says so.
    """
    try:
        key = {"captions": captions_digest(texts), "encoder": encoder_spec, "files": fingerprint(encoder_spec),
               "weights": weights_digest(encoder_spec)}
    except UserError as missing:
        return _cached_without_encoder(texts, encoder_spec, cache_dir, tag, missing)
    path = cache_path(cache_dir, tag, encoder_spec)
    if os.path.isfile(path):
        try:
            cached = load_torch(path, what="text feature cache")
        except UserError:
            cached = None
        if _valid(cached, key, len(texts)):
            return cached["features"]
        print(f"text feature cache {path} is stale or damaged (captions or encoder changed?): recomputing")
    encoder = encoder or build_text_encoder(encoder_spec, device)
    features = encode_texts(encoder, texts)
    ensure_writable_dir(os.path.dirname(path), "--feature_cache")
    save_torch({"key": key, "features": features}, path)
    return features


def _cached_without_encoder(texts, encoder_spec, cache_dir, tag, missing):
    path = cache_path(cache_dir, tag, encoder_spec)
    cached = load_torch(path, what="text feature cache") if os.path.isfile(path) else None
    then = cached.get("key", {}) if isinstance(cached, dict) and isinstance(cached.get("key"), dict) else {}
    files_then, weights_then = then.get("files", then.get("fingerprint")), then.get("weights")
    key = {"captions": captions_digest(texts), "encoder": encoder_spec, "files": files_then, "weights": weights_then}
    if weights_then is None or not _valid(cached, key, len(texts)):
        raise missing
    remember_weights_digest(encoder_spec, weights_then)  # manifests and subset configs name the same weights
    print(f"note: {missing}; using the cached features {path} (same captions and encoder name, encoder files "
          f"{files_then} not checkable here)")
    return cached["features"]
