"""Parity: does each exported file behave like the reference model on the same prepared images?

Pure numpy comparisons (no TensorFlow here): a report that collects every failure, rendered as
JSON and Markdown; `report.raise_if_failed()` raises ParityError once, with all of them.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tledge.errors import ParityError
from tledge.export import stats


@dataclass(frozen=True)
class Thresholds:
    max_abs: float | None = None  # max |exported - reference| over all outputs
    min_agreement: float = 1.0  # top-1 agreement with the reference
    max_accuracy_drop: float | None = None  # in accuracy points (0.01 = 1 point)
    # Many-class models (>= many_classes outputs): top-1 agreement is dominated by near-ties, so the
    # gate is top-k agreement (the reference's top-1 among the file's top k) >= min_topk_agreement;
    # top-1 agreement is still reported with its interval.
    many_classes: int = 20
    top_k: int = 5
    min_topk_agreement: float = 0.99
    # An accuracy drop beyond max_accuracy_drop fails when it is real: McNemar p below this, or a 95 %
    # interval of the change below 0; None judges the point estimate alone. The agreement rule bounds
    # the drop either way.
    significance: float | None = 0.05

    @classmethod
    def for_precision(cls, precision: str) -> "Thresholds":
        return DEFAULT_THRESHOLDS.get(precision, DEFAULT_THRESHOLDS["int8"])


DEFAULT_THRESHOLDS = {
    "fp32": Thresholds(max_abs=1e-4, min_agreement=1.0),
    "fp16": Thresholds(min_agreement=0.99),
    "dynamic": Thresholds(min_agreement=0.99),
    "int8": Thresholds(min_agreement=0.98, max_accuracy_drop=0.01),
}


def load_thresholds(path: str | Path) -> dict[str, Thresholds]:
    """A JSON or TOML file: {"int8": {"min_agreement": 0.97}, "model_int8.onnx": {...}} (keys are
    precisions or file names; values override the defaults)."""
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    if p.suffix == ".toml":
        try:
            import tomllib
        except ImportError:  # Python < 3.11
            raise ParityError(f"{p.name}: TOML thresholds need Python 3.11+; use a .json file") from None
        raw = tomllib.loads(text)
    else:
        raw = json.loads(text)
    return thresholds_from_dict(raw)


def thresholds_from_dict(raw: dict) -> dict[str, Thresholds]:
    """{"int8": {"min_agreement": 0.97}, "model_int8.onnx": {...}} -> Thresholds per key. A key that
    is a file name (model_<precision>.<ext>) starts from its precision's defaults."""
    out = {}
    for key, vals in raw.items():
        if isinstance(vals, Thresholds):
            out[key] = vals
            continue
        unknown = set(vals) - set(Thresholds.__dataclass_fields__)
        if unknown:
            raise ParityError(f"thresholds for {key!r}: unknown field(s) {sorted(unknown)}; "
                              f"known: {', '.join(Thresholds.__dataclass_fields__)}")
        m = re.fullmatch(r"model_(\w+)\.\w+", key)
        base = DEFAULT_THRESHOLDS.get(key) or DEFAULT_THRESHOLDS.get(m.group(1) if m else "", Thresholds())
        out[key] = replace(base, **vals)
    return out


@dataclass
class ParityResult:
    file: str
    format: str
    precision: str
    images: int
    max_abs_error: float
    mean_abs_error: float
    median_image_max_abs: float
    top1_agreement: float
    accuracy: float | None
    reference_accuracy: float | None
    passed: bool
    failures: list[str] = field(default_factory=list)
    latency_ms: float | None = None
    size_bytes: int | None = None
    classes: int = 0
    agreement_ci: tuple[float, float] | None = None  # 95 % Wilson interval of top1_agreement
    top_k: int | None = None  # set for many-class models
    topk_agreement: float | None = None
    topk_ci: tuple[float, float] | None = None
    accuracy_change: float | None = None  # file minus reference, paired on the same images
    accuracy_change_ci: tuple[float, float] | None = None  # 95 % (Agresti-Min)
    mcnemar_p: float | None = None
    warnings: list[str] = field(default_factory=list)  # the set is too small to resolve the budget


def degenerate(outputs: np.ndarray) -> list[str]:
    """Outputs that make argmax agreement meaningless: zero rows, constant outputs, ties."""
    problems = []
    if outputs.size == 0:
        return ["no outputs"]
    if not np.all(np.isfinite(outputs)):
        problems.append("non-finite outputs (NaN or Inf)")
    if np.any(np.all(outputs == 0, axis=1)):
        problems.append(f"{int(np.sum(np.all(outputs == 0, axis=1)))} all-zero output rows")
    if len(outputs) > 1 and float(np.max(np.std(outputs, axis=0))) < 1e-6:
        problems.append("outputs are the same for every image (near-zero variance)")
    srt = np.sort(outputs, axis=1)
    if outputs.shape[1] > 1:
        ties = int(np.sum(srt[:, -1] == srt[:, -2]))
        if ties > max(1, len(outputs) // 10):
            problems.append(f"{ties} images with a tie for top-1")
    return problems


def compare(reference: np.ndarray, outputs: np.ndarray, *, file: str, format: str, precision: str,
            thresholds: Thresholds, labels: np.ndarray | None = None) -> ParityResult:
    ref = np.asarray(reference, np.float32).reshape(len(reference), -1)
    out = np.asarray(outputs, np.float32).reshape(len(outputs), -1)
    failures: list[str] = []
    if ref.shape != out.shape:
        failures.append(f"output shape {out.shape} differs from the reference {ref.shape}")
        return ParityResult(file, format, precision, len(ref), float("inf"), float("inf"), float("inf"),
                            0.0, None, None, False, failures)
    diff = np.abs(out - ref)
    same = np.argmax(out, 1) == np.argmax(ref, 1)
    agree = float(np.mean(same)) if len(ref) else 0.0
    acc = ref_acc = None
    if labels is not None:
        acc = float(np.mean(np.argmax(out, 1) == labels))
        ref_acc = float(np.mean(np.argmax(ref, 1) == labels))
    res = ParityResult(file, format, precision, len(ref), float(diff.max()), float(diff.mean()),
                       float(np.median(diff.max(axis=1))), agree, acc, ref_acc, True, failures,
                       classes=ref.shape[1], agreement_ci=stats.wilson(int(np.sum(same)), len(ref)))
    t = thresholds
    if t.max_abs is not None and res.max_abs_error > t.max_abs:
        failures.append(f"max abs error {res.max_abs_error:.3g} > {t.max_abs:g}")
    failures += _agreement_rule(res, ref, out, t)
    if labels is not None:
        failures += _accuracy_rule(res, np.argmax(ref, 1) == labels, np.argmax(out, 1) == labels, t)
    failures += [f"degenerate output: {d}" for d in degenerate(out)]
    failures += [f"degenerate reference: {d}" for d in degenerate(ref)]
    res.passed = not failures
    return res


def _agreement_rule(res: ParityResult, ref: np.ndarray, out: np.ndarray, t: Thresholds) -> list[str]:
    """Top-1 agreement for few classes; top-k agreement from t.many_classes classes on."""
    n = len(ref)
    if res.classes >= t.many_classes:
        hit = stats.topk_agreement(ref, out, t.top_k)
        res.top_k, res.topk_agreement = t.top_k, float(np.mean(hit)) if n else 0.0
        res.topk_ci = stats.wilson(int(np.sum(hit)), n)
        res.warnings += stats.resolution_warnings(n, min_share=t.min_topk_agreement, share_name=f"top-{t.top_k} "
                                                  "agreement", max_accuracy_drop=None, labelled=False)
        if res.topk_agreement < t.min_topk_agreement:
            return [f"top-{t.top_k} agreement {res.topk_agreement:.3f} {stats.fmt_interval(*res.topk_ci)} "
                    f"< {t.min_topk_agreement:g} ({res.classes} classes: top-1 agreement {res.top1_agreement:.3f})"]
        return []
    res.warnings += stats.resolution_warnings(n, min_share=t.min_agreement, share_name="top-1 agreement",
                                              max_accuracy_drop=None, labelled=False)
    if res.top1_agreement < t.min_agreement:
        return [f"top-1 agreement {res.top1_agreement:.3f} {stats.fmt_interval(*res.agreement_ci)} "
                f"< {t.min_agreement:g}"]
    return []


def _accuracy_rule(res: ParityResult, ref_ok: np.ndarray, out_ok: np.ndarray, t: Thresholds) -> list[str]:
    """The paired accuracy change with its interval; a drop beyond the budget fails when it is real."""
    m = stats.mcnemar(ref_ok, out_ok)
    res.accuracy_change, res.accuracy_change_ci, res.mcnemar_p = m.change, (m.low, m.high), m.p_value
    res.warnings += stats.resolution_warnings(m.n, min_share=None, share_name="", labelled=True,
                                              max_accuracy_drop=t.max_accuracy_drop)
    if t.max_accuracy_drop is None or -m.change <= t.max_accuracy_drop + 1e-9:
        return []
    what = (f"accuracy {res.accuracy:.3f} is {-100 * m.change:.1f} points below the reference "
            f"{res.reference_accuracy:.3f} ({stats.fmt_points(m.change, m.low, m.high)}, "
            f"McNemar p={m.p_value:.3g}: {m.lost} lost, {m.gained} gained)")
    # resolvable: McNemar's exact test or the interval says the drop is real (either suffices)
    if t.significance is not None and m.p_value >= t.significance and m.high >= 0:
        res.warnings.append(what + f": over the {100 * t.max_accuracy_drop:g}-point budget but not "
                            f"resolvable on {m.n} images (p >= {t.significance:g})")
        return []
    return [what]


@dataclass
class ParityReport:
    images: int
    results: list[ParityResult]
    reference: str = ""
    notes: list[str] = field(default_factory=list)
    fidelity: list[dict] = field(default_factory=list)  # int8 repair rungs tried (tledge.export.fidelity)
    explain: str = ""  # Markdown: per-layer int8 error table

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(r.passed for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "images": self.images, "reference": self.reference,
                "results": [asdict(r) for r in self.results], "notes": list(self.notes),
                "fidelity": list(self.fidelity)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_markdown(self) -> str:
        lines = [f"# Parity report ({'PASSED' if self.passed else 'FAILED'})", "",
                 f"Reference: `{self.reference}`; {self.images} images.", "",
                 "| file | precision | max abs | mean abs | top-1 agreement [95 %] | top-k agreement [95 %] | "
                 "accuracy | reference acc | accuracy change [95 %], McNemar p | result |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
        for r in self.results:
            lines.append(f"| {r.file} | {r.precision} | {r.max_abs_error:.2e} | {r.mean_abs_error:.2e} | "
                         f"{_with_ci(r.top1_agreement, r.agreement_ci)} | {_topk(r)} | {_fmt(r.accuracy)} | "
                         f"{_fmt(r.reference_accuracy)} | {_change(r)} | {'pass' if r.passed else 'FAIL'} |")
        fails = [(r.file, f) for r in self.results for f in r.failures]
        if fails:
            lines += ["", "## Failures", ""] + [f"- `{name}`: {f}" for name, f in fails]
        warns = [(r.file, w) for r in self.results for w in r.warnings]
        if warns:
            lines += ["", "## Statistical resolution", ""] + [f"- `{name}`: {w}" for name, w in warns]
        if self.notes:
            lines += ["", "## Notes", ""] + [f"- {n}" for n in self.notes]
        if self.fidelity:
            lines += ["", "## int8 fidelity loop", "", "| file | rung | top-1 agreement | accuracy | max abs | "
                      "median image max abs | latency ms | result |", "|---|---|---|---|---|---|---|---|"]
            for a in self.fidelity:
                if "error" in a:
                    lines.append(f"| {a['file']} | {a['rung']} | - | - | - | - | - | error: {a['error'][:80]} |")
                    continue
                lines.append(f"| {a['file']} | {a['rung']} | {a['agreement']:.3f} | {_fmt(a['accuracy'])} | "
                             f"{a['max_abs']:.3g} | {a['median_image_max_abs']:.3g} | {_fmt(a['latency_ms'], 2)} | "
                             f"{'pass' if a['passed'] else 'fail'} |")
        if self.explain:
            lines += ["", "## int8 per-layer diagnosis", "", self.explain.rstrip()]
        return "\n".join(lines) + "\n"

    def table(self) -> str:
        rows = [("file", "prec", "max abs", "agree", "acc", "ref acc", "result")]
        for r in self.results:
            rows.append((r.file, r.precision, f"{r.max_abs_error:.2e}", f"{r.top1_agreement:.3f}",
                         _fmt(r.accuracy), _fmt(r.reference_accuracy), "pass" if r.passed else "FAIL"))
        widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows)

    def raise_if_failed(self) -> "ParityReport":
        if not self.passed:
            fails = [f"{r.file}: {f}" for r in self.results for f in r.failures] or ["no files checked"]
            raise ParityError("parity failed:\n  " + "\n  ".join(fails), report=self)
        return self

    def to_junit(self, suite: str = "tledge.parity") -> str:
        """JUnit XML: one test case per exported file, failures listed in the message."""
        from xml.sax.saxutils import escape, quoteattr

        failed = sum(not r.passed for r in self.results)
        cases = []
        for r in self.results:
            body = ""
            if not r.passed:
                body = (f'<failure message={quoteattr("; ".join(r.failures))}>'
                        f"{escape(json.dumps(asdict(r), indent=1))}</failure>")
            cases.append(f'  <testcase classname={quoteattr(suite)} name={quoteattr(r.file)} '
                         f'time="{(r.latency_ms or 0) * r.images / 1000:.3f}">{body}</testcase>')
        return (f'<?xml version="1.0" encoding="utf-8"?>\n<testsuite name={quoteattr(suite)} '
                f'tests="{len(self.results)}" failures="{failed}" errors="0">\n' + "\n".join(cases) +
                "\n</testsuite>\n")

    def write(self, folder: str | Path) -> None:
        from tledge.io import atomic_write_text

        atomic_write_text(Path(folder) / "parity.json", self.to_json() + "\n")
        atomic_write_text(Path(folder) / "parity.md", self.to_markdown())


def _fmt(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _with_ci(v: float, ci) -> str:
    return f"{v:.3f}" if ci is None else f"{v:.3f} {stats.fmt_interval(*ci)}"


def _topk(r: ParityResult) -> str:
    return "-" if r.topk_agreement is None else f"top-{r.top_k} {_with_ci(r.topk_agreement, r.topk_ci)}"


def _change(r: ParityResult) -> str:
    if r.accuracy_change is None or r.accuracy_change_ci is None:
        return "-"
    return f"{stats.fmt_points(r.accuracy_change, *r.accuracy_change_ci)}, p={r.mcnemar_p:.2g}"


def check_files(reference: np.ndarray, files: Sequence[tuple[Path, str, str]], pixels: np.ndarray, *,
                labels: np.ndarray | None = None, thresholds: dict[str, Thresholds] | None = None,
                threads: int | None = None) -> list[ParityResult]:
    """Run each (path, format, precision) file through the tledge runtime on `pixels` and compare."""
    import time

    from tledge.runtime import load

    thresholds = thresholds or {}
    results = []
    for path, fmt, precision in files:
        t = thresholds.get(Path(path).name) or thresholds.get(precision) or Thresholds.for_precision(precision)
        try:
            model = load(path, threads=threads)
            start = time.perf_counter()
            out = np.concatenate([model.predict(pixels[i:i + 32]) for i in range(0, len(pixels), 32)])
            latency = 1000 * (time.perf_counter() - start) / max(1, len(pixels))
        except Exception as exc:  # a broken file is a parity failure, reported with the others
            results.append(ParityResult(Path(path).name, fmt, precision, len(pixels), float("inf"),
                                        float("inf"), float("inf"), 0.0, None, None, False,
                                        [f"could not run: {exc.__class__.__name__}: {exc}"]))
            continue
        r = compare(reference, out, file=Path(path).name, format=fmt, precision=precision,
                    thresholds=t, labels=labels)
        r.latency_ms, r.size_bytes = latency, Path(path).stat().st_size
        results.append(r)
    return results
