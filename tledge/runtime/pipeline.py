"""Frames -> predictions, with decoding and resizing overlapped with inference.

Folders and videos: a small thread pool runs `frame.rgb()` + `model.to_input()` (decode, EXIF,
resize, normalise/quantise; OpenCV releases the GIL) ahead of the inference, with a bounded number
of frames in flight and results in input order; a video is read by its own thread. Live sources are
processed newest-frame-first by the calling thread (the source drops what it cannot keep up with).
An unreadable input becomes a `skipped` Result; it never stops a folder.
"""
from __future__ import annotations

import os
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator


from tledge.errors import ModelRunError, TledgeError
from tledge.runtime.model import EdgeModel, Prediction
from tledge.runtime.sources import Frame, Source


@dataclass
class Result:
    source: str
    index: int
    status: str  # ok | skipped (unreadable input) | error (inference failed)
    top: list[Prediction] = field(default_factory=list)
    latency_ms: float | None = None  # inference only
    prep_ms: float | None = None  # decode + prepare, in a worker
    error: str | None = None
    frame: Frame | None = None  # kept (with its RGB image) only when the runner keeps images

    def to_dict(self) -> dict:
        d = {"source": self.source, "index": self.index, "status": self.status,
             "top": [p.to_dict() for p in self.top],
             "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 3),
             "prep_ms": None if self.prep_ms is None else round(self.prep_ms, 3)}
        if self.error:
            d["error"] = self.error
        return d


LATENCY_WINDOW = 10_000


@dataclass
class Summary:
    source: str = ""
    ok: int = 0
    skipped: int = 0
    errors: int = 0
    dropped: int = 0
    reconnects: int = 0
    lost: bool = False
    interrupted: bool = False
    elapsed_s: float = 0.0
    # the last LATENCY_WINDOW inferences' times (the p50 / p90 of a long run): one float per frame for ever grew a
    # live camera run by 4 MB an hour, a day's 100 MB on a 512 MB board
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW), repr=False)

    @property
    def total(self) -> int:
        return self.ok + self.skipped + self.errors

    @property
    def fps(self) -> float:
        """Inputs classified per second (skipped and failed ones are no frames: 0 ok was "1780.9 FPS")."""
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict:
        lat = sorted(self.latencies_ms) if self.latencies_ms else None
        return {"source": self.source, "inputs": self.total, "ok": self.ok, "skipped": self.skipped,
                "errors": self.errors, "dropped_frames": self.dropped, "reconnects": self.reconnects,
                "lost": self.lost, "interrupted": self.interrupted, "elapsed_s": round(self.elapsed_s, 3),
                "fps": round(self.fps, 2),
                "latency_ms_p50": None if lat is None else round(percentile(lat, 50), 3),
                "latency_ms_p90": None if lat is None else round(percentile(lat, 90), 3)}

    def line(self) -> str:
        d = self.to_dict()
        parts = [f"{d['inputs']} input(s): {self.ok} ok, {self.skipped} skipped, {self.errors} errors",
                 f"{self.elapsed_s:.2f} s, {self.fps:.1f} FPS"]
        if d["latency_ms_p50"] is not None:
            parts.append(f"inference p50 {d['latency_ms_p50']:.2f} ms")
        if self.dropped:
            parts.append(f"{self.dropped} frame(s) dropped to stay live")
        if self.reconnects:
            parts.append(f"{self.reconnects} reconnect(s)")
        if self.lost:
            parts.append("source LOST")
        if self.interrupted:
            parts.append("interrupted")
        return "summary: " + "; ".join(parts)


def percentile(sorted_values: list[float], q: float) -> float:
    """numpy.percentile's default (linear) on sorted values, without numpy.percentile's imports (numpy.ma)."""
    pos = (len(sorted_values) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo))


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS / Windows
        return os.cpu_count() or 1


def split_cores(cores: int | None = None) -> tuple[int, int]:
    """(preparation workers, inference threads) for folders and videos: the two stages run at the
    same time, so they share the cores instead of both claiming all of them (2 cores: 1 + 1)."""
    n = cores or usable_cores()
    workers = max(1, n // 2)
    return workers, max(1, min(4, n - workers))


def default_workers() -> int:
    return split_cores()[0]


class Runner:
    """Runs a model over a Source. Iterate `run(source)` for Results; `summary` is filled as it goes."""

    def __init__(self, model: EdgeModel, *, top_k: int | None = None, threshold: float | None = None,
                 workers: int | None = None, keep_images: bool = False, max_frames: int | None = None):
        if threshold is None:  # a file's own default (standard metadata's ScoreThresholdingOptions), as MediaPipe's
            threshold = getattr(model, "score_threshold", None)
        # top_k None: 1, or for a multi-label file every label over DECISION (EdgeModel.top), or over the threshold
        self.model, self.threshold = model, threshold
        self.top_k = None if top_k is None else max(1, top_k)
        self.workers = workers or default_workers()
        self.keep_images, self.max_frames = keep_images, max_frames
        self.summary = Summary()

    def run(self, source: Source) -> Iterator[Result]:
        self.summary = s = Summary(source=source.name)
        start = time.perf_counter()
        frames = source.frames()
        if self.max_frames:
            frames = _take(frames, self.max_frames)
        one_file = source.kind == "files" and len(getattr(source, "files", ())) == 1
        # live sources and a single image: prepared by this thread (nothing to overlap with)
        prepared = self._prepare_live(frames) if source.live or one_file else \
            self._prepare_ahead(frames, source.kind)
        try:
            for frame, x, prep_ms, err in prepared:
                r = self._infer(frame, x, prep_ms, err)
                self._count(r)
                s.elapsed_s = time.perf_counter() - start
                yield r
        except KeyboardInterrupt:  # said in the summary, and raised on: a library caller's loop ended as if the
            s.interrupted = True   # source were done (tledge run catches it, keeps its outputs, exits 130)
            raise
        finally:
            prepared.close()
            source.close()
            s.elapsed_s = time.perf_counter() - start
            s.dropped, s.reconnects, s.lost = source.dropped, source.reconnects, source.lost

    def _count(self, r: Result) -> None:
        s = self.summary
        if r.status == "ok":
            s.ok += 1
            s.latencies_ms.append(r.latency_ms)
        elif r.status == "skipped":
            s.skipped += 1
        else:
            s.errors += 1

    def _work(self, frame: Frame):
        t = time.perf_counter()
        try:
            x = self.model.to_input(frame.rgb())
        except TledgeError as exc:  # unreadable / undecodable input
            return frame, None, None, str(exc)
        except MemoryError:  # the machine's, not the input's: 1261 of 1300 photos were "skipped", exit 0
            raise
        except Exception as exc:  # cv2.error and friends on odd images: skip, say why
            return frame, None, None, f"{frame.source}: {exc.__class__.__name__}: {exc}"
        if not self.keep_images:
            frame.image = None
        return frame, x, 1000 * (time.perf_counter() - t), None

    def _prepare_live(self, frames: Iterator[Frame]):
        try:
            for frame in frames:
                yield self._work(frame)
        finally:
            frames.close()

    def _prepare_ahead(self, frames: Iterator[Frame], kind: str):
        if kind == "video":  # sequential decoding on its own thread, overlapped too
            frames = threaded(frames, maxsize=2 * self.workers + 2)
        return ordered_map(self._work, frames, workers=self.workers, depth=2 * self.workers + 1)

    def _infer(self, frame: Frame, x, prep_ms, err) -> Result:
        keep = frame if self.keep_images else None
        if err is not None:
            return Result(frame.source, frame.index, "skipped", error=err, frame=keep)
        t = time.perf_counter()
        try:
            y = self.model.run_inputs(x[None])
        except Exception as exc:  # a backend failure on one input is reported, not fatal
            return Result(frame.source, frame.index, "error", error=f"{exc.__class__.__name__}: {exc}", frame=keep)
        latency = 1000 * (time.perf_counter() - t)
        try:
            scores = self.model.scores(y)
        except ModelRunError as exc:  # NaN outputs for this input: an error, not a label
            return Result(frame.source, frame.index, "error", error=str(exc), frame=keep)
        k = self.top_k
        if k is None and self.threshold is not None and self.model.contract.independent:
            k = scores.shape[1]  # every label, then the user's threshold, not DECISION, decides
        top = self.model.top(scores[0], k)
        if self.threshold is not None:
            top = [p for p in top if p.score >= self.threshold]
        return Result(frame.source, frame.index, "ok", top, latency, prep_ms, frame=keep)


def _take(it: Iterator, n: int) -> Iterator:
    try:
        for i, item in enumerate(it):
            yield item
            if i + 1 >= n:
                return
    finally:
        close = getattr(it, "close", None)
        if close:
            close()


def ordered_map(fn: Callable, items: Iterable, *, workers: int, depth: int):
    """fn over items in a thread pool, at most `depth` in flight, results in input order."""
    from concurrent.futures import ThreadPoolExecutor  # here: a one-image run does not pay for it

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tledge-prep")
    pending: deque = deque()
    it = iter(items)
    try:
        for item in it:
            pending.append(pool.submit(fn, item))
            if len(pending) >= depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for f in pending:
            f.cancel()
        close = getattr(it, "close", None)
        if close:
            close()
        pool.shutdown(wait=True, cancel_futures=True)


_END = object()


def threaded(items: Iterable, maxsize: int = 4):
    """Iterate `items` on a background thread, through a bounded queue (for sequential decoders)."""
    q: queue.Queue = queue.Queue(maxsize=maxsize)
    stop = threading.Event()

    def produce():
        it = iter(items)
        try:
            for item in it:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    break
        except BaseException as exc:  # handed to the consumer
            _put_final(q, exc, stop)
            return
        finally:
            close = getattr(it, "close", None)
            if close:
                close()
        _put_final(q, _END, stop)

    t = threading.Thread(target=produce, name="tledge-reader", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        t.join(timeout=5)


def _put_final(q: queue.Queue, item, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            continue
