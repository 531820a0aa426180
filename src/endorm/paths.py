"""Where endorm keeps its cache and finds the shared evaluation data."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The model cache: $ENDORM_CACHE, else the platform's user cache dir (e.g. ~/.cache/endorm)."""
    env = os.environ.get("ENDORM_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("endorm"))


def shared_data_dir() -> Path:
    """The evaluation data: $ENDORM_DATA, else ``../shared/data`` beside the repository checkout."""
    env = os.environ.get("ENDORM_DATA")
    if env:
        return Path(env).expanduser()
    repo = Path(__file__).resolve().parents[2]  # src/endorm/paths.py -> repo root
    return repo.parent / "shared" / "data"
