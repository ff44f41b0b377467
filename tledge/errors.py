"""Typed errors. Every user-facing failure is one of these, so the CLI can map it to exit code 2
(usage / input errors) or 1 (parity failed) and print one clear line."""


class TledgeError(Exception):
    """Base class: a problem with the user's input or environment, explained in the message."""

    exit_code = 2


class ContractError(TledgeError):
    """A preprocessing contract is invalid, missing, or does not fit the model."""


class ModelLoadError(TledgeError):
    """A model file is missing, truncated, of an unknown kind, or needs --unsafe."""


class ModelRunError(TledgeError):
    """A loaded model failed on an input: a shape or dtype it does not take, or its runtime's own failure."""


class ArgumentError(TledgeError, ValueError):
    """A library function was called with an argument it does not take (a ValueError too)."""


class ImageError(TledgeError):
    """An image could not be read or decoded."""


class DataError(TledgeError):
    """A data folder (training, calibration, validation) is unusable."""


class ExportError(TledgeError):
    """A conversion failed."""


class NothingConverted(ExportError):
    """Every conversion failed: no file to check or ship (the output folder is left as it was)."""

    exit_code = 1


class RepairTimeout(ExportError):
    """An int8 repair stopped part-way: the repair time budget (`--repair-time`) was spent while it ran."""


class VideoDiskFull(TledgeError):
    """The disk filled up under the video `tledge run --save` was writing: the partial video was removed and the run
    stops (what it wrote elsewhere, the --csv, is kept)."""


class ParityError(TledgeError):
    """An exported file does not behave like the reference model."""

    exit_code = 1

    def __init__(self, message, report=None):
        super().__init__(message)
        self.report = report


class MissingDependency(TledgeError, ImportError):
    """An optional dependency is not installed; the message names the pip extra."""


class TledgeWarning(UserWarning):
    """Warnings raised by tledge itself (preprocessing guessed, slow backend, random calibration)."""


def warnings_held(explain: bool = False):
    """A context manager: the warnings the main thread raises in its block are shown only if the block succeeds.
    Before an error they made its one line several (files ignored, then "class folder without images"; raw pixels
    assumed, then "1 labels but the model has 3 outputs"). explain: a TledgeError of the block carries them at its end
    instead (why a class folder of links to an unmounted disk has no images). Only the showing is held: filters,
    once-per-place and -W error apply as the warning is raised, and other threads' warnings are shown as they come."""
    import contextlib
    import threading
    import warnings

    @contextlib.contextmanager
    def held():
        main = threading.main_thread()
        if threading.current_thread() is not main:
            yield
            return
        shown, stored = warnings.showwarning, []

        def collect(message, category, filename, lineno, file=None, line=None):
            if threading.current_thread() is main:
                stored.append((message, category, filename, lineno, file, line))
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = collect
        try:
            yield
        except TledgeError as exc:
            said = "; ".join(str(w[0])[:300] for w in stored)
            if not (explain and said):
                raise
            raise type(exc)(f"{exc} (also found: {said})") from None
        finally:
            warnings.showwarning = shown
        for w in stored:
            shown(*w)

    return held()


def warnings_not_errors():
    """A context manager: `-W error` / PYTHONWARNINGS=error filters act as `default` in its block, the caller's filters
    back after. For the CLI's commands (their warnings are output: under a CI job's PYTHONWARNINGS=error a finished
    training raised its accuracy note before writing anything) and the converters (TensorFlow's own UserWarning made
    "int8 conversion failed"). Main thread only: warnings' filters are the process's."""
    import contextlib
    import threading
    import warnings

    @contextlib.contextmanager
    def relaxed():
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        with warnings.catch_warnings():
            filters = [("default",) + f[1:] if f[0] == "error" else f for f in warnings.filters]
            warnings.resetwarnings()
            warnings.filters[:] = filters
            yield

    return relaxed()
