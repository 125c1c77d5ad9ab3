"""When two model names mean the same model: aliases (`nfnet` = `nfnet_l0`, `bert` = `bert-base-uncased`)
and spellings of a path or hub id (`google-bert/bert-base-uncased`, `./models/bert-base-uncased/`)."""
import os
import re
from typing import Any

from .image_encoders import ALIASES as IMAGE_ALIASES
from .text_encoders import ALIASES as TEXT_ALIASES


def canonical(name: str) -> str:
    name = str(name).rstrip("/")
    name = IMAGE_ALIASES.get(name, TEXT_ALIASES.get(name, name))
    return os.path.basename(name)


def same_model(a: str, b: str) -> bool:
    return canonical(a) == canonical(b)


def same_setting(key: str, a: Any, b: Any) -> bool:
    """Equal settings; model names (keys ending in 'encoder') compared as models, not strings."""
    return same_model(a, b) if key.endswith("encoder") else a == b


def slug(name: str) -> str:
    """The last component of a model name or path, safe as part of a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", os.path.basename(str(name).rstrip("/")))
