"""``cascade-rt predict CASCADE_DIR INPUT --output OUTPUT``: the CLI over :func:`run_predict`."""
from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Classify every row of a CSV, JSONL or Parquet file with a saved cascade; write id, "
                     "label, score and exit tier per row, in input order.")
    p.add_argument("cascade_dir", help="a cascade saved by CascadeBert.save_pretrained (tokenizer in tier_0/)")
    p.add_argument("input", help="input file: .csv, .jsonl or .parquet")
    p.add_argument("--output", "-o", required=True, help="output file: .csv, .jsonl or .parquet")
    p.add_argument("--text-column", default="text", help="column holding the text (default: text)")
    p.add_argument("--pair-column", default=None, help="column holding the second text of a pair")
    p.add_argument("--id-column", default=None, help="column holding the row id (default: the row number, from 0)")
    p.add_argument("--input-format", choices=("csv", "jsonl", "parquet"), default=None,
                   help="default: from the file extension")
    p.add_argument("--output-format", choices=("csv", "jsonl", "parquet"), default=None,
                   help="default: from the file extension")
    p.add_argument("--on-bad-row", choices=("error", "skip"), default="error",
                   help="error (default): stop at the first row with missing, null or non-string text; "
                        "skip: write such rows with the reason to <output>.rejects.jsonl")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run after its last finished chunk")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--chunk-rows", type=int, default=4096, help="rows read, classified and written at a time")
    p.add_argument("--max-batch-tokens", type=int, default=4096, help="token budget of a batch (and of a later tier's run)")
    p.add_argument("--max-length", type=int, default=None, help="truncate rows to this many tokens (default: the model's limit)")
    p.add_argument("--device", default=None, help="cpu (default) or cuda")
    p.add_argument("--dtype", default=None, choices=("float32", "float16", "bfloat16"), help="default: as saved")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    ray = p.add_argument_group("Ray Data (pip install cascade_rt[ray])", "run the job on a Ray cluster: INPUT may be a "
                               "directory of shards, OUTPUT is a directory of Parquet/JSONL/CSV shards")
    ray.add_argument("--ray", action="store_true", help="run on Ray Data: an actor pool of cascades, one per worker")
    ray.add_argument("--ray-address", default=None,
                     help="cluster to join (auto, ray://HOST:10001, ...); default: start a local Ray")
    ray.add_argument("--workers", type=int, default=1, help="actors in the pool, each with its own cascade (default 1)")
    ray.add_argument("--gpus-per-worker", type=float, default=0, help="GPUs each actor requests (default 0: CPU)")


def run(args: argparse.Namespace) -> int:
    from .memory import bound_native_memory

    bound_native_memory()  # before the first GEMM; see cascade_rt/predict/memory.py
    import torch

    from ..config import CheckpointError
    from ..pipeline import pipeline
    from .io import InputFileError
    from .job import JobError, run_predict
    from .rows import BadRowError

    if args.ray:
        return _run_ray(args)
    if args.ray_address is not None or args.workers != 1 or args.gpus_per_worker:
        print("cascade-rt predict: error: --ray-address, --workers and --gpus-per-worker need --ray", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        clf = pipeline(args.cascade_dir, device=args.device, dtype=getattr(torch, args.dtype) if args.dtype else None,
                       max_batch_tokens=args.max_batch_tokens, max_length=args.max_length)
        summary = run_predict(
            clf, args.cascade_dir, args.input, args.output, text_column=args.text_column,
            pair_column=args.pair_column, id_column=args.id_column, input_format=args.input_format,
            output_format=args.output_format, chunk_rows=args.chunk_rows, on_bad_row=args.on_bad_row,
            resume=args.resume, overwrite=args.overwrite, progress=False if args.no_progress else None,
        )
    except (BadRowError, InputFileError, JobError, CheckpointError, ValueError) as exc:
        print(f"cascade-rt predict: error: {exc}", file=sys.stderr)
        return 2
    for line in summary.lines():
        print(line)
    return 0


def _run_ray(args: argparse.Namespace) -> int:
    from ..config import CheckpointError
    from .io import InputFileError
    from .job import JobError
    from .rows import BadRowError

    try:
        from ..ray import RayNotInstalledError, require_ray, run_ray_predict

        require_ray()
        if args.resume:
            raise JobError("--resume is not supported with --ray; rerun with --overwrite")
        summary = run_ray_predict(
            args.cascade_dir, args.input, args.output, text_column=args.text_column, pair_column=args.pair_column,
            id_column=args.id_column, input_format=args.input_format, output_format=args.output_format,
            on_bad_row=args.on_bad_row, overwrite=args.overwrite, workers=args.workers,
            gpus_per_worker=args.gpus_per_worker, address=args.ray_address, batch_size=args.chunk_rows,
            chunk_rows=args.chunk_rows, max_batch_tokens=args.max_batch_tokens, max_length=args.max_length,
            device=args.device, dtype=args.dtype, threads=args.threads)
    except (RayNotInstalledError, BadRowError, InputFileError, JobError, CheckpointError, ValueError) as exc:
        print(f"cascade-rt predict: error: {exc}", file=sys.stderr)
        return 2
    for line in summary.lines():
        print(line)
    return 0
