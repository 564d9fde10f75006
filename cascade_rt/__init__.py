"""cascade_rt: a runtime for cascaded BERT classifiers.

``import cascade_rt`` never fails because a native part is missing and never initialises
CUDA; ``python -m cascade_rt.info`` says what is available and why not.
"""
from __future__ import annotations

__version__ = "0.1.0"

from . import backends, flops, ops, reference  # noqa: E402
from .cascade import CascadeBert, CascadeOutput, pool_log_probs  # noqa: E402
from .checkpoint import CheckpointError, load_tier, make_classifier_checkpoint  # noqa: E402
from .config import TierConfig  # noqa: E402
from .inputs import InputError  # noqa: E402
from .pipeline import Pipeline, pipeline  # noqa: E402
from .tier import Tier  # noqa: E402

__all__ = [
    "CascadeBert",
    "CascadeOutput",
    "pool_log_probs",
    "Tier",
    "TierConfig",
    "CheckpointError",
    "InputError",
    "pipeline",
    "Pipeline",
    "load_tier",
    "make_classifier_checkpoint",
    "ops",
    "reference",
    "backends",
    "flops",
    "__version__",
]
