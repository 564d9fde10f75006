"""``python -m cascade_rt.info``: versions, backends, and why a missing one is missing."""
from __future__ import annotations

import importlib
import os
import platform


def _version(mod: str) -> str:
    try:
        m = importlib.import_module(mod)
        return getattr(m, "__version__", "installed")
    except Exception as exc:  # report, never fail
        return f"not available ({type(exc).__name__}: {exc})"


def _cpuinfo(path: str = "/proc/cpuinfo") -> dict:
    """The first processor's ``key: value`` lines of ``/proc/cpuinfo`` ({} where there is none)."""
    fields: dict = {}
    try:
        with open(path) as f:
            for line in f:
                if not line.strip():
                    if fields:
                        break
                    continue
                key, sep, value = line.partition(":")
                if sep:
                    fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_name(path: str = "/proc/cpuinfo") -> str:
    """The CPU's model name (``/proc/cpuinfo``), with its family and model numbers where the
    kernel reports them, else what :mod:`platform` knows.

    Cloud machines often report a bare name ("AMD EPYC", "Intel(R) Xeon(R) Processor") for
    several generations with different vector units; the numbers tell them apart (AMD family
    25 is Zen 3 / Zen 4, 26 is Zen 5; Intel family 6 model 143 is Sapphire Rapids), so a
    figure recorded with this name says which machine it came from."""
    info = _cpuinfo(path)
    name = info.get("model name")
    if not name:
        return platform.processor() or platform.machine()
    if info.get("cpu family") and info.get("model"):
        return f"{name} (family {info['cpu family']}, model {info['model']})"
    return name


def source_commit() -> str | None:
    """The source checkout's short commit, with "+dirty" for uncommitted changes to tracked
    files; None when cascade_rt is not running from a git checkout."""
    import subprocess
    from pathlib import Path

    def git(*args):
        return subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True,
                              text=True, timeout=10)

    try:
        rev = git("rev-parse", "--short", "HEAD")
        if rev.returncode != 0:
            return None
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev.stdout.strip() + ("+dirty" if dirty else "")


def collect() -> dict:
    import torch

    import cascade_rt
    from cascade_rt import backends

    info = {
        "cascade_rt": cascade_rt.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _version("triton"),
        "transformers": _version("transformers"),
        "cuda_available": torch.cuda.is_available(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else cpu_name(),
        "CASCADE_RT_BACKEND": os.environ.get("CASCADE_RT_BACKEND"),
        "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET"),
        "backends": {},
        "priority": {dev: list(backends.priority(dev)) for dev in ("cpu", "cuda")},
    }
    for name in backends.BACKEND_NAMES:
        err = backends.load_error(name)
        entry = {"available": err is None}
        if err:
            entry["why_not"] = err
        else:
            mod = backends._module(name)
            entry["ops"] = sorted(getattr(mod, "OPS", {}))
            detail = getattr(mod, "describe", None)
            if callable(detail):
                entry["detail"] = detail()
        info["backends"][name] = entry
    return info


def main() -> None:
    info = collect()
    width = max(len(k) for k in info)
    for key, value in info.items():
        if key == "backends":
            continue
        print(f"{key:<{width}}  {value}")
    print("backends:")
    for name, entry in info["backends"].items():
        if entry["available"]:
            print(f"  {name:<10} available: {', '.join(entry['ops'])}")
            if entry.get("detail"):
                print(f"  {'':<10} {entry['detail']}")
        else:
            print(f"  {name:<10} NOT available: {entry['why_not']}")


if __name__ == "__main__":
    main()
