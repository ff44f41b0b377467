"""tledge bench MODEL... [--runs N] [--warmup N] [--batch B] [--threads N] [--json] [tledge run's model options]

Each file runs in a fresh process (clean load time and peak RSS); files side by side. A folder
stands for every .tflite / .onnx file in it. No TensorFlow is imported.
"""
from __future__ import annotations

import json

from tledge.cli.model_options import add_model_options, load_kwargs


MORE_FILES = "models"  # file arguments after an option join this list (tledge.cli.main)


def add_arguments(p) -> None:
    p.add_argument("models", nargs="+", help=".tflite / .onnx files, or export folders")
    p.add_argument("--runs", type=int, default=50, help="timed inferences per file (default 50)")
    p.add_argument("--warmup", type=int, default=5, help="untimed inferences first (default 5)")
    p.add_argument("--batch", type=int, default=1, help="images per inference (default 1)")
    p.add_argument("--json", action="store_true", help="print the results as a JSON list")
    p.add_argument("--same-process", action="store_true",
                   help="measure in this process (faster; peak RSS then covers all files)")
    add_model_options(p)  # a file made elsewhere is loaded as `tledge run` loads it: an int8 input without
    # quantisation could not be measured ("pixel - 128 is --mean 128 --std 1", which bench did not take)


def run(args) -> int:
    from tledge import trust
    from tledge.cli import validate as V
    from tledge.runtime.bench import bench, table
    from tledge.cli.model_options import check_model_options

    for folder in V.edge_models(args.models):  # an export folder whose file changed, or with no manifest (a killed
        if folder.is_dir():  # export), is refused, as run, info and bundle do: name the files to bench others
            trust.vouched(folder, "tledge bench")
    V.in_range(args.runs, "--runs", 1, 1_000_000)
    V.in_range(args.warmup, "--warmup", 0, 1_000_000)
    V.in_range(args.batch, "--batch", 1, 1024)
    check_model_options(args, args.models)
    kw = load_kwargs(args)
    threads = kw.pop("threads", None)
    results = bench(args.models, runs=args.runs, warmup=args.warmup, batch=args.batch, threads=threads,
                    load_kwargs=kw, subprocesses=not args.same_process)
    if args.json:
        from tledge.safejson import finite

        print(json.dumps(finite(results), indent=2, allow_nan=False))
    else:
        print(table(results))
    from tledge import log

    for r in results:  # tledge's notes, as export's and run's: stderr, hidden by -q (and in --json's "notes")
        for note in r.get("notes", []):
            log.note(f"{r['name']}: {note}")
    failed = [r for r in results if "error" in r]
    if failed:  # on stderr too (the table is on stdout), and not exit 0 when a file could not be measured
        from tledge.errors import TledgeError

        why = "; ".join(f"{r['name']}: {' '.join(str(r['error']).split())}" for r in failed)
        raise TledgeError(f"{'no file' if len(failed) == len(results) else 'not every file'} could be measured: {why}")
    return 0
