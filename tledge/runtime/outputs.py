"""What `tledge run` writes: human lines, JSON lines, a CSV (atomic) and annotated images or video."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from tledge.errors import TledgeError, VideoDiskFull
from tledge.paths import utf8_name
from tledge.text import printable  # noqa: F401 (re-exported: tledge.cli.info, export_labels)
from tledge.runtime.pipeline import Result
from tledge.runtime.sources import VIDEO_SUFFIXES

CSV_FIELDS = ("source", "index", "status", "label", "score", "latency_ms", "prep_ms", "top", "error")
_WRITABLE = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
SAVE_MARKER = ".tledge-save"  # in a --save folder: written by tledge run, so a later --save may replace its images


# control characters (a terminal's escape sequences, a newline that fakes a result line), bidi overrides and
# lone surrogates (a file name in another system's encoding): shown as escapes, never sent to a terminal
def human_line(r: Result) -> str:
    src = printable(r.source)
    if r.status != "ok":
        return f"{src}: {r.status.upper()}: {printable(r.error)}"
    if not r.top:
        return f"{src}: (nothing above the threshold)  [{r.latency_ms:.2f} ms]"
    preds = ", ".join(f"{printable(p.label)} {p.score:.3f}" for p in r.top)
    return f"{src}: {preds}  [{r.latency_ms:.2f} ms]"


_LINE_BREAKS = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def stdout_is_utf8() -> bool:
    """Whether stdout takes every letter (else JSON on it is written with \\u escapes: PYTHONIOENCODING=ascii, a C
    locale without UTF-8 mode)."""
    import codecs

    try:
        return codecs.lookup(getattr(sys.stdout, "encoding", None) or "utf-8").name == "utf-8"
    except LookupError:
        return False


def readable(name: str) -> str:
    """A file name as its bytes say: in a C locale without UTF-8 mode Python holds a UTF-8 name's bytes as surrogates
    (`fourmi_\\udcc3\\udca9.jpg`), which the CSV and JSON wrote; bytes that are not UTF-8 stay surrogates."""
    try:
        return os.fsencode(name).decode("utf-8", "surrogateescape")
    except (UnicodeError, TypeError):
        return name


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet evaluates at the start of a cell


def _cell(text: str) -> str:
    """A text cell a spreadsheet shows as text: one that starts as a formula gets a leading ' (OWASP's CSV injection
    advice): a label `=HYPERLINK(...)` of a file made elsewhere, or a photo named `=1+2.jpg`, ran in Excel."""
    return "'" + text if text.startswith(FORMULA_START) else text


def json_line(r: Result) -> str:
    d = r.to_dict()
    d["source"] = readable(d["source"])
    return json_text(d)


def json_text(d, indent: int | None = None) -> str:
    """JSON for standard output: UTF-8 where it is and can be (a name that is not UTF-8, held as surrogates, in
    JSON's own \\udce9 escape: `info --json` wrote the raw byte, or a UnicodeEncodeError traceback)."""
    if not stdout_is_utf8():
        return json.dumps(d, ensure_ascii=True, indent=indent)
    text = json.dumps(d, ensure_ascii=False, indent=indent)  # JSON escapes control characters itself
    try:
        text.encode("utf-8")
        # but not U+0085, U+2028, U+2029 (a label of a file made elsewhere may hold them): str.splitlines() and
        # other line readers split one JSON line there
        return text.translate(_LINE_BREAKS)
    except UnicodeEncodeError:  # a lone surrogate: JSON's own \\udce9 escape, which JSON readers take back
        return json.dumps(d, ensure_ascii=True, indent=indent)


class CsvSink:
    """Rows to a temporary file beside `path`, moved into place by `close()` (atomic: a reader never
    sees half a file). `abort()` drops it."""

    def __init__(self, path: str | Path):
        from tledge.io import atomic_path

        self.path = Path(path)
        self._ctx = atomic_path(self.path)
        self._tmp = self._ctx.__enter__()
        # a file name in another system's encoding (Latin-1 bytes: surrogates in Python) as \udce9, not a crash
        self._fh = open(self._tmp, "w", newline="", encoding="utf-8", errors="backslashreplace")
        import csv

        self._w = csv.DictWriter(self._fh, fieldnames=CSV_FIELDS)
        self._w.writeheader()

    def write(self, r: Result) -> None:
        try:
            self._row(r)
        except OSError as exc:  # a full disk: the error names no file
            if exc.filename is not None or exc.errno is None:
                raise
            raise OSError(exc.errno, exc.strerror, str(self.path)) from exc

    def _row(self, r: Result) -> None:
        best = r.top[0] if r.top else None
        self._w.writerow({
            "source": _cell(readable(r.source)), "index": r.index, "status": r.status,
            "label": _cell(best.label) if best else "", "score": f"{best.score:.6f}" if best else "",
            "latency_ms": "" if r.latency_ms is None else f"{r.latency_ms:.3f}",
            "prep_ms": "" if r.prep_ms is None else f"{r.prep_ms:.3f}",
            "top": _cell(";".join(f"{_escaped(p.label)}:{p.score:.6f}" for p in r.top)), "error": _cell(r.error or "")})

    def close(self) -> None:
        self._fh.close()
        self._ctx.__exit__(None, None, None)

    def abort(self) -> None:
        self._fh.close()
        try:
            self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)
        except RuntimeError:
            pass


def annotate(rgb: np.ndarray, r: Result) -> np.ndarray:
    """A BGR copy of the frame with the top predictions written on a dark band at the top."""
    import cv2

    img = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    h, w = img.shape[:2]
    scale = max(0.35, min(1.5, w / 640))
    font = (cv2.FONT_HERSHEY_SIMPLEX, 0.7 * scale, max(1, int(2 * scale)))
    lines = [_caption(p, w - 12, font) for p in r.top] or ["(below threshold)"]
    step = int(22 * scale) + 4
    band = min(h, step * len(lines) + 6)
    img[:band] = (img[:band] * 0.35).astype(np.uint8)
    for i, text in enumerate(lines):
        cv2.putText(img, text, (6, step * (i + 1)), font[0], font[1], (255, 255, 255), font[2], cv2.LINE_AA)
    return img


def _caption(p, width: int, font: tuple) -> str:
    """`label score` within `width` px: a long label is cut (`...`) so the score stays on the image (it was pushed
    off it), and a label with letters OpenCV's Hershey font lacks is its class index `#1` (drawn as `??`)."""
    import cv2

    score = f" {p.score:.2f}"
    label = p.label if all(" " <= c <= "~" for c in p.label) else f"#{p.index}"

    def fits(text: str) -> bool:
        return cv2.getTextSize(text, *font)[0][0] <= width

    if fits(label + score):
        return label + score
    lo, hi = 0, len(label)  # the longest cut that fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(label[:mid] + "..." + score) else (lo, mid - 1)
    return label[:lo] + "..." + score if lo or fits("..." + score) else score.strip()


def _escaped(label: str) -> str:
    r"""A label in the CSV's `top` column (label:score;label:score): `\`, `;` and `:` escaped with `\`. A label
    "tiger shark; Galeocerdo: cuvieri" split the column in the wrong places."""
    return label.replace("\\", "\\\\").replace(";", "\\;").replace(":", "\\:")


class SaveSink:
    """Annotated frames: a video when `path` ends in a video suffix, else image files in a folder."""

    def __init__(self, path: str | Path, *, fps: float | None = None, root: Path | None = None,
                 inputs: list[Path] | None = None):
        self.path = Path(path)
        self.video = self.path.suffix.lower() in VIDEO_SUFFIXES
        self.fps, self.root = fps or 10.0, root
        self._writer, self._size, self.written, self._used = None, None, 0, set()
        # the names the listed inputs that keep theirs will take: a renamed copy (x.gif -> x.gif.png) gives way
        kept = (self._relative(f) for f in (inputs or ()) if not self.video)
        self._kept = {self.path / rel for rel in kept if rel.suffix.lower() in _WRITABLE}
        self._tmp = None  # a video's own temporary name beside it (two runs saving one video shared one name)
        self._grown = -1  # the partial video's size at the last check (`_check_growing`)
        if not self.video:
            self.path.mkdir(parents=True, exist_ok=True)
            marker = self.path / SAVE_MARKER  # the next --save here may replace what this one writes
            if not marker.is_file():
                marker.write_text("Annotated copies written by `tledge run --save`: a later --save to this folder "
                                  "may replace them.\n")

    def write(self, r: Result) -> None:
        if r.status != "ok" or r.frame is None or r.frame.image is None:
            return
        img = annotate(r.frame.image, r)
        if self.video:
            self._write_video(img)
        else:
            import cv2

            from tledge.io import atomic_write_bytes

            dst = self._image_path(r)
            self._check_inside(dst, r.frame.path)
            dst.parent.mkdir(parents=True, exist_ok=True)
            # encoded here and written by Python: cv2.imwrite crashed (SIGSEGV) on a file name that is not UTF-8
            done, data = cv2.imencode(dst.suffix, img)
            if not done:
                raise TledgeError(f"cannot encode {dst}")
            atomic_write_bytes(dst, data.tobytes())
        self.written += 1

    def _check_inside(self, dst: Path, src: Path | None) -> None:
        """Refuse a copy that would land outside the --save folder or on its own input: a folder in it that is a
        link (to the photos) was written through and the originals replaced, with exit 0. (A link at `dst` itself is
        replaced, not followed: atomic_path.)"""
        real = Path(os.path.realpath(dst.parent)) / dst.name
        root = Path(os.path.realpath(self.path))
        same = src is not None and Path(os.path.realpath(src)) == real
        if same or root not in real.parents:
            why = "its own input" if same else f"{real}, outside {root} (a linked folder?)"
            raise TledgeError(f"--save {self.path}: the annotated copy {dst} would be written to {why}; "
                              "pass a new or empty folder")

    def _image_path(self, r: Result) -> Path:
        p = r.frame.path
        if p is None:
            return self.path / f"frame_{r.index:06d}.jpg"
        rel = self._relative(p)
        renamed = rel.suffix.lower() not in _WRITABLE
        if renamed:  # x.gif beside x.png: x.gif.png and x.png
            rel = rel.with_name(rel.name + ".png")
        dst, n = self.path / rel, 1
        # two inputs of one name (a glob over folders, links): x.jpg, x_2.jpg; a renamed copy never takes the name of
        # an input that keeps its own (x.gif's copy was x.gif.png and the real x.gif.png's x.gif_2.png)
        while dst in self._used or (renamed and dst in self._kept):
            n += 1
            dst = self.path / rel.with_name(f"{rel.stem}_{n}{rel.suffix}")
        self._used.add(dst)
        return dst

    def _relative(self, p: Path) -> Path:
        """Where an input's copy goes under the --save folder (before any rename)."""
        if self.root is not None:  # as listed (a symlinked file keeps its place), else resolved
            for path, root in ((p, self.root), (p.resolve(), self.root.resolve())):
                try:
                    return path.relative_to(root)
                except ValueError:
                    pass
        return Path(p.name)

    def _write_video(self, img: np.ndarray) -> None:
        import cv2

        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._size = video_size(img.shape[1], img.shape[0])
            fourcc = cv2.VideoWriter_fourcc(*("MJPG" if self.path.suffix.lower() == ".avi" else "mp4v"))
            import tempfile  # (not at import: tledge run's cold start)

            # a name of its own, which OpenCV can open: its VideoWriter crashed (SIGSEGV) on a name not UTF-8
            here = utf8_name(self.path.parent.resolve())
            fd, tmp = tempfile.mkstemp(prefix=".tledge-save-", suffix=f".partial{self.path.suffix.lower()}",
                                       dir=self.path.parent if here else None)
            os.close(fd)
            self._tmp = Path(tmp)
            import weakref

            # removed at exit when neither close nor abort ran (a second Ctrl-C while the first one was handled)
            weakref.finalize(self, _unlink_quietly, self._tmp)
            writer = cv2.VideoWriter(str(self._tmp), fourcc, self.fps, self._size)
            if not writer.isOpened():  # not kept: close() must not move a file never written over this error
                writer.release()
                Path(self._tmp).unlink(missing_ok=True)
                w, h = self._size
                raise TledgeError(f"cannot write video {self.path} at {w}x{h} px (the frames' size; no encoder for "
                                  f"{self.path.suffix} at that size in this OpenCV)")
            self._writer = writer
        if (img.shape[1], img.shape[0]) != self._size:
            img = cv2.resize(img, self._size, interpolation=cv2.INTER_AREA)
        self._writer.write(img)
        if (self.written + 1) % GROWTH_CHECK_FRAMES == 0:
            self._check_growing()

    def _check_growing(self) -> None:
        """Stop when the partial video stopped growing while frames were written and its disk has no room: OpenCV's
        writer fails silently, and a full disk was said only when the input ended (a camera: never)."""
        try:
            size, fs = os.stat(self._tmp).st_size, os.statvfs(self._tmp.parent)
        except (OSError, AttributeError):  # (no statvfs on Windows)
            return
        free = (fs.f_bfree if os.geteuid() == 0 else fs.f_bavail) * fs.f_frsize  # root writes into the reserve
        stuck, self._grown = size == self._grown and free < FULL_BELOW, size
        if stuck:
            self.abort()
            raise VideoDiskFull(f"cannot write video {self.path}: the disk is full ({free >> 10} KiB free; the video "
                                f"stopped growing by frame {self.written + 1}); "
                                f"{'the earlier video is kept' if self.path.exists() else 'nothing written'}")

    def close(self) -> None:
        """The video replaces `path` when it reads back whole. OpenCV's writer fails silently (a full disk): the
        previous video was replaced by a truncated one nothing could open, with exit 0."""
        if self._writer is None:
            return
        self._writer.release()
        self._writer = None
        try:
            if not _reads_back(self._tmp, self.written):
                raise TledgeError(f"cannot write video {self.path}: it came out unreadable (a full disk?); "
                                  f"{'the earlier video is kept' if self.path.exists() else 'nothing written'}")
            if self._tmp.parent == self.path.parent:
                os.replace(self._tmp, self.path)
            else:  # written in the temporary folder (this folder's name is not UTF-8)
                import shutil

                from tledge.io import atomic_path

                with atomic_path(self.path) as tmp:
                    shutil.copyfile(self._tmp, tmp)
        finally:
            self._tmp.unlink(missing_ok=True)

    def abort(self) -> None:
        """The run failed: the partial video is removed and an earlier one at `path` kept."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
            self._tmp.unlink(missing_ok=True)


GROWTH_CHECK_FRAMES = 25  # a saved video's size checked every that many frames
FULL_BELOW = 64 << 10  # bytes free under which a video that stopped growing is on a full disk: FFmpeg's writer grows
# the file in 256 KiB steps (with 1 MiB as this threshold, a 470 KB video on a disk with 1.2 MiB free stood still for
# 8 checks and was called full); a write that does not fit fills the disk to its last blocks first
VIDEO_MAX_SIDE = 4096  # MPEG-4 (mp4v) opens nothing at 8192 px


def video_size(w: int, h: int, limit: int = VIDEO_MAX_SIDE) -> tuple[int, int]:
    """The saved video's (width, height) for a first frame of w x h: even (codecs want it), at least 2 and at most
    `limit` px a side, the aspect kept. Rounded down to even, a 1 px frame was 0 wide: "no encoder for .mp4", or a
    cv2.error traceback for .avi; a 12000 px one was "no encoder" too."""
    f = min(1.0, limit / max(w, h, 1))
    return tuple(max(2, round(n * f) // 2 * 2) for n in (w, h))


def _reads_back(path: Path, frames: int) -> bool:
    """Does OpenCV open the video at `path`, with no fewer frames than were written (where it can count them)?"""
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT) if cap.isOpened() else None
    finally:
        cap.release()
    return count is not None and not 0 <= count < frames


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass
