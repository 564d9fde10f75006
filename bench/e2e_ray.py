"""rows/s of ``cascade-rt predict --ray`` with 1 and 2 workers against the local job, same input,
same machine, interleaved rounds (CPU).

A two-tier cascade from the shipped MiniLM (2 and 6 layers, seeded heads, threshold 0.5) and
``--rows`` synthetic review-like rows in 4 Parquet shards (the local job reads the same rows
from one Parquet file). Each round runs, in rotating order:

* ``local``: load the pipeline, then ``run_predict`` (what ``cascade-rt predict`` does);
* ``ray_w1``/``ray_w2``: ``ray.init`` (a local Ray with every core), then ``run_ray_predict``
  with 1 or 2 actors (torch threads = cores / workers each), then ``ray.shutdown``;
* ``ray_noop_w2``: the same Ray job with a predictor that loads nothing and returns constant
  results: Ray's own cost (start-up, actors, reading, serialization, materialize, writes).

Prints rows/s of each and the ratio to the local job measured in the same round; writes
``bench/results/e2e_ray_cpu.json`` with the environment record.

    .venv/bin/python bench/e2e_ray.py [--rows 3000] [--rounds 2]
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, warn_if_loaded, write_result  # noqa: E402

WORDS = ("the a film plot acting good bad great boring long short fine dull funny script music ending cast "
         "loved hated never again worth it twice slow gorgeous mess clever predictable moving").split()


class NoopPredictor:
    """What Ray costs without the model: one constant result per row, same output columns."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, batch):
        n = len(batch["__row"])
        return {"id": np.asarray(batch["__row"], dtype=object), "label": np.array(["x"] * n, dtype=object),
                "score": np.ones(n, np.float32), "exit_tier": np.zeros(n, np.int64),
                "path": np.asarray(batch["__path"], dtype=object), "row": np.asarray(batch["__row"], np.int64),
                "line": np.full(n, -1, np.int64), "reject_column": np.array([None] * n, dtype=object),
                "reject_reason": np.array([None] * n, dtype=object)}


def build_inputs(root: Path, rows: int) -> tuple[Path, Path, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cascade_rt import CascadeBert, make_classifier_checkpoint
    from cascade_rt.paths import shipped_minilm_dir

    src = shipped_minilm_dir()
    dirs = [make_classifier_checkpoint(src, root / f"l{n}", num_labels=2, num_layers=n, seed=n, init_std=1.0)
            for n in (2, 6)]
    cascade = root / "cascade"
    CascadeBert.from_pretrained(dirs, thresholds=[0.5]).save_pretrained(cascade)
    rnd = random.Random(0)
    texts = [" ".join(rnd.choice(WORDS) for _ in range(rnd.randint(4, 40))) for _ in range(rows)]
    shards = root / "shards"
    shards.mkdir()
    step = -(-rows // 4)
    for s in range(4):
        pq.write_table(pa.table({"text": texts[s * step:(s + 1) * step]}), str(shards / f"part-{s}.parquet"))
    single = root / "all.parquet"
    pq.write_table(pa.table({"text": texts}), str(single))
    return cascade, shards, single


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--chunk-rows", type=int, default=512)
    p.add_argument("--max-batch-tokens", type=int, default=4096)
    p.add_argument("--out-dir", default=None)
    args = p.parse_args()
    import ray

    import cascade_rt
    from cascade_rt.predict import run_predict
    from cascade_rt.ray import run_ray_predict

    cores = os.cpu_count() or 1
    dev = torch.device("cpu")
    warn_if_loaded(dev)
    work = Path(tempfile.mkdtemp(prefix="e2e_ray_"))
    try:
        cascade, shards, single = build_inputs(work, args.rows)
        modes = ["local", "ray_w1", "ray_w2", "ray_noop_w2"]
        runs = []
        for r in range(args.rounds):
            order = modes[r % len(modes):] + modes[:r % len(modes)]
            for mode in order:
                out = work / f"out_{mode}_{r}.parquet"
                rec = {"round": r, "mode": mode}
                t0 = time.perf_counter()
                if mode == "local":
                    torch.set_num_threads(cores)
                    clf = cascade_rt.pipeline(cascade, max_batch_tokens=args.max_batch_tokens)
                    rec["load_s"] = time.perf_counter() - t0
                    s = run_predict(clf, cascade, single, out, chunk_rows=args.chunk_rows, progress=False)
                    rec["rows"] = s.rows
                else:
                    workers = int(mode[-1])
                    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
                    ray.data.DataContext.get_current().enable_progress_bars = False
                    rec["ray_init_s"] = time.perf_counter() - t0
                    t1 = time.perf_counter()
                    s = run_ray_predict(cascade, shards, out, workers=workers, batch_size=args.chunk_rows,
                                        chunk_rows=args.chunk_rows, max_batch_tokens=args.max_batch_tokens,
                                        threads=max(1, cores // workers),
                                        predictor_cls=NoopPredictor if "noop" in mode else None)
                    rec["job_s"] = time.perf_counter() - t1
                    ray.shutdown()
                    rec["rows"] = s.rows
                rec["seconds"] = time.perf_counter() - t0
                rec["rows_per_s"] = rec["rows"] / rec["seconds"]
                runs.append(rec)
                print(f"round {r} {mode:12s} {rec['rows']} rows in {rec['seconds']:.1f} s: "
                      f"{rec['rows_per_s']:.1f} rows/s", flush=True)
                shutil.rmtree(out, ignore_errors=True)
                if out.is_file():
                    out.unlink()
        results = []
        for mode in modes:
            mine = [x for x in runs if x["mode"] == mode]
            ratios = [x["rows_per_s"] / next(y for y in runs if y["mode"] == "local" and y["round"] == x["round"])
                      ["rows_per_s"] for x in mine]
            res = {"mode": mode, "rows_per_s": [x["rows_per_s"] for x in mine], "seconds": [x["seconds"] for x in mine],
                   "ratio_to_local_same_round": ratios}
            for k in ("load_s", "ray_init_s", "job_s"):
                if k in mine[0]:
                    res[k] = [x[k] for x in mine]
            results.append(res)
            print(f"{mode:12s} rows/s {np.median(res['rows_per_s']):8.1f}   vs local (same round) "
                  f"{' '.join(f'{q:.2f}x' for q in ratios)}")
        config = {"rows": args.rows, "shards": 4, "chunk_rows": args.chunk_rows,
                  "max_batch_tokens": args.max_batch_tokens, "cascade": "MiniLM 2 + 6 layers, threshold 0.5",
                  "local_threads": cores, "ray_threads_per_worker": {"1": cores, "2": max(1, cores // 2)},
                  "ray": ray.__version__}
        path = write_result("e2e_ray", dev, config, results, args.out_dir)
        print(f"wrote {path}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
