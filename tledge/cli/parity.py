"""tledge parity REFERENCE EXPORTED... --images DIR [--thresholds FILE] [--json] [--junit FILE]
   tledge parity --golden EXPORT_OR_BUNDLE [--device NAME] [--thresholds FILE] [--json] [--junit FILE]

The second form needs no TensorFlow and no Keras model: it compares every file the folder's manifest
vouches for with the Keras outputs stored at export (golden.npz), on the board (`run.sh --check`)."""
from __future__ import annotations

import sys
from pathlib import Path

from tledge.errors import TledgeError
from tledge.text import printable


MORE_FILES = "exported"  # file arguments after an option join this list (tledge.cli.main)


def add_arguments(p) -> None:
    p.add_argument("reference", nargs="?", help="the Keras model (.keras, .h5, SavedModel folder)")
    p.add_argument("exported", nargs="*", help="exported .tflite/.onnx files or export folders")
    p.add_argument("--images", help="images (class folders give accuracy too)")
    p.add_argument("--golden", metavar="EXPORT_OR_BUNDLE",
                   help="check an export folder or unpacked bundle against the Keras outputs stored in it "
                        "(golden.npz): no TensorFlow, no REFERENCE, no --images")
    p.add_argument("--device", metavar="NAME", help="with --golden: run the files as on this device profile")
    p.add_argument("--threads", type=int, help="with --golden: inference threads")
    p.add_argument("--thresholds", help="JSON/TOML thresholds per precision or per file name")
    p.add_argument("--preprocess", help="the normalisation of files without an embedded contract, and of a reference "
                   "that neither bakes one nor has a tledge.json (with --mean/--std: the reference's only)")
    p.add_argument("--labels", metavar="FILE", help="the reference's labels (one per line, or '0 name' lines), to "
                   "match --images class folders by name for it and files without an embedded contract (default: "
                   "the reference's tledge.json or a labels.txt beside it)")
    from tledge.cli.model_options import add_mean_std

    add_mean_std(p.add_argument_group("files without an embedded contract, as tledge run takes them (then "
                                      "--preprocess is the reference's only)"))
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--junit", help="write JUnit XML (one test case per file)")  # str: keeps a trailing "/"
    p.add_argument("--unsafe", action="store_true", help="allow code inside the reference model file")
    add_loading_options(p, "the reference SavedModel's signature and output (default: what the export recorded in "
                           "manifest.json, else serving_default)", " (default: what the export recorded)")


def add_loading_options(p, signature_help: str, default: str) -> None:
    """--signature and --binary-output: how a SavedModel is loaded (export, and parity's reference)."""
    p.add_argument("--signature", metavar="KEY[:OUTPUT]", help=signature_help)
    p.add_argument("--binary-output", choices=("sigmoid", "logit"),
                   help="what a one-output model's output is, when tledge cannot read it from the model (a JAX "
                        f"model.export() SavedModel): a sigmoid probability or a logit{default}")


def check_signature(text: str, model: Path, flag: str = "MODEL") -> None:
    """--signature KEY[:OUTPUT] is well formed and `model` a SavedModel folder (before anything loads)."""
    from tledge.errors import ModelLoadError
    from tledge.export.signature import Choice

    if not model.is_dir():
        raise TledgeError(f"--signature chooses a SavedModel's function; {flag} {model.name} is no SavedModel folder")
    try:
        Choice.parse(text)
    except ModelLoadError as exc:
        raise TledgeError(str(exc)) from None


def _validate(args) -> None:
    from tledge.cli import validate as V
    from tledge.cli.model_options import check_mean_std
    from tledge.runtime.backends import MAX_THREADS, default_threads

    if getattr(args, "threads", None) is None:
        default_threads()  # a TLEDGE_THREADS out of range (and no --threads): refused before anything is loaded
    if args.golden:
        extra = [n for n, v in (("REFERENCE", args.reference), ("EXPORTED", args.exported), ("--images", args.images),
                                ("--preprocess", args.preprocess), ("--labels", args.labels),
                                ("--mean", args.mean), ("--std", args.std),
                                ("--unsafe", args.unsafe),
                                ("--signature", args.signature), ("--binary-output", args.binary_output)) if v]
        if extra:
            raise TledgeError(f"--golden compares with the outputs stored at export: it takes no {', '.join(extra)}")
        V.input_dir(args.golden, "--golden")
        V.in_range(args.threads, "--threads", 1, MAX_THREADS)
        V.device(args.device)
    else:
        missing = [n for n, v in (("REFERENCE", args.reference), ("EXPORTED", args.exported),
                                  ("--images", args.images)) if not v]
        if missing:
            raise TledgeError(f"{', '.join(missing)} required (or --golden EXPORT_OR_BUNDLE)")
        if args.device or args.threads is not None:
            raise TledgeError("--device and --threads go with --golden")
        model = V.keras_model(args.reference, "REFERENCE")
        if args.signature is not None:
            check_signature(args.signature, model, "REFERENCE")
        V.edge_models(args.exported, "EXPORTED")
        V.input_dir(args.images, "--images")
        V.preprocess(args.preprocess)
        check_mean_std(args)
        if args.labels:
            V.labels_file(args.labels)
    if args.junit:
        V.output_file(args.junit, "--junit")
        from tledge.trust import export_files

        models = [f for m in (args.reference, *args.exported) if m for f in export_files(m)]
        V.not_an_input(args.junit, "--junit", [p for p in (*models, args.golden, args.thresholds, args.images,
                                                           args.labels) if p],
                       replaces=b"<testsuite")


def run(args) -> int:
    from tledge.io import atomic_write_text
    from tledge.parity import load_thresholds

    _validate(args)
    thresholds = load_thresholds(args.thresholds) if args.thresholds else None
    if args.golden:
        from tledge.runtime.golden import check

        report = check(args.golden, thresholds=thresholds, device=args.device, threads=args.threads)
    else:
        try:
            from tledge.export.check import parity
        except ImportError:  # a deploy bundle carries the runtime only
            raise TledgeError("this tledge has no exporter (a deploy bundle?): use tledge parity --golden") from None
        from tledge.cli import validate as V

        from tledge.cli.export_labels import given_or_own_labels

        V.image_dir(args.images, "--images")  # after the exporter check (a board is told about --golden first)
        if args.labels:  # as export reads them; the reference's own only when a file without labels needs them
            labels, labels_from = given_or_own_labels(args.reference, args.labels)
        else:  # (its labels.txt was read and refused first, even where every file's own labels were used)
            labels, labels_from = (lambda: given_or_own_labels(args.reference, None)), ""
        report = parity(args.reference, args.exported, args.images, preprocess=args.preprocess,
                        unsafe=args.unsafe, thresholds=thresholds, signature=args.signature,
                        binary_output=args.binary_output, labels=labels, labels_from=labels_from,
                        mean=args.mean, std=args.std)
    unmatched = report.unmatched(thresholds)
    if unmatched:  # a misspelt file name would leave that file on its precision's defaults, silently
        from tledge import log

        checked = sorted({Path(r.file).name for r in report.results})
        log.warn(f"--thresholds {args.thresholds}: {', '.join(unmatched)} match no checked file ({', '.join(checked)})")
    if args.junit:
        atomic_write_text(args.junit, report.to_junit())
    if args.json:
        print(report.to_json())
    else:
        print(report.table())
        from tledge import log

        for note in report.notes:  # tledge's notes: on stderr, not with -q (as export's)
            log.note(note)
        for r in report.results:
            for f in r.failures:
                print(printable(f"tledge parity: {r.file}: {f}"), file=sys.stderr)  # prefixed like every tledge line
        print("parity: " + ("PASSED" if report.passed else "FAILED"))
    wrong = [r for r in report.results if r.incompatible]
    if wrong:  # the user handed files of another model: a usage error, said once the report is out
        of = args.reference or "the outputs stored at export"
        raise TledgeError(f"{', '.join(r.file for r in wrong)}: not an export of {of}: {wrong[0].failures[0]}")
    return 0 if report.passed else 1
