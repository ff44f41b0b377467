"""The CLI's Ctrl-C, SIGTERM and SIGHUP handlers, and those signals held back while a group of file operations runs
(os and threading only: on `tledge run`'s path, where tledge.io's tempfile import is not)."""
from __future__ import annotations

import contextlib
import os
import sys
import threading
from contextlib import contextmanager
from typing import Callable


class Terminated(BaseException):
    """SIGTERM (a scheduler, `kill`, systemd), raised in the main thread so that every `finally` runs: the run's log
    is kept in its folder, staging folders and locks go. It killed the process outright, its log left in /tmp."""
    signal_name, exit_code = "SIGTERM", 143  # 128 + 15, as the shell reports a process the signal ended


class HungUp(Terminated):
    """SIGHUP (an ssh connection dropped, the terminal closed), stopped as SIGTERM stops: it killed the process
    outright, exit 129 and no message, a run's --csv and --save left as hidden temporary files, an export's lock and
    staging folder left in --out. Only where SIGHUP was at its default (nohup ignores it: left ignored)."""
    signal_name, exit_code = "SIGHUP", 129  # 128 + 1


SEEN: set[str] = set()  # "SIGINT" / "SIGTERM" / "SIGHUP": the signals the CLI's handlers have seen in this command
STOP_CODES = (130, Terminated.exit_code, HungUp.exit_code)  # a command's exit codes when a signal stopped it


def seen_stop() -> type[BaseException]:
    """The exception of the stop SEEN holds: a hang-up or SIGTERM before Ctrl-C (the one that ends the session)."""
    if "SIGHUP" in SEEN:
        return HungUp
    if "SIGTERM" in SEEN:
        return Terminated
    return KeyboardInterrupt


def _on_sigterm(signum, frame):
    SEEN.add("SIGTERM")
    raise Terminated


def _on_sighup(signum, frame):
    """An ssh connection dropped or the terminal closed: stopped as SIGTERM stops (cleanup, a run's files kept)."""
    SEEN.add("SIGHUP")
    raise HungUp


def _on_sigint(signum, frame):
    """Python's own Ctrl-C, remembered: a KeyboardInterrupt raised in a weakref callback is ignored by CPython, and a
    training went on to the end, exit 0."""
    SEEN.add("SIGINT")
    raise KeyboardInterrupt


def _catch_sigint():
    """Python's default Ctrl-C handler replaced by one that remembers (an ignored SIGINT, as CI's background jobs
    have, or a host program's handler stays); the one it replaced."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return None
    return signal.signal(signal.SIGINT, _on_sigint)


def _catch_at_default(name: str, handler):
    """Install the SIGTERM or SIGHUP handler when the signal is at its default (a host program's own stays; nohup's
    ignored SIGHUP stays ignored); the one it replaced."""
    import signal
    import threading

    sig = getattr(signal, name, None)  # (no SIGHUP on Windows)
    if sig is None or threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(sig) != signal.SIG_DFL:
        return None
    return signal.signal(sig, handler)


def catch_stops() -> dict:
    """The CLI's handlers of Ctrl-C, SIGTERM and SIGHUP installed (main() puts the replaced ones back): signal ->
    the handler each replaced (None: left as it was)."""
    import signal

    caught = {signal.SIGTERM: _catch_at_default("SIGTERM", _on_sigterm), signal.SIGINT: _catch_sigint()}
    if hasattr(signal, "SIGHUP"):
        caught[signal.SIGHUP] = _catch_at_default("SIGHUP", _on_sighup)
    return caught


def stop_if_signalled() -> None:
    """Raise the stop again when the CLI has seen a signal whose exception got lost: landing in a C extension's
    import it became that module's ImportError (caught: `import onnxruntime` in the ONNX pre-processing), or in a
    weakref callback, ignored. An export went on for 8 s, swapped in its files, PASSED, and then exited 143 (its int8
    ONNX file made without the pre-processing: agreement 0.567 where it is 0.900). Called between steps and before
    outputs are swapped in; outside the CLI nothing is ever seen, and it does nothing."""
    if SEEN:
        raise seen_stop()


@contextmanager
def signals_held(done: Callable[[], None] | None = None, *, reraise: bool = True):
    """Ctrl-C, SIGTERM and SIGHUP held back while a group of renames runs (an export's swap, a run's files moved into
    place): they arrive as Python exceptions, and one landing between two renames left half of the new files beside
    half of the old. A signal that comes meanwhile is noted, then raised again once the block is done, to the handler
    that was in place. Main thread only (where Python runs signal handlers); elsewhere a no-op. `done` is called before
    the held signal is raised when the block completed: what it wrote is whole (an export stopped with exit 143 after
    its files were swapped in said nothing of them). reraise=False: a held signal is dropped (the command is already
    stopping for an earlier one: a second Ctrl-C during the cleanup lost the CSV and the video)."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    held = [signal.SIGINT, signal.SIGTERM]
    if hasattr(signal, "SIGHUP") and signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # (nohup: stays ignored)
        held.append(signal.SIGHUP)
    previous = {s: signal.signal(s, lambda signum, frame: got.append(signum)) for s in held}
    completed = False
    try:
        yield
        completed = True
    finally:
        for s, handler in previous.items():  # None: a handler set outside Python, which cannot be put back
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        if got and reraise:
            if completed and done is not None:
                done()
            signal.raise_signal(got[0])


def quiet_at_exit() -> None:
    """quiet_shutdown() as the interpreter exits (registered last, it runs before the libraries' exit handlers)."""
    import atexit

    atexit.register(quiet_shutdown)


def quiet_shutdown() -> None:
    """Registered at exit, so run before the exit handlers registered earlier (TensorFlow's, the libraries': they
    can take seconds): the command is done and said so, and a Ctrl-C while the interpreter shuts down no longer
    prints "Exception ignored in ... KeyboardInterrupt" and skips the cleanup after it. The first one is dropped; a
    second ends the process at once, exit 130 (a shutdown that hangs can still be stopped). Only where the Ctrl-C
    handler is Python's own."""
    import signal

    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return
    seen: list[int] = []

    def stop(signum, frame):
        if seen:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os._exit(130)
        seen.append(signum)

    signal.signal(signal.SIGINT, stop)
