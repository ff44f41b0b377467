"""tledge run MODEL --source SRC [--top-k K] [--threshold T] [--json] [--csv FILE] [--save PATH] ...

Exit codes: 0 done (unreadable inputs are skipped and counted), 1 a live source was lost (gave up
reconnecting), 2 bad arguments / model / source, or nothing could be read at all, 130 Ctrl-C, 143 SIGTERM,
129 SIGHUP (the results so far kept).
No TensorFlow is imported.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from tledge.paths import expand, glob_paths
from tledge.cli.model_options import add_model_options, load_kwargs


def add_arguments(p) -> None:
    p.add_argument("model", help="a .tflite or .onnx file (tledge export, or made elsewhere)")
    p.add_argument("--source", required=True,
                   help="image, folder (recursive), glob ('photos/**/*.jpg'), video file, camera index, "
                        "rtsp:// or http:// URL, GStreamer pipeline (with '!'), or picamera2")
    p.add_argument("--top-k", type=int, help="predictions per input (default 1; a multi-label file: every label "
                                              "scoring over 0.5)")
    p.add_argument("--threshold", type=float, help="only report predictions scoring at least T")
    p.add_argument("--json", action="store_true", help="one JSON object per input on stdout (summary on stderr)")
    p.add_argument("--csv", help="also write the results to a CSV file (written atomically)")  # str: keeps a "/"
    p.add_argument("--save", type=Path, help="write annotated frames: a folder, or a video file (.mp4, .avi, .mkv, "
                                              ".mov, .m4v)")
    p.add_argument("--max-frames", type=int, help="stop after N inputs")
    p.add_argument("--workers", type=int, help="preparation threads for folders/videos (default: half the usable "
                                               "cores, the other half infers)")
    p.add_argument("--reconnect", type=int, default=5, metavar="N",
                   help="live sources: reconnect attempts before giving up (default 5)")
    p.add_argument("--reconnect-delay", type=float, default=1.0, metavar="S",
                   help="first reconnect delay in seconds, doubled each attempt up to 30 (default 1)")
    add_model_options(p)


def run(args) -> int:
    from tledge.runtime import load
    from tledge.runtime.pipeline import Runner, split_cores
    from tledge.runtime.sources import open_source

    _validate(args)
    source = open_source(args.source, retries=args.reconnect, backoff=args.reconnect_delay, on_event=_event)
    kw = load_kwargs(args)
    one_image = getattr(source, "__len__", None) is not None and len(source) == 1
    if not (source.live or one_image or args.threads or args.device or os.environ.get("TLEDGE_THREADS")):
        kw["threads"] = split_cores()[1]  # preparation runs alongside: share the cores
    try:
        model = load(args.model, **kw)
    except BaseException:
        source.close()
        raise
    _note(f"{model.path.name}: {model.format} via {model.provider}, {model.backend.threads} thread(s), "
          f"contract {model.load_info.contract_origin}, {len(model.contract.labels)} labels; source {source.name}")
    for note in model.load_info.notes:
        _note(f"note: {note}")
    runner = Runner(model, top_k=args.top_k, threshold=args.threshold, workers=args.workers,
                    keep_images=args.save is not None, max_frames=args.max_frames)
    stopped = _loop(runner, source, args)
    s = runner.summary
    if args.json:  # the results are on stdout: a full or closed stderr loses the summary only
        _event(s.line(), prefix="")
    elif stopped:  # a hang-up closed the terminal: stdout may be gone, the exit code still says the stop
        _event(s.line(), prefix="", out=sys.stdout)
    else:
        print(s.line(), flush=True)
    if stopped:
        _event(f"terminated ({stopped.signal_name}); the results so far are kept")
        return stopped.exit_code
    if s.interrupted:
        return 130
    if s.lost:
        return 1
    return 0 if s.ok else 2  # nothing classified (every input skipped, or a video with no frame): exit 2


def _validate(args) -> None:
    """Every path and option, before the source or the model is opened."""
    from tledge.cli import validate as V
    from tledge.errors import TledgeError
    from tledge.cli.model_options import check_model_options
    from tledge.images import IMAGE_SUFFIXES
    from tledge.runtime.sources import SAVE_VIDEO_SUFFIXES, VIDEO_SUFFIXES

    # (`~/x` in a path option was expanded by tledge.cli.main, as --source reads it)
    V.edge_model_or_export(args.model)
    from tledge._deps import require

    # images and video are read and resized by OpenCV: without it (a --no-deps install on a board whose system
    # OpenCV is not in the venv) a video traced back and every image was "SKIPPED"
    require("cv2", purpose="reading and resizing images and video; on Jetson, JetPack's OpenCV in a venv made "
                           "with --system-site-packages")
    if not str(args.source).strip():  # an unset shell variable: not the current folder
        raise TledgeError("--source is empty: pass an image, folder, glob, video, camera index or URL")
    V.in_range(args.top_k, "--top-k", 1)
    V.in_range(args.threshold, "--threshold", 0.0, 1.0)
    V.in_range(args.max_frames, "--max-frames", 1)
    V.in_range(args.workers, "--workers", 1, 64)
    V.in_range(args.reconnect, "--reconnect", 0)
    V.in_range(args.reconnect_delay, "--reconnect-delay", 0.0, 3600.0)
    check_model_options(args, [args.model])
    if args.csv:
        V.output_file(args.csv, "--csv")
        if args.save and Path(args.csv).resolve() == args.save.resolve():
            raise TledgeError(f"--csv and --save are both {args.csv}: one would replace the other")
    if args.save:
        videos = ", ".join(SAVE_VIDEO_SUFFIXES)
        if args.save.suffix.lower() in VIDEO_SUFFIXES and args.save.suffix.lower() not in SAVE_VIDEO_SUFFIXES:
            raise TledgeError(f"--save {args.save}: tledge reads {args.save.suffix} video but writes only {videos}")
        if args.save.suffix.lower() in VIDEO_SUFFIXES:
            V.output_file(args.save, "--save")
        elif args.save.suffix.lower() in IMAGE_SUFFIXES:  # `--save out.gif` made a folder of that name
            raise TledgeError(f"--save {args.save}: pass a folder (annotated images) or a video file ({videos})")
        else:
            V.output_dir(args.save, "--save")
    _keep_inputs(args)
    from tledge.trust import export_files

    model_files = export_files(args.model)
    for flag, out in (("--csv", args.csv), ("--save", args.save)):  # nor the model, its export's files, --labels
        if out:
            V.not_an_input(out, flag, [p for p in (*model_files, getattr(args, "labels", None)) if p])


def _keep_inputs(args) -> None:
    """--csv / --save never replace what is being classified: not an input file, not the source folder (or a
    folder inside it, whose annotated copies the next run would read), not a folder input files lie in (at any
    depth)."""
    from tledge.errors import TledgeError
    from tledge.runtime.sources import VIDEO_SUFFIXES

    from tledge.images import IMAGE_SUFFIXES

    files, folder = _local_inputs(args.source) if args.csv or args.save else ([], None)
    inputs = {f.resolve() for f in files}
    recursive = Path(args.source).is_dir() or "**" in str(args.source)  # `*.jpg` never reads annotated/*.jpg
    source_dir = folder.resolve() if folder is not None and recursive else None  # a folder, or a ** glob's
    for flag, out in (("--csv", args.csv), ("--save", args.save)):
        if not out:
            continue
        o = Path(out).resolve()
        if o in inputs or (source_dir in o.parents and o.suffix.lower() in IMAGE_SUFFIXES and o.is_file()):
            raise TledgeError(f"{flag} {out} is an input of --source {args.source}: it would be overwritten; "
                              "write the results elsewhere")
        if flag == "--save" and o.suffix.lower() not in VIDEO_SUFFIXES:
            if source_dir is not None and (o == source_dir or source_dir in o.parents):
                raise TledgeError(f"--save {out} is inside the source folder {source_dir}: the annotated copies "
                                  "would replace or join the photos; pass a folder outside it")
            if any(f.parent == o for f in inputs):
                raise TledgeError(f"--save {out} holds input files of --source {args.source}: their annotated "
                                  "copies would overwrite them; pass another folder")
            other = _foreign_image(o)
            if other is not None:
                raise TledgeError(f"--save {out} already holds images an earlier --save did not write ({other}): "
                                  "annotated copies of the same name would replace them; pass a new or empty folder")
            # a marked folder holding them deeper, or the folder (a glob's fixed part) they are listed under:
            # `shots/*/x.jpg` into a marked `shots` wrote shots/a/x.jpg's copy over shots/a/x.jpg
            # (images only: a video's frames are saved as frame_NNNNNN.jpg, never over the video)
            images = [f for f in inputs if f.suffix.lower() in IMAGE_SUFFIXES]
            video = Path(str(args.source)).suffix.lower() in VIDEO_SUFFIXES
            root = folder.resolve() if folder is not None and not video else None
            if any(o in f.parents for f in images) or (root is not None and (root == o or o in root.parents)):
                raise TledgeError(f"--save {out} holds input files of --source {args.source}: their annotated "
                                  "copies would overwrite them; pass another folder")


def _foreign_image(folder: Path, limit: int = 20000) -> str | None:
    """An image in `folder` (at any depth), or a link to a folder, when no earlier --save marked it as its own
    (SAVE_MARKER); a folder too large to look through is treated as holding some."""
    from tledge.images import IMAGE_SUFFIXES
    from tledge.runtime.outputs import SAVE_MARKER

    if not folder.is_dir() or (folder / SAVE_MARKER).is_file():
        return None
    seen, stack = 0, [folder]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for e in entries:
            seen += 1
            if seen > limit:
                return f"over {limit} entries"
            if e.is_symlink() and e.is_dir():  # a link to a folder (of photos): copies were written through it
                return os.path.relpath(e.path, folder) + os.sep + " (a link to a folder)"
            if e.is_dir(follow_symlinks=False):
                stack.append(Path(e.path))
            elif Path(e.name).suffix.lower() in IMAGE_SUFFIXES:
                return os.path.relpath(e.path, folder)
    return None


def _loop(runner, source, args):
    """Results to stdout, --csv and --save; the Terminated (SIGTERM: `timeout`, systemd; SIGHUP: HungUp, an ssh
    connection dropped) that stopped it, which keeps what was written as Ctrl-C does; else None."""
    from tledge.errors import VideoDiskFull
    from tledge.signals import Terminated
    from tledge.runtime.outputs import CsvSink, SaveSink, human_line, json_line
    from tledge.signals import signals_held  # here: a second Ctrl-C in its first import skipped every close below

    csv_sink = CsvSink(args.csv) if args.csv else None
    # annotated images keep their paths under the folder (or a glob's fixed part): the root alone, nothing listed
    save = SaveSink(args.save, fps=source.fps, root=_local_inputs(source.name, listed=False)[1],
                    inputs=getattr(source, "files", None)) if args.save else None
    results = runner.run(source)
    ok, stopped, check_log = False, None, time.monotonic() + 10
    try:
        for r in results:  # the files first: a Ctrl-C in a print to a stalled reader left the CSV a row short
            if time.monotonic() > check_log:  # the libraries' messages of a run of days: bounded
                from tledge.log import bound_log

                bound_log()
                check_log = time.monotonic() + 10
            if csv_sink:
                csv_sink.write(r)
            if save:
                try:
                    save.write(r)
                except VideoDiskFull:  # the CSV so far kept, as at the video's close (the partial video is gone)
                    ok = True
                    raise
            try:
                print(json_line(r) if args.json else human_line(r), flush=source.live)
            except BrokenPipeError:
                raise
            except OSError as exc:  # stdout on a full disk: the CSV and the video are kept; the message names stdout
                ok = True
                raise OSError(exc.errno, exc.strerror, "writing the results to standard output") from None
        ok = True
    except BrokenPipeError:  # the reader of stdout went away (`| head -1`): the CSV is kept, as the video is
        ok = True
        raise
    except KeyboardInterrupt:
        runner.summary.interrupted = ok = True
    except Terminated as exc:  # exit 143, or 129 for SIGHUP
        runner.summary.interrupted = ok = True
        stopped = exc
    finally:
        # a second Ctrl-C or SIGTERM while the outputs are closed is held back (dropped when the run is already
        # stopping): it landed in the join of the preparation threads and lost the CSV and the video, or hung
        with signals_held(reraise=not runner.summary.interrupted):
            results.close()
            try:  # a failed run keeps the earlier video as it keeps the earlier CSV
                if save:
                    save.close() if ok else save.abort()
            finally:
                if csv_sink:
                    csv_sink.close() if ok else csv_sink.abort()
    return stopped


def _note(message: str) -> None:
    """What was loaded and the model's notes, on stderr; not with -q."""
    from tledge import log

    console = log.current()
    if console is None or console.level >= log.NORMAL:
        _event(message)


def _event(message: str, prefix: str = "tledge run: ", out=None) -> None:
    """A source's events (a stream lost, reconnected, given up), on stderr even with -q (if stderr takes them: a
    full or closed one lost the results on stdout)."""
    try:
        print(f"{prefix}{message}", file=out or sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def _local_inputs(spec: str | Path, *, listed: bool = True) -> tuple[list[Path], Path | None]:
    """Without opening anything: the files a file or glob source reads (none listed for a folder, nor with
    listed=False), and the folder (or a glob's fixed leading folder) that outputs keep relative paths to; ([], None)
    for cameras, URLs and pipelines."""
    import glob
    import itertools

    from tledge.runtime.sources import source_text

    s = source_text(spec)
    p = expand(s)
    if p.is_file():
        return [p], None
    if p.is_dir():  # not listed: a folder's inputs are the images inside it (the caller checks the folder)
        return [], p
    if glob.has_magic(s):
        fixed = list(itertools.takewhile(lambda q: not glob.has_magic(q), p.parts))
        files = [m for m in glob_paths(p) if m.is_file()] if listed else []
        return files, Path(*fixed)
    return [], None
