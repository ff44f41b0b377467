"""tledge demo [--out DIR] [--weights imagenet|none|PATH]: the whole chain on generated data."""
from __future__ import annotations

import json
from pathlib import Path


def add_arguments(p) -> None:
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="where everything goes (default demo_out/)")
    p.add_argument("--weights", help="imagenet, none, or a local no-top .h5 (default: imagenet if reachable)")
    p.add_argument("--size", type=int, default=64, help="input size (default 64)")
    p.add_argument("--json", action="store_true", help="print the step summary as JSON at the end")


def run(args) -> int:
    from tledge.demo import run_demo

    res = run_demo(args.out, weights=args.weights, size=args.size)
    if args.json:
        print(json.dumps({"out": str(res.out), "weights": res.weights, "passed": res.passed, "steps": res.steps},
                         indent=2))
    return 0 if res.passed else 1
