"""Import never fails or initialises CUDA; info reports every backend."""
import subprocess
import sys

import pytest
import torch

from cascade_rt import backends


def test_import_does_not_initialise_cuda():
    code = ("import torch, cascade_rt; import cascade_rt.ops, cascade_rt.backends;"
            "print(torch.cuda.is_initialized())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_info_lists_every_backend():
    out = subprocess.run([sys.executable, "-m", "cascade_rt.info"], capture_output=True, text=True, check=True)
    for name in backends.BACKEND_NAMES:
        assert name in out.stdout
    assert "reference  available" in out.stdout


def test_forced_backend_refusal_lists_reasons(monkeypatch):
    x = torch.zeros(2, 3)
    with backends.use_backend("reference"):
        assert backends.implementation("add_layer_norm", x)[0] == "reference"
    monkeypatch.setitem(backends._errors, "triton", "ImportError: pretend triton is missing")
    monkeypatch.delitem(backends._loaded, "triton", raising=False)
    with backends.use_backend("triton"):
        with pytest.raises(NotImplementedError, match="triton: not available .*pretend triton is missing"):
            backends.dispatch("add_layer_norm", x, x, x[0], x[0], 1e-5)


def test_cpu_name_tells_generations_apart(tmp_path):
    """A bare cloud name gets the family and model numbers that tell its generations apart; only
    the first processor's block is read; without /proc/cpuinfo the name comes from platform."""
    from cascade_rt.info import cpu_name

    block = "processor\t: {i}\nvendor_id\t: AuthenticAMD\ncpu family\t: {f}\nmodel\t\t: {m}\nmodel name\t: AMD EPYC\n"
    f = tmp_path / "cpuinfo"
    f.write_text(block.format(i=0, f=25, m=17) + "\n" + block.format(i=1, f=26, m=2) + "\n")
    assert cpu_name(str(f)) == "AMD EPYC (family 25, model 17)"
    f.write_text("processor\t: 0\nmodel name\t: Some CPU\n")
    assert cpu_name(str(f)) == "Some CPU"
    name = cpu_name(str(tmp_path / "missing"))
    assert isinstance(name, str) and name
