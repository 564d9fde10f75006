"""What a first GPU run needs of the CUDA/Triton paths, checked here where it can be.

Device guards around every Triton launch, forced backends refused up front when they cannot
run a forward, dead slots skipped on the sync-free path, the unpack bounds guard, the linear's
tile choice, and ``bench/gpu_check.sh`` refusing clearly without CUDA. GPU-only checks are
marked ``gpu``.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cascade_rt import CascadeBert, backends, native_backend, ops
from cascade_rt import reference as ref

from test_sync_free import LENGTHS, _padded, _thresholds_for, _tier

ROOT = Path(__file__).resolve().parent.parent


# -- item 2: every Triton op launches under its tensors' device ------------------------------
def test_every_triton_op_enters_the_device_guard(monkeypatch):
    from cascade_rt import triton_backend as tb

    from test_triton_ops import _op_samples

    entered = []

    @contextlib.contextmanager
    def record(t):
        entered.append(t.device)
        yield

    monkeypatch.setattr(tb, "_on_device", record)
    samples = _op_samples()
    for op in sorted(tb.OPS):
        entered.clear()
        tb.OPS[op](*samples[op])
        assert entered, f"triton {op} launched without entering the device guard"


@pytest.mark.gpu
def test_model_on_second_gpu_while_first_is_current():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    dev = torch.device("cuda:1")
    m = CascadeBert([_tier(1, 64, 2, 1).to(dev, torch.float16), _tier(2, 96, 3, 2).to(dev, torch.float16)], [0.5])
    ids, mask, types = _padded(LENGTHS, seed=3)
    m.set_thresholds(_thresholds_for(m, ids.to(dev), mask.to(dev), types.to(dev), "half_exit"))
    cpu = CascadeBert([_tier(1, 64, 2, 1), _tier(2, 96, 3, 2)], m.thresholds)
    want = cpu(ids, mask, types)
    with torch.cuda.device(0):
        for sync_free in (False, True):
            m.sync_free = sync_free
            got = m(ids.to(dev), mask.to(dev), types.to(dev))
            torch.testing.assert_close(got.logits.cpu(), want.logits, rtol=0, atol=3e-2)
        g = m.capture(max_batch=16, max_seqlen=40)
        got = g(ids.to(dev), mask.to(dev), types.to(dev))
    torch.testing.assert_close(got.logits.cpu(), want.logits, rtol=0, atol=3e-2)


# -- item 3: a forced backend that cannot run a forward is refused before any work ------------
def test_forced_native_on_cuda_names_the_missing_ops():
    if not backends.available("native"):
        pytest.skip("native backend not built")
    with backends.use_backend("native"):
        with pytest.raises(NotImplementedError) as e:
            backends.check_model_backend(torch.device("cuda"), False)
        msg = str(e.value)
        assert "CASCADE_RT_BACKEND=native" in msg and "varlen_attention" in msg and "linear" in msg
        if native_backend._WITH_CUDA:  # built with its CUDA kernels: only these two lack one
            assert "add_layer_norm" not in msg and "compact" not in msg
        else:
            assert "add_layer_norm" in msg and "compact" in msg
        backends.check_model_backend(torch.device("cpu"), True)  # CPU: every op is there
    with backends.use_backend("triton"):
        backends.check_model_backend(torch.device("cuda"), True)
    backends.check_model_backend(torch.device("cuda"), True)  # automatic choice: nothing to refuse


def test_forced_reference_refused_in_sync_free_mode_on_cuda():
    with backends.use_backend("reference"):
        backends.check_model_backend(torch.device("cuda"), False)
        backends.check_model_backend(torch.device("cpu"), True)  # host reads are no sync on CPU
        with pytest.raises(NotImplementedError, match="sync-free.*varlen_attention.*host"):
            backends.check_model_backend(torch.device("cuda"), True)


def test_model_forward_checks_the_forced_backend_first(monkeypatch):
    """The check runs at the start of each tier's forward (wired, not only defined)."""
    if not backends.available("native"):
        pytest.skip("native backend not built")
    m = CascadeBert([_tier(1, 16, 2, 1)], [])
    ids, mask, types = _padded([3, 5], seed=1)
    monkeypatch.setattr(native_backend, "missing_ops", lambda device: ("linear", "varlen_attention"))
    calls = []
    monkeypatch.setattr(m.tiers[0], "embed", lambda *a: calls.append(a))
    with backends.use_backend("native"):
        with pytest.raises(NotImplementedError, match="has no cpu linear, varlen_attention"):
            m(ids, mask, types)
    assert calls == []  # refused before the first op


# -- item 4: the sync-free path leaves dead slots alone --------------------------------------
triton_ops = pytest.importorskip("test_triton_ops")  # skips without Triton / interpreter
_cu_of, _poison, DEV = triton_ops._cu, triton_ops._poison, triton_ops.DEV


LOWP = [torch.float32, torch.float16, pytest.param(torch.bfloat16, marks=pytest.mark.gpu)]


@pytest.mark.parametrize("dtype", LOWP)
@pytest.mark.parametrize("n_live", [0, 5, 23, 37])
def test_linear_skips_dead_rows(dtype, n_live):
    from cascade_rt.kernels.linear import linear as k_linear

    T, K, N = 37, 48, 33
    x = torch.randn(T, K, device=DEV).to(dtype)
    x[n_live:] = float("nan")  # dead input rows may hold anything
    w = (torch.randn(N, K, device=DEV) / K ** 0.5).to(dtype)
    b = torch.randn(N, device=DEV).to(dtype)
    cu = _cu_of([n_live // 2, n_live - n_live // 2, 0])
    zeroed = k_linear(x, w, b, cu, "gelu", True, out=_poison((T, N), dtype))
    skipped = k_linear(x, w, b, cu, "gelu", False, out=_poison((T, N), dtype))
    assert torch.equal(skipped[:n_live], zeroed[:n_live])  # live rows: the same kernel result
    assert not torch.isnan(zeroed).any() and (zeroed[n_live:] == 0).all()
    assert torch.isnan(skipped[n_live:]).all(), "dead rows were written"
    if dtype == torch.float32:
        want = ref.linear_ref(x.double(), w.double(), b.double(), cu, "gelu")
        torch.testing.assert_close(skipped[:n_live].double(), want[:n_live], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", LOWP)
@pytest.mark.parametrize("n_live", [0, 1, 17, 40])
def test_add_layer_norm_skips_dead_rows(dtype, n_live):
    from cascade_rt.kernels.add_layer_norm import add_layer_norm as k_aln

    N, H = 29, 40  # n_live 40 > N: the count is clamped to the rows there are
    x, r = torch.randn(N, H, device=DEV).to(dtype), torch.randn(N, H, device=DEV).to(dtype)
    w, b = torch.randn(H, device=DEV).to(dtype), torch.randn(H, device=DEV).to(dtype)
    x[n_live:] = float("nan")
    cu = _cu_of([n_live, 0])
    full = k_aln(x, r, w, b, 1e-5, out=_poison((N, H), dtype))
    live = k_aln(x, r, w, b, 1e-5, cu, out=_poison((N, H), dtype))
    n = min(n_live, N)
    assert torch.equal(live[:n], full[:n])
    assert torch.isnan(live[n:]).all(), "dead rows were written"
    want = ref.add_layer_norm_ref(x.double(), r.double(), w.double(), b.double(), 1e-5)
    tol = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}[dtype]
    torch.testing.assert_close(live[:n].double(), want[:n], atol=tol, rtol=tol)


def test_linear_and_layer_norm_skip_property():
    """Any shape and live count: live rows as with zeros written, dead rows never written."""
    hyp = pytest.importorskip("hypothesis")
    st = hyp.strategies

    from cascade_rt.kernels.add_layer_norm import add_layer_norm as k_aln
    from cascade_rt.kernels.linear import linear as k_linear

    @hyp.settings(max_examples=12, deadline=None, database=None)
    @hyp.given(T=st.integers(1, 40), K=st.integers(1, 40), N=st.integers(1, 40),
               live=st.floats(0, 1.2), seed=st.integers(0, 2**16))
    def check(T, K, N, live, seed):
        g = torch.Generator().manual_seed(seed)
        n_live = int(live * T)
        x = torch.randn(T, K, generator=g).to(DEV)
        w, b = torch.randn(N, K, generator=g).to(DEV), torch.randn(N, generator=g).to(DEV)
        cu = _cu_of([n_live])
        full = k_linear(x, w, b, cu, "relu", True, out=_poison((T, N), torch.float32))
        part = k_linear(x, w, b, cu, "relu", False, out=_poison((T, N), torch.float32))
        n = min(n_live, T)
        assert torch.equal(part[:n], full[:n]) and torch.isnan(part[n:]).all()
        r = torch.randn(T, K, generator=g).to(DEV)
        lw, lb = torch.randn(K, generator=g).to(DEV), torch.randn(K, generator=g).to(DEV)
        full = k_aln(x, r, lw, lb, 1e-5, out=_poison((T, K), torch.float32))
        part = k_aln(x, r, lw, lb, 1e-5, cu, out=_poison((T, K), torch.float32))
        assert torch.equal(part[:n], full[:n]) and torch.isnan(part[n:]).all()

    check()


def test_varlen_attention_skips_dead_tail():
    from cascade_rt.kernels.varlen_attention import varlen_attention as k_va

    lens = [3, 1, 6, 0]
    cu = _cu_of(lens)
    T, H, D = 14, 2, 16
    qkv = torch.randn(T, 3, H, D, device=DEV)
    zeroed = k_va(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu, 6, out=_poison((T, H, D), torch.float32))
    skipped = k_va(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu, 6, None, False, out=_poison((T, H, D), torch.float32))
    assert torch.equal(skipped[:10], zeroed[:10]) and (zeroed[10:] == 0).all()
    assert torch.isnan(skipped[10:]).all()


def test_ops_take_the_dead_row_arguments_on_every_backend():
    """The new trailing arguments reach each backend, and live rows match the reference."""
    T, K, N = 13, 24, 20
    x, w, bias = torch.randn(T, K), torch.randn(N, K) / 5, torch.randn(N)
    h, r, g, bb = torch.randn(T, K), torch.randn(T, K), torch.randn(K), torch.randn(K)
    qkv = torch.randn(T, 3, 2, 12)
    cu = torch.tensor([0, 4, 9, 9], dtype=torch.int32)
    want_lin = ref.linear_ref(x, w, bias, cu, "relu")
    want_ln = ref.add_layer_norm_ref(h, r, g, bb, 1e-6)
    want_att = ref.varlen_attention_ref(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu, 5)
    for name in backends.BACKEND_NAMES:
        if not backends.available(name):
            continue
        with backends.use_backend(name):
            lin = ops.linear(x, w, bias, cu, "relu", zero_dead=False)
            ln = ops.add_layer_norm(h, r, g, bb, 1e-6, cu)
            att = ops.varlen_attention(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu, 5, zero_dead=False)
        torch.testing.assert_close(lin[:9], want_lin[:9], atol=1e-5, rtol=1e-5, msg=name)
        torch.testing.assert_close(ln[:9], want_ln[:9], atol=1e-5, rtol=1e-5, msg=name)
        torch.testing.assert_close(att[:9], want_att[:9], atol=1e-5, rtol=1e-5, msg=name)


def test_sync_free_embeddings_gather_only_live_slots(monkeypatch):
    """Sync-free tiers embed through ops.embed_layer_norm with the live count (so a backend may
    skip the dead slots' gathers), and its live rows equal the exact path's embeddings."""
    tier = _tier(2, 32, 2, 7)
    ids, mask, types = _padded([3, 6, 1], seed=5)
    model = CascadeBert([tier], [])
    model.sync_free = True  # upper-bound shapes: the packed batch keeps dead slots
    batch = model.pack(ids, mask, types)
    T = batch.input_ids.shape[0]
    calls = []
    real = ops.embed_layer_norm

    def spy(*args):
        calls.append(args[-1])
        return real(*args)

    monkeypatch.setattr(ops, "embed_layer_norm", spy)
    exact = tier.embed(batch.input_ids, batch.token_type_ids, batch.cu_seqlens)
    # the exact path embeds every slot: one op on the CPU (its native kernel), the gathers +
    # add_layer_norm on CUDA
    assert calls == ([None] if tier.device.type == "cpu" else [])
    calls.clear()
    bounded = tier.embed(batch.input_ids, batch.token_type_ids, batch.cu_seqlens, sync_free=True)
    assert len(calls) == 1 and calls[0] is batch.cu_seqlens
    live = int(batch.cu_seqlens[-1])
    assert live < T, "the batch must have dead slots"
    torch.testing.assert_close(bounded[:live], exact[:live], atol=1e-5, rtol=1e-5)
    for name in backends.BACKEND_NAMES:
        if backends.available(name):
            with backends.use_backend(name):
                got = tier.embed(batch.input_ids, batch.token_type_ids, batch.cu_seqlens, sync_free=True)
            torch.testing.assert_close(got[:live], exact[:live], atol=1e-5, rtol=1e-5, msg=name)


def test_opcheck_with_dead_row_arguments():
    """Unwritten dead rows hold whatever the allocator left, so the eager-vs-traced output
    comparison runs with every row live; schema and fake tensors also with dead rows."""
    from cascade_rt import triton_backend as tb

    x = torch.randn(11, 24, device=DEV)
    qkv = torch.randn(11, 3, 2, 16, device=DEV)
    for cu, utils in ((_cu_of([4, 7]), None),
                      (_cu_of([4, 5, 0]), ("test_schema", "test_faketensor", "test_autograd_registration"))):
        kw = {} if utils is None else {"test_utils": utils}
        torch.library.opcheck(torch.ops.cascade_rt_triton.linear,
                              (x, torch.randn(20, 24, device=DEV), None, cu, "gelu", False), **kw)
        torch.library.opcheck(torch.ops.cascade_rt_triton.add_layer_norm,
                              (x, torch.randn(11, 24, device=DEV), torch.randn(24, device=DEV),
                               torch.randn(24, device=DEV), 1e-5, cu), **kw)
        torch.library.opcheck(torch.ops.cascade_rt_triton.varlen_attention,
                              (qkv[:, 0], qkv[:, 1], qkv[:, 2], cu, 7, None, False), **kw)
    cu = _cu_of([4, 7])
    assert tb.why_not("add_layer_norm", x, x, x[0], x[0], 1e-5, cu.long()) is not None


# -- item 7: unpack never reads past the tokens there are ------------------------------------
def test_triton_unpack_bounds_guard():
    """cu_seqlens pointing past T (malformed): the slots past T read as zero, as the CUDA
    kernel and the reference do, instead of reading out of bounds."""
    from cascade_rt.kernels.pack import unpack as k_unpack

    T = 7
    tokens = torch.arange(1, T + 1, device=DEV, dtype=torch.int64)[:, None].repeat(1, 3)
    # a guard-less kernel would read tokens[7:11] from the same allocation; make it visible
    big = torch.full((T + 8, 3), 555, dtype=torch.int64, device=DEV)
    big[:T] = tokens
    cu = torch.tensor([0, 4, 11], dtype=torch.int32, device=DEV)
    got = k_unpack(big[:T], cu, 8, out=_poison((2, 8, 3), torch.int64))
    want = ref.unpack_ref(big[:T], cu, 8)
    assert torch.equal(got, want)
    assert (got[1, 3:] == 0).all() and torch.equal(got[1, :3], tokens[4:7])


# -- item 5: the linear's tile follows the shape -----------------------------------------------
def test_linear_tiles_fill_the_gpu():
    """Under the interpreter _config takes its CPU branch; the GPU branch is evaluated here
    directly: the grid of the chosen tile covers every SM once when any tile can, and the
    large tile is kept for large outputs."""
    import triton

    from cascade_rt.kernels import linear as kl

    monkey = pytest.MonkeyPatch()
    monkey.setattr(kl, "INTERPRET", False)
    try:
        for M, N in ((20000, 768), (3700, 768), (1024, 768), (1024, 2304), (300, 3072), (16, 32)):
            for sms in (132, 108, 78):
                cfg = kl._config(M, N, 768, torch.float16, sms)
                tile = (cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"], cfg["num_warps"], cfg["num_stages"])
                assert tile in kl.TENSOR_CORE_TILES
                ctas = triton.cdiv(M, cfg["BLOCK_M"]) * triton.cdiv(N, cfg["BLOCK_N"])
                fits = [t for t in kl.TENSOR_CORE_TILES if triton.cdiv(M, t[0]) * triton.cdiv(N, t[1]) >= sms]
                if fits:
                    assert ctas >= sms and tile == fits[0], (M, N, sms, tile)
                else:
                    assert tile == kl.TENSOR_CORE_TILES[-1]
        assert kl._config(20000, 3072, 768, torch.float16)["BLOCK_M"] == 128
        assert kl._config(1024, 768, 768, torch.float16)["BLOCK_M"] == 64  # 8x6 big tiles < 132
        assert kl.num_sms(torch.device("cpu")) == kl.DEFAULT_SMS
    finally:
        monkey.undo()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_every_linear_tile_matches_cublas(monkeypatch, dtype):
    """Each tile the shape rule may pick, forced at BERT-base shapes with a partly live
    block: live rows within twice cuBLAS's own error against fp64, dead rows untouched."""
    from cascade_rt.kernels import linear as kl

    T, K, N, n_live = 1000, 768, 3072, 701
    x = torch.randn(T, K, device="cuda").to(dtype)
    w = (torch.randn(N, K, device="cuda") / K ** 0.5).to(dtype)
    b = torch.randn(N, device="cuda").to(dtype)
    cu = torch.tensor([0, 300, n_live], dtype=torch.int32, device="cuda")
    want = ref.linear_ref(x.double(), w.double(), b.double(), cu, "gelu")[:n_live]
    base_err = (F.gelu(F.linear(x[:n_live], w, b)).double() - want).abs().max().item()
    for bm, bn, bk, warps, stages in kl.TENSOR_CORE_TILES:
        cfg = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, num_warps=warps, num_stages=stages)
        monkeypatch.setattr(kl, "_config", lambda *a, cfg=cfg: dict(cfg))
        got = kl.linear(x, w, b, cu, "gelu", False, out=_poison((T, N), dtype, "cuda"))
        err = (got[:n_live].double() - want).abs().max().item()
        assert err <= 2 * base_err + 1e-5, (cfg, err, base_err)
        assert torch.isnan(got[n_live:]).all()


_COMPILE_TILES = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import torch, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import test_triton_compile as tc
from cascade_rt.kernels import linear as kl
report, launches = {}, {}
for tile in kl.TENSOR_CORE_TILES:
    bm, bn, bk, warps, stages = tile
    kl._config = lambda M, N, K, dtype, sms=0, t=tile: dict(BLOCK_M=t[0], BLOCK_N=t[1], BLOCK_K=t[2],
                                                           GROUP_M=8, num_warps=t[3], num_stages=t[4])
    rec = tc._Recorder()
    cu = torch.tensor([0, 100, 300], dtype=torch.int32)
    kl.linear(torch.zeros(320, 768, dtype=torch.float16), torch.zeros(3072, 768, dtype=torch.float16),
              torch.zeros(3072, dtype=torch.float16), cu, "gelu", False, launch=rec)
    launches[str(tile)] = rec.launches[0]
# the sync-free variants of the other kernels: LayerNorm over live rows, attention without
# the dead-tail zeroing
from cascade_rt.kernels import add_layer_norm as kaln
from cascade_rt.kernels import varlen_attention as kva
rec = tc._Recorder()
x = torch.zeros(320, 768, dtype=torch.float16)
kaln.add_layer_norm(x, x, x[0], x[0], 1e-12, cu, launch=rec)
q = torch.zeros(320, 3, 12, 64, dtype=torch.float16)
kva.varlen_attention(q[:, 0], q[:, 1], q[:, 2], cu, 200, None, False, launch=rec)
for kernel, args, kwargs in rec.launches:
    launches[kernel.fn.__name__] = (kernel, args, kwargs)
target = GPUTarget("cuda", 90, 32)
for name, (kernel, args, kwargs) in launches.items():
    try:
        sig, const, attrs, opts = tc._jit_specialization(kernel, args, kwargs, target)
        c = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=const, attrs=attrs),
                           target=target, options=opts)
        report[name] = "ok" if c.metadata.shared <= tc._MAX_SHARED[90] else f"shared {c.metadata.shared}"
    except Exception as exc:
        report[name] = f"{type(exc).__name__}: {str(exc)[:300]}"
print(json.dumps(report))
"""


def test_every_linear_tile_compiles_for_sm90(tmp_path):
    """Each tile the shape rule may pick, and the sync-free kernel variants (dead rows left
    unwritten), compile to sm_90 cubins within shared memory (the GPU-config compile test
    reaches only the tiles its shapes select, and the default variants)."""
    try:
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
    except Exception as exc:
        pytest.skip(f"triton has no NVIDIA backend: {exc}")
    import json

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    env["CUDA_VISIBLE_DEVICES"] = ""
    proc = subprocess.run([sys.executable, "-c", _COMPILE_TILES, str(ROOT / "tests")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(report) == 6 and all(v == "ok" for v in report.values()), report
    assert {"add_layer_norm_kernel", "varlen_attention_kernel"} <= set(report)


# -- bench/gpu_check.sh: ready to run on a GPU, refuses clearly elsewhere ------------------------
def _load_bench(name):
    from conftest import load_bench

    return load_bench(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the script would run for real")
def test_gpu_check_script_refuses_without_cuda(tmp_path):
    out = tmp_path / "results"
    env = dict(os.environ, PYTHON=sys.executable, GPU_CHECK_OUT=str(out), PATH="/usr/bin:/bin")
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, (proc.stdout[-2000:], proc.stderr[-2000:])
    assert "refusing to run: no CUDA device is visible" in proc.stderr
    assert torch.__version__ in proc.stderr  # says which torch it asked
    assert not out.exists(), "nothing is written when it refuses"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("name", ["gpu_micro", "gpu_check"])
def test_gpu_bench_scripts_refuse_without_cuda(name, tmp_path, capsys):
    mod = _load_bench(name)  # imports and compiles without a GPU
    assert mod.main(["--out-dir", str(tmp_path / "r")]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_gpu_check_goals_read_the_results(tmp_path):
    import json

    gc = _load_bench("gpu_check")
    sync = {"syncs_per_forward": [0, 0, 0]}
    rows = gc.goals(tmp_path, sync)
    assert [r["measured"] for r in rows] == [None, None, None, None, 0]
    assert [r["met"] for r in rows] == [None, None, None, None, True]
    tier = {"results": [
        {"model": "bert-base", "batch": 8, "avg_len_frac": 0.6, "max_len": 128, "speedup": 1.4},
        {"model": "bert-base", "batch": 256, "avg_len_frac": 0.6, "max_len": 128, "speedup": 2.3},
        {"model": "bert-base", "batch": 256, "avg_len_frac": 0.3, "max_len": 128, "speedup": 4.0}]}
    (tmp_path / "e2e_tier_cuda.json").write_text(json.dumps(tier))
    for n, ratios, share in ((2, [0.95, 0.97], 0.01), (3, [0.88, 0.93], 0.04)):
        rec = {"config": {"boundary": {"boundary_share": share}},
               "results": [{"measured_over_analytic": r} for r in ratios]}
        (tmp_path / f"e2e_cascade_{n}tier_cuda.json").write_text(json.dumps(rec))
    (tmp_path / "e2e_cascade_2tier_sync_free_cuda.json").write_text(
        json.dumps({"results": [{"measured_over_analytic": 0.92}, {"measured_over_analytic": 0.99}]}))
    rows = gc.goals(tmp_path, {"syncs_per_forward": [0, 2, 0]})
    assert [r["measured"] for r in rows] == [2.3, 0.88, 0.92, 0.04, 2]
    assert rows[0]["detail"] == "bert-base batch 256"
    assert [r["met"] for r in rows] == [True, False, True, False, False]


def test_gpu_check_reads_the_test_report(tmp_path):
    gc = _load_bench("gpu_check")
    assert gc.summarise_tests(tmp_path / "none.xml") is None
    xml = tmp_path / "t.xml"
    xml.write_text(
        '<testsuites><testsuite tests="4" failures="1" errors="0" skipped="1">'
        '<testcase classname="tests.test_a" name="test_ok"/>'
        '<testcase classname="tests.test_a" name="test_bad"><failure message="x"/></testcase>'
        '<testcase classname="tests.test_b" name="test_skip"><skipped/></testcase>'
        '<testcase classname="tests.test_b" name="test_ok2"/></testsuite></testsuites>')
    got = gc.summarise_tests(xml)
    assert got["passed"] == 2 and got["failures"] == 1 and got["skipped"] == 1
    assert got["failed"] == ["tests.test_a::test_bad"]
