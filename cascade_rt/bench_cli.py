"""``cascade-rt bench``: the end-to-end benchmarks of ``bench/`` from one command.

Runs ``bench/e2e_tier.py`` (one tier padding-free vs HF sdpa padded) and
``bench/e2e_cascade.py`` (cascade vs its last tier at exit rates 0-90%), ``bench/e2e_stream.py``
(the survivor queue across batches vs the per-batch cascade, 3 tiers) and, on the CPU,
``bench/e2e_vs_ort.py`` (one tier vs ONNX Runtime's BERT-optimized graph), each writing JSON and
a PNG plot to ``bench/results/`` (or ``--out-dir``). The benchmark scripts live in the source
tree, not in the installed package: run this from a clone (``pip install -e .``).
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent.parent / "bench"


def _load(name: str):
    path = BENCH_DIR / f"{name}.py"
    if not path.is_file():
        raise SystemExit(f"cascade-rt bench: {path} not found; run from a source checkout of cascade_rt")
    if str(BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR))
    spec = importlib.util.spec_from_file_location(f"cascade_rt_bench_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--quick", action="store_true", help="tiny smoke run of every benchmark")
    p.add_argument("--only", choices=("tier", "cascade", "stream", "ort"), default=None,
                   help="run one benchmark")
    p.add_argument("--out-dir", default=str(BENCH_DIR / "results"))
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def run(args: argparse.Namespace) -> int:
    common = ["--device", args.device, "--out-dir", args.out_dir]
    if args.quick:
        common.append("--quick")
    if args.threads:
        common += ["--threads", str(args.threads)]
    jobs = [("tier", "e2e_tier", []), ("cascade", "e2e_cascade", []),
            ("cascade", "e2e_cascade", ["--tiers", "3"] if not args.quick else None),
            ("stream", "e2e_stream", []),
            ("ort", "e2e_vs_ort", [] if args.device == "cpu" else None)]
    t0 = time.perf_counter()
    for key, name, extra in jobs:
        if extra is None or (args.only and args.only != key):
            continue
        print(f"== {name} {' '.join(extra)}", flush=True)
        rc = _load(name).main(common + extra)
        if rc:
            return rc
    print(f"== done in {time.perf_counter() - t0:.0f} s; results in {args.out_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cascade-rt bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
