"""Micro benchmarks: ``.venv/bin/python -m pytest bench/micro --benchmark-enable``.

Each op is timed on every backend that loads and accepts the inputs, beside the plain-torch
baseline it replaces, on CPU and (when present) CUDA. Group names put one op/shape/device per
table, so pytest-benchmark prints the backends and the baseline side by side. Add
``--benchmark-json bench/results/micro_<device>.json`` to keep the figures (the JSON carries
the machine info and the commit; each test's ``extra_info`` the device and torch version).
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    # the Triton backend runs under the interpreter on CPU: correct, never fast; not benchmarked
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@pytest.fixture
def run(benchmark, device):
    """``run(fn, *args)``: benchmark fn(*args) with a device sync inside the timed call."""

    def _run(fn, *args):
        fn(*args)  # warm up (compilation, caches)
        sync(device)
        benchmark.extra_info.update(device=str(device), torch=torch.__version__)

        def call():
            out = fn(*args)
            sync(device)
            return out

        return benchmark(call)

    return _run
