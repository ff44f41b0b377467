"""Command line: `tledge SUBCOMMAND ...`. main(argv) -> exit code (0 ok, 1 parity failed, 2 usage/input error)."""
from __future__ import annotations

import argparse
import importlib
import sys

from tledge.errors import TledgeError

# subcommand -> module under tledge.cli with `add_arguments(parser)` and `run(args) -> int`
COMMANDS = {
    "export": "Convert a Keras model to TFLite/ONNX with the contract embedded, and check parity",
    "run": "Classify images, folders, videos or cameras with an exported file (no TensorFlow)",
    "info": "Show an exported file's contract, tensors and quantisation",
    "bench": "Measure load time, latency, throughput and memory of exported files",
    "train": "Fine-tune a pretrained backbone on class folders",
    "parity": "Check exported files against the Keras model (CI gate)",
    "devices": "List, show and detect device profiles",
    "bundle": "Package an export for one device",
    "demo": "Run the whole chain on a generated data set",
    "doctor": "Say what the runtime will use on this machine and why (paste it into bug reports)",
}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `tledge run: error: argument --top-k: invalid int value: 'x'`."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser(available: dict[str, str], only: str | None = None) -> argparse.ArgumentParser:
    """`only`: the one subcommand whose module (and options) to import; the others get a bare parser,
    so `tledge run` does not pay for importing what `tledge train` or `tledge devices` need."""
    parser = _Parser(prog="tledge", description=__doc__)
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in available.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if only is None or name == only:
            importlib.import_module(f"tledge.cli.{name}").add_arguments(p)
    return parser


def _chosen(argv: list[str], available: dict[str, str]) -> str | None:
    """The subcommand named on the command line (the first word that is not an option), if known."""
    for a in argv:
        if not a.startswith("-"):
            return a if a in available else None
    return None


def _version() -> str:
    from tledge import __version__

    return f"tledge {__version__}"


def _available() -> dict[str, str]:
    import importlib.util

    return {n: h for n, h in COMMANDS.items() if importlib.util.find_spec(f"tledge.cli.{n}") is not None}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from tledge._deps import quiet_tensorflow

    quiet_tensorflow()  # tledge's own process: TensorFlow's C++ chatter off (set before it is imported)
    available = _available()
    parser = _parser(available, _chosen(argv, available))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: 0 for --help, 2 for usage errors
        return int(exc.code or 0)
    if not args.command:
        parser.print_help()
        return 2
    mod = importlib.import_module(f"tledge.cli.{args.command}")
    try:
        return int(mod.run(args) or 0)
    except TledgeError as exc:
        print(f"tledge {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # a disk, permission or path problem: the user's to fix, never a traceback
        from tledge.cli.validate import os_error_message

        print(f"tledge {args.command}: error: {os_error_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
