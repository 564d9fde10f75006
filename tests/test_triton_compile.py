"""Every Triton kernel compiles for a real GPU (sm_90; some also sm_80), checked without one.

The interpreter (``TRITON_INTERPRET=1``) runs the kernels' Python, not Triton's compiler, so
type errors in loop-carried values, unsupported ops or too much shared memory would only
show on a GPU. This test runs this file as a script in a subprocess without the interpreter;
there ``cascade_rt.kernels`` take their GPU branches (``_common.INTERPRET`` is False). Each
host wrapper is called on small CPU tensors with a ``launch`` hook that records the kernel
and its arguments instead of running it; Triton's own argument binder then turns each
recorded launch into the signature, constexprs, divisibility attributes and options that a
real launch would compile (block sizes, ``num_warps`` and ``num_stages`` as the host code
picks them on a GPU), and it is compiled down to a cubin with Triton's bundled ptxas (no
driver needed); its shared memory must fit the architecture's per-block limit. One JSON
line: launch -> "ok" or the error.
"""
import json
import os
import subprocess
import sys

import pytest

#: launches compiled for sm_80 as well as sm_90 (the tensor-core paths)
_SM80 = ("varlen_attention_kernel", "linear_kernel")


def test_kernels_compile_for_gpu(tmp_path):
    pytest.importorskip("triton")
    try:
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
    except Exception as exc:  # a Triton build without the NVIDIA backend
        pytest.skip(f"triton has no NVIDIA backend: {exc}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # compile for real, not from a cache
    env["CUDA_VISIBLE_DEVICES"] = ""
    proc = subprocess.run([sys.executable, os.path.abspath(__file__)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    failed = {k: v for k, v in report.items() if v != "ok"}
    assert not failed, failed
    kernels = {k.split("[")[0] for k in report}
    assert kernels >= {"varlen_attention_kernel", "zero_tail_kernel", "add_layer_norm_kernel",
                       "exit_head_kernel", "compact_rows_kernel", "compact_tokens_kernel",
                       "scatter_exits_kernel", "pack_kernel", "unpack_kernel",
                       "linear_kernel", "embed_layer_norm_kernel"}, sorted(kernels)
    assert any("@sm80" in k for k in report)


# -- run as a script (no interpreter) -----------------------------------------------------------
_TYPES = {
    "float16": "fp16", "bfloat16": "bf16", "float32": "fp32", "float64": "fp64",
    "int8": "i8", "int16": "i16", "int32": "i32", "int64": "i64", "uint8": "u8", "bool": "i1",
}
_OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg")
#: opt-in shared memory per block (bytes): A100 (sm_80) 163 KiB, H100 (sm_90) 227 KiB
_MAX_SHARED = {80: 166912, 90: 232448}


class _Recorder:
    """A ``launch`` hook: ``launch(kernel)[grid](*args, **kw)`` records instead of running."""

    def __init__(self):
        self.launches = []

    def __call__(self, kernel):
        rec = self

        class _Grid:
            def __getitem__(self, grid):
                def call(*args, **kwargs):
                    rec.launches.append((kernel, args, kwargs))
                return call

        return _Grid()


def _jit_specialization(kernel, args, kwargs, target):
    """(signature, constexprs, attrs, options) exactly as ``kernel[grid](*args, **kwargs)``
    would compile them on ``target``: Triton's own binder, so ints equal to 1 become
    constexprs and 16-divisible ints/pointers get ``tt.divisibility`` as on a real launch.
    Falls back to plain types (no specialisation) when those Triton internals move."""
    import torch
    from triton.compiler import make_backend

    backend = make_backend(target)
    try:
        from triton.runtime.jit import create_function_from_signature

        binder = create_function_from_signature(kernel.signature, kernel.params, backend)
        bound, spec, opts = binder(*args, **kwargs)
        options, sig, const, attrs = kernel._pack_args(backend, kwargs, bound, spec, opts)
        return sig, const, attrs, options.__dict__
    except (ImportError, AttributeError, TypeError):
        pass
    sig, const, opts = {}, {}, {}
    values = dict(zip(kernel.arg_names, args))
    for k, v in kwargs.items():
        (opts if k in _OPTIONS else values).__setitem__(k, v)
    for p in kernel.params:
        v = values[p.name]
        if p.is_constexpr:
            sig[p.name], const[p.name] = "constexpr", v
        elif isinstance(v, torch.Tensor):
            sig[p.name] = "*" + _TYPES[str(v.dtype).removeprefix("torch.")]
        elif isinstance(v, bool):
            sig[p.name] = "i1"
        elif isinstance(v, int):
            sig[p.name] = "i32" if -2**31 <= v < 2**31 else "i64"
        else:
            sig[p.name] = "fp32"
    return sig, const, None, opts


def _launches():
    """Every kernel launch the host wrappers make, at GPU configs, on BERT-like shapes."""
    import torch

    from cascade_rt.kernels import _common
    from cascade_rt.kernels import add_layer_norm as kl
    from cascade_rt.kernels import compact as kc
    from cascade_rt.kernels import embed_layer_norm as kem
    from cascade_rt.kernels import exit_head as ke
    from cascade_rt.kernels import linear as kn
    from cascade_rt.kernels import pack as kp
    from cascade_rt.kernels import varlen_attention as ka

    assert not _common.INTERPRET, "run without TRITON_INTERPRET"
    rec = _Recorder()
    cu = torch.tensor([0, 100, 300, 301], dtype=torch.int32)
    T = 320
    for dt, dims in ((torch.float16, (32, 48, 64, 128)), (torch.bfloat16, (64,)), (torch.float32, (64,))):
        for d in dims:
            q = torch.zeros(T, 3, 12, d, dtype=dt)
            ka.varlen_attention(q[:, 0], q[:, 1], q[:, 2], cu, 200, launch=rec)
        for hidden in ((384, 768, 4096) if dt == torch.float16 else (768,)):
            x = torch.zeros(T, hidden, dtype=dt)
            w = torch.zeros(hidden, dtype=dt)
            kl.add_layer_norm(x, x, w, w, 1e-12, launch=rec)
            ids = torch.zeros(T, dtype=torch.int64)
            table = torch.zeros(512, hidden, dtype=dt)
            for types in (True, False):  # BERT-style and DistilBERT-style (no token types)
                kem.embed_layer_norm(ids, ids, ids if types else None, table, table,
                                     table[:2] if types else None, w, w, 1e-12, cu, launch=rec)
        for c in ((2, 256) if dt == torch.float16 else (3,)):
            x = torch.zeros(64, 768, dtype=dt)
            kc_w = torch.zeros(c, 768, dtype=dt)
            ke.exit_head(x, torch.zeros(768, 768, dtype=dt), torch.zeros(768, dtype=dt), kc_w,
                         torch.zeros(c, dtype=dt), 0.5, launch=rec)
    # BERT-base dense layers (768 -> 2304 QKV, 3072 -> 768 output, 768 -> 3072 + GELU) and
    # ragged widths (K not a multiple of BLOCK_K, odd N, no bias)
    x = torch.zeros(T, 3072, dtype=torch.float16)
    for act in kn.ACTIVATIONS:
        kn.linear(x[:, :768], torch.zeros(3072, 768, dtype=torch.float16),
                  torch.zeros(3072, dtype=torch.float16), cu, act, launch=rec)
    kn.linear(x, torch.zeros(768, 3072, dtype=torch.float16), None, cu, launch=rec)
    kn.linear(x[:, :100], torch.zeros(33, 100, dtype=torch.float16), None, cu, launch=rec)
    for dt in (torch.bfloat16, torch.float32):
        kn.linear(torch.zeros(T, 768, dtype=dt), torch.zeros(2304, 768, dtype=dt),
                  torch.zeros(2304, dtype=dt), cu, "gelu", launch=rec)
    exit_mask = torch.tensor([True, False, True])
    for tokens in (torch.zeros(T, 2, dtype=torch.int64), torch.zeros(T, 768, dtype=torch.float16),
                   torch.zeros(T, dtype=torch.bool)):
        kc.compact(exit_mask, tokens, cu, launch=rec)
    kc.scatter_exits(exit_mask, torch.arange(3), torch.zeros(3, 2), torch.zeros(3), 1,
                     torch.zeros(5, 2), torch.zeros(5), torch.zeros(5, dtype=torch.int64), launch=rec)
    mask = torch.ones(4, 128, dtype=torch.int64)
    for padded in (torch.zeros(4, 128, 2, dtype=torch.int64), torch.zeros(4, 128, dtype=torch.int32)):
        tokens, cu_p = kp.pack(padded, mask, launch=rec)
        kp.unpack(tokens, cu_p, 128, launch=rec)

    out, seen = [], set()
    for kernel, args, kwargs in rec.launches:
        ptrs = ",".join(str(a.dtype).removeprefix("torch.") for a in args if isinstance(a, torch.Tensor))
        cfg = ",".join(f"{k}={v}" for k, v in kwargs.items())
        name = f"{kernel.fn.__name__}[{ptrs};{cfg}]"
        if name not in seen:
            seen.add(name)
            out.append((name, kernel, args, kwargs))
    return out


def _compile_report() -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    report = {}
    for name, kernel, args, kwargs in _launches():
        # sm_80 too for the tensor-core kernels (once per dtype for the linear's activations)
        sm80 = name.split("[")[0] in _SM80 and kwargs.get("ACTIVATION", "gelu") == "gelu"
        archs = (80, 90) if sm80 else (90,)
        for arch in archs:
            key = f"{name}@sm{arch}"
            try:
                target = GPUTarget("cuda", arch, 32)
                sig, const, attrs, opts = _jit_specialization(kernel, args, kwargs, target)
                src = ASTSource(fn=kernel, signature=sig, constexprs=const, attrs=attrs)
                compiled = triton.compile(src, target=target, options=opts)
                shared = compiled.metadata.shared
                # a launch fails with OutOfResources past the device's per-block shared memory
                if shared > _MAX_SHARED[arch]:
                    report[key] = f"needs {shared} B of shared memory > {_MAX_SHARED[arch]} on sm{arch}"
                else:
                    report[key] = "ok"
            except Exception as exc:
                report[key] = f"{type(exc).__name__}: {str(exc)[:600]}"
    return report


if __name__ == "__main__":
    print(json.dumps(_compile_report()))
