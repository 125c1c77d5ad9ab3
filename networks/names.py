"""When two model names mean the same model: aliases (`nfnet` = `nfnet_l0`, `bert` = `bert-base-uncased`)
and spellings of a path or hub id (`google-bert/bert-base-uncased`, `./models/bert-base-uncased/`)."""
import os
import re

from .image_encoders import ALIASES as IMAGE_ALIASES
from .text_encoders import ALIASES as TEXT_ALIASES


def canonical(name):
    name = str(name).rstrip("/")
    name = IMAGE_ALIASES.get(name, TEXT_ALIASES.get(name, name))
    return os.path.basename(name)


def same_model(a, b):
    return canonical(a) == canonical(b)


def same_setting(key, a, b):
    """Equal settings; model names (keys ending in 'encoder') compared as models, not strings."""
    return same_model(a, b) if key.endswith("encoder") else a == b


def slug(name):
    """The last component of a model name or path, safe as part of a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", os.path.basename(str(name).rstrip("/")))
