"""What tledge's command line shows, and where everything else goes.

tledge's own lines go to stderr with one prefix (`tledge export: note: ...`, `tledge export: warning: ...`,
each warning once) or are progress lines (`[3/6] int8 TFLite: calibrating 256 images ... 41 s`; a live
bar only on a terminal). Everything else written to stderr while a command runs (TensorFlow's C++ logs,
absl, `fully_quantize: ...`, calibrator and delegate chatter, other packages' Python warnings) goes to
a log file at the file-descriptor level (os.dup2: TF_CPP_MIN_LOG_LEVEL does not catch absl's
InitializeLog warning or cuInit errors). A verb names where the log is kept (`keep_log`, e.g.
`<out>/export.log`); with `-v` nothing is redirected and it all shows on the terminal.

Library calls print nothing from here: `note`, `step`, `plan` are silent until the CLI `install`s a console.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import warnings
from pathlib import Path

from tledge import logfiles

QUIET, NORMAL, VERBOSE = -1, 0, 1


class Console:
    """One command's terminal output: level, prefix, warnings seen, step counter, log file."""

    def __init__(self, verb: str, level: int = NORMAL):
        self.verb, self.level = verb, level
        self.stream = sys.stderr  # the terminal; `capture` points it at the real stderr when fd 2 is redirected
        self.seen: set[str] = set()
        self.total, self.done = 0, 0
        self.log_path: Path | None = None  # the file fd 2 goes to while a command runs
        self.keep: Path | None = None  # where the verb wants the log kept
        self.append = False  # kept after the log already there (a resumed training's), not in its place
        self.written = False  # the verb's outputs are in place (`outputs_written`): its log goes with them
        self.displaced = False  # a failed run's log left in the temporary folder: the earlier run's stays
        self.logfile = None  # the open log while fd 2 goes to it (None with -v and outside `capture`)
        self.handler = None  # the root logging handler on `logfile` (`library_logging_to_log`)
        self._lock = threading.Lock()

    @property
    def prefix(self) -> str:
        return f"tledge {self.verb}" if self.verb else "tledge"

    def line(self, text: str) -> None:
        """One of tledge's lines: on the terminal, and in the log (a run's record: train.log held only TensorFlow's
        start-up lines, never the epochs, notes or the error)."""
        with self._lock:
            try:
                self.stream.write(text + "\n")
                self.stream.flush()
            except (OSError, ValueError):  # stderr closed, full or its reader gone: the work goes on, the log keeps it
                pass
            if self.logfile is not None:
                with contextlib.suppress(Exception):  # the log holds the line, not the terminal's redrawing of it
                    self.logfile.write(text.lstrip("\r").replace("\x1b[K", "") + "\n")

    def say(self, kind: str, message: str, *, once: bool = False, min_level: int = NORMAL) -> None:
        if self.level < min_level or (once and message in self.seen):
            return
        self.seen.add(message)
        self.line(f"{self.prefix}: {kind}: {message}")

    @property
    def tty(self) -> bool:
        try:  # TERM=dumb: a terminal that cannot redraw a line
            return self.stream.isatty() and os.environ.get("TERM") != "dumb"
        except (AttributeError, ValueError):
            return False


_console: Console | None = None


def install(verb: str, level: int = NORMAL) -> Console:
    global _console
    _console = Console(verb, level)
    return _console


def uninstall() -> None:
    global _console
    _console = None


def current() -> Console | None:
    return _console


def note(message: str) -> None:
    """`tledge VERB: note: ...` on stderr (not with -q); silent outside the CLI."""
    if _console is not None:
        _console.say("note", message, once=True)


def warn(message: str) -> None:
    """`tledge VERB: warning: ...`, each message once (shown with -q too)."""
    if _console is not None:
        _console.say("warning", message, once=True, min_level=QUIET)
    else:
        from tledge.errors import TledgeWarning

        warnings.warn(message, TledgeWarning, stacklevel=2)


def keep_log(path: str | Path, append: bool = False) -> None:
    """Keep this command's third-party log at `path` when it ends (if its folder exists then); append: after the log
    already there (`train --resume` on a finished run replaced its train.log by one line)."""
    if _console is not None:
        _console.keep, _console.append = Path(path), append


def outputs_written() -> None:
    """The command's outputs are in place: its log is kept with them even if a stop comes now."""
    if _console is not None:
        _console.written = True


def kept_log() -> Path | None:
    """Where this command's log will be kept (None with -v, outside the CLI, or when no verb asked)."""
    c = _console
    return c.keep if c is not None and c.keep is not None and c.log_path is not None else None


# ---- progress ---------------------------------------------------------------------------------------------
def plan(total: int) -> None:
    """The number of steps the command will report (`[k/total]`); `add_steps` when more turn up."""
    if _console is not None:
        _console.total, _console.done = int(total), 0


def add_steps(n: int = 1) -> None:
    if _console is not None:
        _console.total += n


def progress_line(done: int, total: int, title: str, seconds: float) -> str:
    """`[3/20] head: loss 0.21 ... 4.2 s`: the finished form of a progress line."""
    return f"[{done}/{total}] {title} ... {_seconds(seconds)}"


def progress(done: int, total: int, title: str, seconds: float) -> None:
    """A step its caller counts (a training epoch) as one finished progress line on stderr; not with -q,
    silent outside the CLI."""
    c = _console
    if c is not None and c.level >= NORMAL:
        c.line(progress_line(done, total, title, seconds))


def _seconds(t: float) -> str:
    return f"{t:.1f} s" if t < 10 else f"{t:.0f} s"


@contextlib.contextmanager
def step(title: str):
    """One long step: on a terminal a live line with a bar and the elapsed time, otherwise one line
    when it ends: `[3/6] int8 TFLite: calibrating 256 images ... 41 s`. A stop the CLI saw and lost (see
    tledge.signals.stop_if_signalled) is raised again here, before the step starts."""
    from tledge.signals import stop_if_signalled

    stop_if_signalled()
    c = _console
    if c is None or c.level < NORMAL:
        yield
        return
    c.done += 1
    total = max(c.total, c.done)
    head = f"[{c.done}/{total}]"
    start = time.perf_counter()
    stop = threading.Event()
    ticker = None
    if c.tty:
        def tick():
            while not stop.wait(0.5):
                width = 20
                fill = int(width * (c.done - 1) / total)
                bar = "#" * fill + "-" * (width - fill)
                with c._lock, contextlib.suppress(OSError, ValueError):  # a terminal gone: no progress to show
                    c.stream.write(f"\r{head} [{bar}] {title} {_seconds(time.perf_counter() - start)}\x1b[K")
                    c.stream.flush()

        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()
    ok = False
    try:
        yield
        ok = True
    finally:
        stop.set()
        if ticker is not None:
            ticker.join()
        text = f"{head} {title} ... {_seconds(time.perf_counter() - start)}"
        if ok:
            c.line(f"\r{text}\x1b[K" if c.tty else text)
        elif c.tty:  # the error line that follows says what went wrong
            c.line(f"\r{text} (stopped)\x1b[K")


# ---- third-party output -----------------------------------------------------------------------------------
def _showwarning(c: Console, logfile):
    from tledge.errors import TledgeWarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, TledgeWarning):
            c.say("warning", str(message), once=True, min_level=QUIET)
            return
        text = warnings.formatwarning(message, category, filename, lineno, line)
        if logfile is None:  # -v: on the terminal, once
            if text not in c.seen:
                c.seen.add(text)
                c.stream.write(text)
        else:
            with contextlib.suppress(OSError, ValueError):  # a full $TMPDIR: the warning is lost, not the conversion
                logfile.write(text)                           # that raised it ("int8 conversion failed: errno 28")
                logfile.flush()

    return show


def library_logging_to_log() -> None:
    """While a command's output is captured, Python `logging` records (tf2onnx's optimizer tracebacks,
    onnxruntime.quantization's `logging.warning`) go to its log file: without a root handler, the first
    `logging.warning()` makes one (basicConfig) on `sys.stderr`, which is the terminal while fd 2 goes
    to the log. Called by tledge._deps.require after each heavy import (importing `logging` here would
    cost `tledge run`'s cold start); a no-op outside `capture` and with -v."""
    c = _console
    if c is None or c.logfile is None or c.handler is not None:
        return
    import logging

    c.handler = logging.StreamHandler(c.logfile)
    c.handler.setFormatter(logging.Formatter(logging.BASIC_FORMAT))
    logging.getLogger().addHandler(c.handler)


def _drop_logging_handler(c: Console) -> None:
    if c.handler is not None:
        import logging

        logging.getLogger().removeHandler(c.handler)
        c.handler = None


def _recording_warnings() -> bool:
    """True inside `warnings.catch_warnings(record=True)` (pytest.warns, pytest's own per-test
    recording): the caller collects the warnings, so they are left to it."""
    impl = getattr(warnings, "_showwarnmsg_impl", None)
    return impl is not None and getattr(impl, "__module__", None) != "warnings"


@contextlib.contextmanager
def capture(c: Console, hook_warnings: bool | None = None):
    """While the command runs: fd 2 into the log file (unless -v), tledge's lines to the real stderr,
    warnings through `c` (unless something is recording them). Restores everything after, then
    keeps the log where the verb asked."""
    saved_show = warnings.showwarning
    hook = not _recording_warnings() if hook_warnings is None else hook_warnings
    if c.level >= VERBOSE:
        if hook:
            warnings.showwarning = _showwarning(c, None)
        try:
            yield c
        finally:
            warnings.showwarning = saved_show
        return
    fd, name = logfiles.temp_log(f"tledge-{c.verb or 'cli'}-")
    c.log_path = Path(name)
    logfile = os.fdopen(fd, "a", buffering=1, encoding="utf-8", errors="replace")
    original_stderr, term = sys.stderr, None
    for s in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            s.flush()
    saved_fd = os.dup(2)
    try:
        if logfiles.is_fd2(sys.stderr):  # a real terminal / pipe: tledge's lines go to a copy of the original fd 2
            term = os.fdopen(os.dup(saved_fd), "w", buffering=1, encoding=getattr(sys.stderr, "encoding", None)
                             or "utf-8", errors="replace")
            sys.stderr = term
        c.stream = sys.stderr
        _libraries_to(logfile, c)
        c.logfile = logfile
        if "logging" in sys.modules:  # else the first heavy import (tledge._deps.require) does it
            library_logging_to_log()
        if hook:
            warnings.showwarning = _showwarning(c, logfile)
        yield c
    finally:
        warnings.showwarning = saved_show
        _drop_logging_handler(c)
        c.logfile = None
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(saved_fd, 2)
        os.close(saved_fd)
        sys.stderr = original_stderr
        c.stream = original_stderr
        if term is not None:
            with contextlib.suppress(OSError):  # a full or closed terminal stream: its last line is lost, not the run
                term.close()
        with contextlib.suppress(OSError):  # the log's last lines on a full $TMPDIR: lost, not the run's exit status
            logfile.close()
        refused = sys.exc_info()[1]  # bad input (exit 2) loses nothing: not the last run's log, not a new file
        if refused is not None and (getattr(refused, "exit_code", None) == 2 or isinstance(refused, OSError)):
            c.keep = None
        # a run stopped or failed before its outputs were in place leaves the earlier run's log, which describes the
        # files still there (its own stays in the temporary folder, named by `finish`): an export that converted
        # nothing replaced the log of the export whose files it left
        if refused is not None and not c.written and c.keep is not None and c.keep.exists():
            c.displaced = True
        else:
            _settle_log(c)


@contextlib.contextmanager
def root_untouched():
    """absl's warning() (TensorFlow's converters, Keras' HDF5 saving) calls logging.basicConfig() on a root logger
    without handlers: a library export() or train() left a stderr handler there, and the caller's own
    basicConfig() then did nothing. A NullHandler holds the place while the block runs."""
    import logging

    root, spare = logging.getLogger(), logging.NullHandler()
    if not root.handlers:
        root.addHandler(spare)
    try:
        yield
    finally:
        root.removeHandler(spare)


LOG_LIMIT = 8 << 20  # bytes of the libraries' messages a long run keeps (a camera for days: FFmpeg's decode errors)


def bound_log(limit: int = LOG_LIMIT) -> None:
    """Keep the log of the running command under `limit` bytes: past it, it starts again with a line saying so (fd 2
    is appended to, so the libraries' next messages go to its start). A live `tledge run` calls it now and then."""
    c = current()
    f = getattr(c, "logfile", None) if c is not None else None
    if f is None:
        return
    with contextlib.suppress(OSError, ValueError):
        if os.fstat(f.fileno()).st_size > limit:
            os.ftruncate(f.fileno(), 0)
            os.lseek(f.fileno(), 0, os.SEEK_SET)  # (a descriptor without O_APPEND, tempfile's: no hole of NULs)
            f.write(f"[tledge: the libraries' earlier messages were dropped past {limit >> 20} MB]\n")


def _libraries_to(logfile, c: Console) -> None:
    """fd 2 (what the libraries write themselves) into the log, or to /dev/null when the temporary folder is nearly
    full: LLVM's stream saw its failed write and exited 1 at the end of an export that had passed."""
    folder = os.path.dirname(str(c.log_path))
    if logfiles.room_for_libraries(folder):
        os.dup2(logfile.fileno(), 2)
        return
    logfiles.to_null(2)
    c.say("note", f"the temporary folder {folder} has under {logfiles.LOG_ROOM >> 20} MB free: "
                  "the libraries' own messages are not logged (set TMPDIR to a folder with room)")


def _settle_log(c: Console) -> None:
    """Move the log where the verb asked (if that folder exists then); `finish` decides about the rest."""
    log = c.log_path
    if log is None or not log.exists():
        return
    if c.keep is not None and c.keep.parent.is_dir():
        tmp = c.keep.with_name(f".{c.keep.name}.tmp")
        try:
            import shutil

            joined = c.append and c.keep.is_file()
            shutil.copyfile(c.keep if joined else log, tmp)
            if joined:
                with open(tmp, "ab") as out, open(log, "rb") as new:
                    shutil.copyfileobj(new, out)
            os.replace(tmp, c.keep)
            log.unlink()
            c.log_path = c.keep
            return
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
    if log.stat().st_size == 0:
        log.unlink()
        c.log_path = None


def finish(c: Console, crashed: bool, stopped: bool = False) -> None:
    """A log left in the temporary folder: named when the command crashed (and it says something), or was stopped
    (Ctrl-C, SIGTERM, SIGHUP) after its output folder, where the log was to go, was removed; else removed."""
    log = c.log_path
    if log is None or c.keep == log or not log.exists():
        return
    if (crashed or c.displaced or (stopped and c.keep is not None)) and log.stat().st_size:
        c.say("note", f"TensorFlow's and other libraries' messages are in {log} (-v shows them)")
        return
    log.unlink()
    c.log_path = None
