"""Where a model or adapter lives: a Hub repository id, or a path on this machine."""

from __future__ import annotations

import os

from huggingface_hub.utils import HFValidationError, validate_repo_id

__all__ = ["is_hub_id", "is_local_path"]


def is_hub_id(name: str) -> bool:
    """Whether ``name`` can be a Hub repository id (``name`` or ``namespace/name``), not a local path."""
    if not name or name.startswith((".", "/", "~")) or "\\" in name:
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def is_local_path(name: str) -> bool:
    """Whether ``name`` means a path on this machine: it exists here, or it cannot be a Hub id (``is_hub_id``)."""
    return os.path.exists(os.path.expanduser(name)) or not is_hub_id(name)
