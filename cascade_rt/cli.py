"""``cascade-rt``: the command-line entry point.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``; this file only wires them up, importing lazily so that ``--help`` is fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS = {
    "demo": ("cascade_rt.demo", "train a cascade on the shipped data, compare with early exit, plot"),
    "infer": ("cascade_rt.infer_demo", "two-tier inference demo on the shipped MiniLM weights"),
    "train": ("cascade_rt.train.cli", "fine-tune one tier (optionally with DAO) on a data set"),
    "evaluate": ("cascade_rt.evaluate.cli", "choose thresholds on dev, report test metrics and speed-up"),
    "predict": ("cascade_rt.predict.cli", "classify every row of a CSV/JSONL/Parquet file with a saved cascade"),
    "info": ("cascade_rt.info", "versions and available backends"),
    "bench": ("cascade_rt.bench_cli", "end-to-end benchmarks (bench/), JSON + plots in bench/results/"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cascade-rt", description="cascaded BERT classifiers, fast")
    sub = parser.add_subparsers(dest="command", required=True)
    argv = sys.argv[1:] if argv is None else argv
    chosen = argv[0] if argv and argv[0] in COMMANDS else None
    for name, (mod_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name == chosen:
            mod = importlib.import_module(mod_name)
            if hasattr(mod, "add_arguments"):
                mod.add_arguments(p)
    args = parser.parse_args(argv)
    mod = importlib.import_module(COMMANDS[args.command][0])
    if hasattr(mod, "run"):
        return int(mod.run(args) or 0)
    mod.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
