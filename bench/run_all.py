"""Run every end-to-end benchmark of cascade_rt and write their results to bench/results/.

    .venv/bin/python bench/run_all.py            # CPU: a few minutes on 2 cores
    .venv/bin/python bench/run_all.py --quick    # smoke run, well under a minute
    .venv/bin/python bench/run_all.py --device cuda

Same as ``cascade-rt bench`` (installed entry point). Micro benchmarks of every op are
pytest-benchmark tests, run apart: ``.venv/bin/python -m pytest bench/micro --benchmark-enable``.
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main(argv: list[str] | None = None) -> int:
    from cascade_rt.bench_cli import main as bench_main

    return bench_main(argv)


if __name__ == "__main__":
    sys.exit(main())
