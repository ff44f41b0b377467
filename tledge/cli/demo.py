"""tledge demo [--out DIR] [--weights imagenet|none|PATH]: the whole chain on generated data.

Exit code 0 when every step passed (training accuracy, parity of every exported file, runtime test
accuracy), 1 otherwise, 2 for bad arguments.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:  # argparse would name this function: "invalid _positive value"
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def add_arguments(p) -> None:
    from tledge.demo import N_TEST, N_TRAIN, N_VAL

    p.add_argument("--out", type=Path, default=Path("demo_out"), help="where everything goes (default demo_out/)")
    p.add_argument("--weights", help="imagenet, none (random init, no network probe) or a local no-top .h5 file "
                                     "(default: ImageNet if cached, a local copy in ../shared/assets, or the "
                                     "download is reachable; otherwise random initialisation)")
    p.add_argument("--size", type=_positive, default=64, help="model input size in pixels (default 64)")
    p.add_argument("--n-train", type=_positive, default=N_TRAIN, help=f"training images per class ({N_TRAIN})")
    p.add_argument("--n-val", type=_positive, default=N_VAL, help=f"validation images per class ({N_VAL})")
    p.add_argument("--n-test", type=_positive, default=N_TEST, help=f"held-out test images per class ({N_TEST})")
    p.add_argument("--epochs", type=_positive, help="training epochs in all (default: 20 from random init, "
                                                    "8 + 6 from pretrained weights; early stopping may end sooner)")
    p.add_argument("--seed", type=int, default=0, help="data and training seed (default 0)")
    p.add_argument("--json", action="store_true", help="print the step summary as JSON at the end")


def run(args) -> int:
    from tledge.cli import validate as V
    from tledge.demo import run_demo

    V.output_dir(args.out, "--out")
    if args.weights not in (None, "imagenet", "none"):
        V.keras_weights(args.weights, "--weights", suffixes=(".h5",))
    V.in_range(args.size, "--size", 32, 1024)
    for flag in ("n_train", "n_val", "n_test"):
        V.in_range(getattr(args, flag), "--" + flag.replace("_", "-"), 1, 100_000)
    V.in_range(args.epochs, "--epochs", 1, 10_000)
    V.in_range(args.seed, "--seed", 0, 2**32 - 1)  # numpy's and TensorFlow's range (a traceback otherwise)
    res = run_demo(args.out, weights=args.weights, size=args.size, n_train=args.n_train, n_val=args.n_val,
                   n_test=args.n_test, epochs=args.epochs, seed=args.seed, verbose=int(bool(args.verbose)),
                   say=_stderr if args.json else print)  # -v: a line per epoch; --json: stdout is the JSON
    if args.json:
        print(json.dumps(res.to_dict(), indent=2, default=str))
    return 0 if res.passed else 1


def _stderr(*parts, **kw) -> None:
    print(*parts, **{**kw, "file": sys.stderr})
