"""tledge parity REFERENCE EXPORTED... --images DIR [--thresholds FILE] [--json] [--junit FILE]"""
from __future__ import annotations

import sys
from pathlib import Path


def add_arguments(p) -> None:
    p.add_argument("reference", help="the Keras model (.keras, .h5, SavedModel folder)")
    p.add_argument("exported", nargs="+", help="exported .tflite/.onnx files or export folders")
    p.add_argument("--images", required=True, help="images (class folders give accuracy too)")
    p.add_argument("--thresholds", help="JSON/TOML thresholds per precision or per file name")
    p.add_argument("--preprocess", help="only for files without an embedded contract")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--junit", type=Path, help="write JUnit XML (one test case per file)")
    p.add_argument("--unsafe", action="store_true", help="allow code inside the reference model file")


def run(args) -> int:
    from tledge.cli import validate as V
    from tledge.export.parity import load_thresholds
    from tledge.io import atomic_write_text

    V.keras_model(args.reference, "REFERENCE")
    V.edge_models(args.exported, "EXPORTED")
    V.input_dir(args.images, "--images")
    V.preprocess(args.preprocess)
    if args.junit:
        V.output_file(args.junit, "--junit")
    thresholds = load_thresholds(args.thresholds) if args.thresholds else None
    from tledge.export.check import parity

    report = parity(args.reference, args.exported, args.images, preprocess=args.preprocess, unsafe=args.unsafe,
                    thresholds=thresholds)
    if args.junit:
        atomic_write_text(args.junit, report.to_junit())
    if args.json:
        print(report.to_json())
    else:
        print(report.table())
        for note in report.notes:
            print(f"note: {note}")
        for r in report.results:
            for f in r.failures:
                print(f"  {r.file}: {f}", file=sys.stderr)
        print("parity: " + ("PASSED" if report.passed else "FAILED"))
    return 0 if report.passed else 1
