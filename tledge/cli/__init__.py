"""Command line: `tledge [-q|-v] COMMAND ...`. main(argv) -> exit code (0 ok, 1 parity failed, 2 usage/input error)."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from tledge.errors import TledgeError, warnings_not_errors
from tledge.signals import SEEN as _SIGNALS_SEEN, STOP_CODES, Terminated as Terminated, catch_stops  # (os, threading)

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


DESCRIPTION = """\
tledge takes an image classifier from transfer learning (Keras) to edge devices with one preprocessing
contract embedded in every file, and checks every exported file against the Keras model."""

EXAMPLES = """\
examples:
  train on class folders (or train/ and val/), then export with an int8 file for a board:
    tledge train photos/ --backbone mobilenet --alpha 0.25 --size 224 --out run/
    tledge export run/model.keras --int8 --calib photos/train --val photos/val --out export/
  classify images, a folder, a video or a camera, without TensorFlow:
    tledge run export/ --source photos/val --json
  one device: which file, then a bundle to copy to it:
    tledge devices detect
    tledge export run/model.keras --device rpi4 --calib photos/train --val photos/val --out export/
    tledge bundle export/ --device rpi4
  CI gate on files exported elsewhere:
    tledge parity run/model.keras export/model_int8.tflite --images photos/val --json
  the whole chain on a generated data set:  tledge demo

output: results on stdout (--json: one JSON document; run --json: one per input, JSON Lines); notes, warnings and
progress lines on stderr; TensorFlow's own messages go to a log file (export: OUT/export.log, train:
OUT/train.log) unless -v. -q: results and errors only. Exit codes: 0 ok, 1 parity failed, 2 bad input.
`tledge COMMAND --help` for each command's options."""


def verbosity_arguments(p, top: bool) -> None:
    """-q / -v, accepted before or after the command (`tledge -v export ...` == `tledge export -v ...`)."""
    default = (lambda v: v) if top else (lambda v: argparse.SUPPRESS)
    p.add_argument("-q", "--quiet", action="store_true", default=default(False),
                   help="only results and errors: no notes, no progress lines")
    p.add_argument("-v", "--verbose", action="count", default=default(0),
                   help="also TensorFlow's and other libraries' messages (instead of the log file)")


def level(args) -> int:
    from tledge import log

    if getattr(args, "verbose", 0):
        return log.VERBOSE
    return log.QUIET if getattr(args, "quiet", False) else log.NORMAL


def _columns() -> int:
    """shutil.get_terminal_size().columns, without importing shutil (with bz2, lzma...): argparse makes a
    help formatter for every option it adds, and each one imports shutil for this number (cold start)."""
    try:
        columns = int(os.environ.get("COLUMNS", 0))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class _Width:
    """A help formatter given its width (as argparse computes it) rather than computing it with shutil."""

    def __init__(self, *args, **kwargs):
        if len(args) < 4 and kwargs.get("width") is None:
            kwargs["width"] = _columns() - 2
        super().__init__(*args, **kwargs)


class _HelpFormatter(_Width, argparse.HelpFormatter):
    pass


class _RawDescriptionFormatter(_Width, argparse.RawDescriptionHelpFormatter):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `tledge run: error: argument --top-k: invalid int value: 'x'`."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        # no abbreviations: `--fp` silently meant --fp16, and an option added later would change what a script's
        # abbreviation means
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser(available: dict[str, str], only: str | None = None) -> argparse.ArgumentParser:
    """`only`: the one subcommand named on the command line: only its parser is built (and only its
    module imported), so `tledge run` pays neither for importing what `tledge train` needs nor for
    building nine parsers it does not use (argparse costs milliseconds per parser). Without it (no
    command, an unknown one, or `tledge --help`), every subcommand is listed."""
    parser = _Parser(prog="tledge", description=DESCRIPTION, epilog=EXAMPLES,
                     formatter_class=_RawDescriptionFormatter)
    parser.add_argument("--version", action="version", version=_version())
    verbosity_arguments(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in available.items():
        if only is not None and name != only:
            continue
        p = sub.add_parser(name, help=help_text, description=help_text)
        verbosity_arguments(p, top=False)
        importlib.import_module(f"tledge.cli.{name}").add_arguments(p)
    return parser


def _chosen(argv: list[str], available: dict[str, str]) -> str | None:
    """The subcommand named on the command line (the first word that is not an option), if known;
    None when top-level help or the version is asked for before it."""
    for a in argv:
        if a in ("-h", "--help", "--version"):
            return None
        if not a.startswith("-"):
            return a if a in available else None
    return None


def _empty_argument(argv: list[str]) -> str | None:
    """What is empty on the command line (`--out "$UNSET"`, `--csv=`), or None. No option or file of tledge takes an
    empty value: `--out ""` trained into the current folder (Path("") is "."), `--csv ""` wrote no CSV, and
    `--formats ""` meant every format."""
    for i, a in enumerate(argv):
        if a.startswith("--") and "=" in a and not a.split("=", 1)[1].strip():
            return f"{a.split('=', 1)[0]} is empty (an unset shell variable?): pass a value or leave the option out"
        if not a.strip():
            before = argv[i - 1] if i and argv[i - 1].startswith("-") and argv[i - 1] != "--" else None
            return (f"{before} is empty (an unset shell variable?): pass a value or leave the option out" if before
                    else "an empty argument (an unset shell variable?): pass a path")
    return None


def _version() -> str:
    from tledge.version import __version__

    return f"tledge {__version__}"


def _available() -> dict[str, str]:
    import importlib.util

    return {n: h for n, h in COMMANDS.items() if importlib.util.find_spec(f"tledge.cli.{n}") is not None}


def _streams() -> None:
    """Standard streams the shell closed (`>&-`, `2>&-`) become /dev/null: every verb did its work and then failed
    (exit 1, "parity failed" for a passing check), and with stderr closed print(file=sys.stderr) wrote the notes
    into stdout's JSON. A stdout that cannot encode every letter (PYTHONIOENCODING=ascii, a C locale) shows `?`
    for them, as stderr does, instead of a UnicodeEncodeError after the work was done."""
    import codecs
    import os

    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w", encoding="utf-8"))
    try:
        if codecs.lookup(sys.stdout.encoding or "utf-8").name != "utf-8":
            sys.stdout.reconfigure(errors="replace")
    except (AttributeError, LookupError, ValueError):
        pass


def _say(text: str) -> None:
    """One line on stderr, if stderr still takes it (a reader that left, a full disk): the exit code says the rest."""
    from tledge.text import printable

    try:  # (a newline in a path made two lines: `tledge info $'x\ny.tflite'`)
        print(printable(text), file=sys.stderr)
    except (OSError, ValueError):
        pass


# every option and operand that names a file or folder (keywords such as `--calib random` do not start with `~`)
PATH_DESTS = ("model", "models", "reference", "exported", "target", "data", "export_dir", "out", "save", "csv",
              "labels", "calib", "val", "images", "golden", "junit", "thresholds", "weights", "root")


def _expand_home(args) -> None:
    """A quoted or `--out=~/x` path is the home's, as the shell would have made it: `tledge export --out '~/x'` was
    checked in the home and written to ./~/x. Strings stay strings (a trailing `/` says "a folder")."""
    import os

    def one(v):
        if isinstance(v, (str, os.PathLike)) and os.fspath(v).startswith("~"):
            text = os.path.expanduser(os.fspath(v))
            return text if isinstance(v, str) else type(v)(text)
        return v

    for dest in PATH_DESTS:
        v = getattr(args, dest, None)
        if isinstance(v, list):
            setattr(args, dest, [one(x) for x in v])
        elif v is not None:
            setattr(args, dest, one(v))


# verbs that run the int8 repair loop: TensorFlow's oneDNN setting (TF_ENABLE_ONEDNN_OPTS, often set to 0 to silence
# its start-up line) changed the repaired weights in their last bit, and a file at the gate passed in one shell and
# fell back in another; these verbs use TensorFlow's default (the variable dropped before TensorFlow is imported)
REPAIRING = ("export", "demo")
CLI_ENVIRON = ("TF_CPP_MIN_LOG_LEVEL", "KERAS_BACKEND", "TF_ENABLE_ONEDNN_OPTS")  # what main() sets for its command


def main(argv: list[str] | None = None) -> int:
    _SIGNALS_SEEN.clear()
    _streams()
    from_shell, argv = argv is None, list(sys.argv[1:] if argv is None else argv)
    available = _available()
    parser = _parser(available, _chosen(argv, available))
    try:
        args, extra = parser.parse_known_args(argv)
    except SystemExit as exc:  # argparse: 0 for --help, 2 for usage errors
        return int(exc.code or 0)
    empty = _empty_argument(argv)  # (an option given twice takes the later value: docs/cluster's recipe relies on it)
    if empty:
        prog = f"tledge {args.command}" if args.command else "tledge"
        print(f"{prog}: error: {empty} (see {prog} --help)", file=sys.stderr)
        return 2
    if extra and not _more_files(args, extra):
        return 2
    _expand_home(args)
    if not args.command:  # the commands on stdout, what went wrong on stderr (one line)
        parser.print_help()
        print("tledge: error: no command given (the commands are listed above)", file=sys.stderr)
        return 2
    from tledge import log
    from tledge._deps import quiet_tensorflow

    environ = {k: os.environ.get(k) for k in CLI_ENVIRON}  # put back on return: main() in a program changed them
    if level(args) < log.VERBOSE:
        quiet_tensorflow()  # tledge's own process: TensorFlow's C++ chatter off (set before it is imported)
    else:  # -v: TensorFlow's own log level, still Keras 3 on TensorFlow
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    console = log.install(args.command, level(args))
    if args.command in REPAIRING:  # (docs/int8-fidelity.md, "Repeat exports")
        os.environ.pop("TF_ENABLE_ONEDNN_OPTS", None)
    rc, caught = None, catch_stops()
    try:
        rc = _run(args, console)
        # it landed in a finalizer or a weakref callback (`Exception ignored in ...`): the stop is still said
        if _SIGNALS_SEEN and rc not in STOP_CODES:
            rc = _stopped(f"tledge {args.command}")
    finally:  # a crash (a traceback follows) or a stop: say where the libraries' messages are, if not kept
        from tledge.signals import signals_held

        with signals_held(reraise=rc not in STOP_CODES):  # a second signal while stopping: a traceback, exit 1
            log.finish(console, rc is None, stopped=rc in STOP_CODES)
            log.uninstall()
        import signal

        for sig, handler in caught.items():
            if handler is not None:
                signal.signal(sig, handler)
        for k, v in environ.items():
            os.environ.pop(k, None) if v is None else os.environ.update({k: v})
        _SIGNALS_SEEN.clear()  # this command's: a library export after an interrupted main() stopped at its first step
    if from_shell:  # (at exit: a program that calls main() keeps its Ctrl-C until it ends)
        from tledge.signals import quiet_at_exit

        quiet_at_exit()
    return rc


def _more_files(args, extra: list[str]) -> bool:
    """Files after an option (`tledge parity m.keras --images val/ export/`, `tledge bench a.tflite --runs 9 --
    b.onnx`) join the verb's file list; False (said on stderr) when the verb takes none or one is an option."""
    more = getattr(importlib.import_module(f"tledge.cli.{args.command}"), "MORE_FILES", None) \
        if args.command else None
    after_dashes = extra[0] == "--"
    extra = extra[1:] if after_dashes else extra
    if extra and (more is None or (not after_dashes and any(e.startswith("-") for e in extra))):
        prog = f"tledge {args.command}" if args.command else "tledge"
        print(f"{prog}: error: unrecognized arguments: {' '.join(extra)} (see {prog} --help)", file=sys.stderr)
        return False
    if extra:
        setattr(args, more, [*(getattr(args, more) or []), *extra])
    return True




def _run(args, console) -> int:
    from tledge import log

    mod = importlib.import_module(f"tledge.cli.{args.command}")
    prefix = f"tledge {args.command}"
    try:
        with log.capture(console), warnings_not_errors():  # a command's warnings are output, never exceptions
            rc = int(mod.run(args) or 0)
            try:
                sys.stdout.flush()  # here, not at exit: a pipe's reader that left is seen by the handler below
            except BrokenPipeError:
                raise
            except OSError as exc:  # `> /dev/full`: say it was standard output, not "no space left" on no disk named
                raise OSError(exc.errno, exc.strerror, "writing to standard output") from None
            return rc
    except TledgeError as exc:
        _say(f"{prefix}: error: {exc}")
        return exc.exit_code
    except BrokenPipeError:  # `tledge run ... | head`: the reader left; stop quietly, as Unix tools do
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes stdout
        return 141  # 128 + SIGPIPE, the shell's code for a writer the pipe's reader left
    except OSError as exc:  # a disk, permission or path problem: the user's to fix, never a traceback
        from tledge.cli.oserrors import os_error_message

        _say(f"{prefix}: error: {os_error_message(exc)}")
        return 2
    except MemoryError:  # the machine's memory or a limit on it: one line, not a traceback
        _say(f"{prefix}: error: out of memory (the machine's, or the process's limit: ulimit -v)")
        return 2
    except RuntimeError as exc:
        if "can't start new thread" not in str(exc):
            if _SIGNALS_SEEN:  # (re-raised here, the Exception branch below never saw it)
                return _stopped(prefix)
            raise
        _say(f"{prefix}: error: cannot start a thread ({exc}): a memory or process limit (ulimit -v, ulimit -u)")
        return 2
    except KeyboardInterrupt:
        return _stopped(prefix, KeyboardInterrupt)
    except Terminated as exc:  # (SIGTERM, or SIGHUP: HungUp)
        return _stopped(prefix, type(exc))
    except Exception:  # a signal that landed in TensorFlow's tracing became a SystemError: a traceback, exit 1
        if not _SIGNALS_SEEN:
            raise
        return _stopped(prefix)


def _stopped(prefix: str, stop: type[BaseException] | None = None) -> int:
    """A stop said in one line: `stop` (KeyboardInterrupt, Terminated or HungUp), by default the one the CLI's
    handlers saw (an error after that signal is the stop); its exit code: 130 (Ctrl-C), 143 (SIGTERM) or 129
    (SIGHUP), 128 + the signal's number, as the shell reports a process the signal ended."""
    from tledge.signals import seen_stop

    stop = stop or seen_stop()
    if stop is KeyboardInterrupt:
        _say(f"{prefix}: interrupted")
        return 130
    _say(f"{prefix}: terminated ({stop.signal_name})")
    return stop.exit_code
