"""tledge bench MODEL... [--runs N] [--warmup N] [--batch B] [--threads N] [--json]

Each file runs in a fresh process (clean load time and peak RSS); files side by side. A folder
stands for every .tflite / .onnx file in it. No TensorFlow is imported.
"""
from __future__ import annotations

import json

from tledge.runtime.options import add_model_options, load_kwargs


def add_arguments(p) -> None:
    p.add_argument("models", nargs="+", help=".tflite / .onnx files, or export folders")
    p.add_argument("--runs", type=int, default=50, help="timed inferences per file (default 50)")
    p.add_argument("--warmup", type=int, default=5, help="untimed inferences first (default 5)")
    p.add_argument("--batch", type=int, default=1, help="images per inference (default 1)")
    p.add_argument("--json", action="store_true", help="print the results as a JSON list")
    p.add_argument("--same-process", action="store_true",
                   help="measure in this process (faster; peak RSS then covers all files)")
    add_model_options(p, foreign=False)


def run(args) -> int:
    from tledge.errors import TledgeError
    from tledge.runtime.bench import bench, table

    if args.runs < 1 or args.batch < 1 or args.warmup < 0:
        raise TledgeError("--runs and --batch must be at least 1, --warmup at least 0")
    kw = load_kwargs(args)
    threads = kw.pop("threads", None)
    results = bench(args.models, runs=args.runs, warmup=args.warmup, batch=args.batch, threads=threads,
                    load_kwargs=kw, subprocesses=not args.same_process)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(table(results))
        for r in results:
            for note in r.get("notes", []):
                print(f"{r['name']}: {note}")
    return 2 if all("error" in r for r in results) else 0
