"""Where model weights come from: a local path, the local Hugging Face cache, or the hub when reachable.

Nothing here waits on a dead network: the hub is only contacted after a 3-second probe says
it answers, and never when HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE is set.
"""
import functools
import os
import socket
from urllib.parse import urlparse


def offline_requested() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


@functools.lru_cache(maxsize=None)
def hub_reachable(timeout: float = 3.0) -> bool:
    if offline_requested():
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def looks_like_path(name: str) -> bool:
    """A hub id is 'name' or 'owner/name'; anything else is meant as a local path."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1
