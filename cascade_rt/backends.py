"""Which implementation runs each op.

A backend is a module that exposes

* ``OPS``: ``dict[str, Callable]``: op name -> implementation with the op's exact signature;
* ``why_not(op: str, *args) -> str | None``: ``None`` when it can take these arguments, else
  one line saying why not (wrong device, dtype, head dim, ...);
* optionally ``AVAILABLE_REASON``: raised at import as an exception when it cannot load.

Backends, by name:

* ``native``: the C++/CUDA extension built from ``csrc/`` (CPU and CUDA implementations);
  ``cuda`` is accepted as another name for it.
* ``triton``: the Triton kernels in ``cascade_rt.kernels`` (CUDA tensors; CPU tensors only
  under ``TRITON_INTERPRET=1``).
* ``reference``: plain PyTorch (``cascade_rt.reference``), always available.

Dispatch walks the priority list for the tensors' device and takes the first backend that
accepts the arguments; ``CASCADE_RT_BACKEND=reference|triton|native|cuda`` (or
:func:`set_backend`) forces one. When nothing can take an input the error lists every
backend's reason.
"""
from __future__ import annotations

import importlib
import os
from contextlib import contextmanager
from typing import Callable, Iterator

import torch

__all__ = [
    "BACKEND_NAMES",
    "dispatch",
    "available",
    "load_error",
    "priority",
    "set_backend",
    "get_backend",
    "use_backend",
    "implementation",
    "MODEL_OPS",
    "check_model_backend",
]

BACKEND_NAMES = ("native", "triton", "reference")
_ALIASES = {"cuda": "native", "cpp": "native", "ref": "reference"}
_MODULES = {
    "native": "cascade_rt.native_backend",
    "triton": "cascade_rt.triton_backend",
    "reference": "cascade_rt.reference_backend",
}
# Priority per device type. Tuned by measurement; see bench/.
_PRIORITY = {
    "cuda": ("triton", "native", "reference"),
    "cpu": ("native", "reference"),
}
_DEFAULT_PRIORITY = ("native", "reference")

_loaded: dict[str, object] = {}
_errors: dict[str, str] = {}
_forced: str | None = None


def _canonical(name: str) -> str:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in BACKEND_NAMES:
        raise ValueError(
            f"unknown cascade_rt backend {name!r}; expected one of "
            f"{', '.join(BACKEND_NAMES + tuple(_ALIASES))}"
        )
    return key


def set_backend(name: str | None) -> None:
    """Force every op onto one backend (``None``: automatic choice)."""
    global _forced
    _forced = None if name is None else _canonical(name)


def get_backend() -> str | None:
    """The forced backend, or ``None`` when chosen per op and device."""
    return _forced


@contextmanager
def use_backend(name: str | None) -> Iterator[None]:
    """Context manager form of :func:`set_backend`."""
    prev = _forced
    set_backend(name)
    try:
        yield
    finally:
        set_backend(prev)


def _module(name: str):
    if name in _loaded:
        return _loaded[name]
    if name in _errors:
        return None
    try:
        mod = importlib.import_module(_MODULES[name])
    except Exception as exc:  # a missing optional backend must never break import
        _errors[name] = f"{type(exc).__name__}: {exc}"
        return None
    _loaded[name] = mod
    return mod


def available(name: str) -> bool:
    """Whether backend ``name`` loaded (it may still refuse particular inputs)."""
    return _module(_canonical(name)) is not None


def load_error(name: str) -> str | None:
    """Why backend ``name`` could not load, or ``None``."""
    name = _canonical(name)
    _module(name)
    return _errors.get(name)


def priority(device_type: str) -> tuple[str, ...]:
    """Backends tried for tensors on ``device_type``, best first."""
    if _forced is not None:
        return (_forced,)
    return _PRIORITY.get(device_type, _DEFAULT_PRIORITY)


def _device_of(args) -> torch.device:
    for a in args:
        if isinstance(a, torch.Tensor):
            return a.device
    return torch.device("cpu")


def implementation(op: str, *args) -> tuple[str, Callable]:
    """The backend name and function that would run ``op`` on ``args``."""
    dev = _device_of(args)
    reasons = []
    for name in priority(dev.type):
        mod = _module(name)
        if mod is None:
            reasons.append(f"{name}: not available ({_errors[name]})")
            continue
        fn = getattr(mod, "OPS", {}).get(op)
        if fn is None:
            reasons.append(f"{name}: has no {op}")
            continue
        why = mod.why_not(op, *args)
        if why:
            reasons.append(f"{name}: {why}")
            continue
        return name, fn
    raise NotImplementedError(
        f"cascade_rt: no backend can run {op} on these inputs (device {dev}"
        + (f", forced to {_forced!r}" if _forced else "")
        + "):\n  "
        + "\n  ".join(reasons)
    )


#: the ops a cascade forward runs (packing, every layer, the exit decision, compaction)
MODEL_OPS = ("pack", "embed_layer_norm", "varlen_attention", "add_layer_norm", "linear", "exit_head",
             "compact", "scatter_exits")
#: reference ops that read data back to the host (a device sync on CUDA)
_REFERENCE_HOST_READS = ("varlen_attention",)


def check_model_backend(device: torch.device, sync_free: bool = False) -> None:
    """Refuse, before any work, a forced backend that cannot run a whole forward on ``device``.

    Nothing to check when no backend is forced. A forced backend that lacks some of
    :data:`MODEL_OPS` on this device (the native extension has no CUDA ``varlen_attention``
    or ``linear``) raises one ``NotImplementedError`` naming the missing ops, instead of
    failing at the first layer; so does ``reference`` on CUDA in sync-free mode, whose
    attention reads row bounds back to the host (a device sync).
    """
    if _forced is None:
        return
    how = f"CASCADE_RT_BACKEND={_forced} (or use_backend({_forced!r}))"
    mod = _module(_forced)
    if mod is None:
        raise NotImplementedError(f"{how}: the {_forced} backend is not available ({_errors[_forced]})")
    missing_fn = getattr(mod, "missing_ops", None)
    missing = [op for op in MODEL_OPS if op not in getattr(mod, "OPS", {})]
    if missing_fn is not None:
        missing += [op for op in missing_fn(device) if op not in missing]
    if missing:
        raise NotImplementedError(
            f"{how} cannot run a model on {device}: it has no {device.type} "
            f"{', '.join(missing)}; force another backend or leave the choice automatic"
        )
    if _forced == "reference" and sync_free and device.type == "cuda":
        raise NotImplementedError(
            f"{how} cannot run the sync-free forward on {device}: the reference "
            f"{', '.join(_REFERENCE_HOST_READS)} reads row bounds back to the host (a device sync); "
            "force triton, leave the choice automatic, or set sync_free = False"
        )


def dispatch(op: str, *args):
    """Run ``op`` on the best backend that accepts ``args``."""
    return implementation(op, *args)[1](*args)


_env = os.environ.get("CASCADE_RT_BACKEND")
if _env:
    set_backend(_env)
