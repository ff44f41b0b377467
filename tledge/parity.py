"""Parity, the comparison: does a file's output match the reference's on the same prepared images?

Pure numpy and the standard library (no TensorFlow, no tledge.export): the per-file comparison and the report (JSON, Markdown, JUnit), shared by `tledge export` / `tledge
parity` (tledge.export) and the TensorFlow-free golden check on a board (tledge.runtime.golden).
`report.raise_if_failed()` raises ParityError once, with every failure.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# the thresholds and their defaults are the file table's (tledge.artifacts); thresholds files: tledge.thresholds
from tledge.artifacts import DEFAULT_THRESHOLDS as DEFAULT_THRESHOLDS, Thresholds as Thresholds  # re-exported
from tledge import stats
from tledge.contract import DECISION, same_decision as same_decision  # (re-exported)
from tledge.errors import ParityError
from tledge.safejson import finite
from tledge.thresholds import load_thresholds as load_thresholds, thresholds_from_dict as thresholds_from_dict


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
    # probability outputs: flips where the reference's top-2 margin < NEAR_TIE, and (agreeing, images) elsewhere
    near_tie_flips: int | None = None
    confident: tuple[int, int] | None = None
    incompatible: bool = False  # another output shape than the reference's: not an export of that model
    # what top1_agreement counts: "top-1" (the argmax), or "label sets" for independent (multi-label) scores: the
    # images whose every score is on the reference's side of DECISION
    agreement_of: str = "top-1"


NEAR_TIE = 0.1  # a reference top-2 probability margin under this is a near-tie: int8 rounding can flip it
def independent_scores(contract) -> bool:
    """Whether a file's contract says its scores are independent sigmoids (multi-label): its clients threshold each
    score at DECISION, so parity compares those decisions, not the argmax (an int8 file passed at argmax agreement
    1.000 while 11 of 153 images had a label flipped at 0.5)."""
    return contract is not None and contract.independent


def degenerate(outputs: np.ndarray, reference: np.ndarray | None = None, *, ties: bool = True) -> list[str]:
    """Outputs that make argmax agreement meaningless: zero rows, constant outputs, ties. With the `reference`
    outputs, a tie the reference itself nearly has (its top-1 among the tied classes, ahead of them by at most the
    outputs' step: a uint8 softmax over 10,000 classes) is not counted: 121 such ties of 1300 photos rejected an
    int8 file that passed the top-5 and accuracy gates."""
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
    if ties and outputs.shape[1] > 1:  # (not for independent scores: two labels at 1.0 are two labels given)
        tied = srt[:, -1] == srt[:, -2]
        if reference is not None and int(np.sum(tied)) > max(1, len(outputs) // 10):
            tied &= ~_genuine_ties(outputs, reference)
        ties = int(np.sum(tied))
        if ties > max(1, len(outputs) // 10):
            problems.append(f"{ties} images with a tie for top-1")
    return problems


def _genuine_ties(outputs: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per image: the outputs' top-1 tie holds the reference's top-1, which leads the other tied classes by no more
    than the outputs' smallest step (the quantisation scale of a dequantised uint8 output)."""
    steps = np.diff(np.unique(outputs))
    step = float(steps[steps > 0].min()) if np.any(steps > 0) else 0.0
    top = outputs == outputs.max(axis=1, keepdims=True)
    best = np.argmax(reference, axis=1)
    rows = np.arange(len(outputs))
    others = np.where(top, reference, -np.inf)
    others[rows, best] = -np.inf
    return top[rows, best] & (reference[rows, best] - others.max(axis=1) <= step)


def compare(reference: np.ndarray, outputs: np.ndarray, *, file: str, format: str, precision: str,
            thresholds: Thresholds, labels: np.ndarray | None = None, independent: bool = False) -> ParityResult:
    """One file's outputs against the reference's on the same images. `independent`: multi-label scores
    (`independent_scores`): agreement and accuracy are the decisions at DECISION, not the argmax."""
    ref = np.asarray(reference, np.float32).reshape(len(reference), -1)
    out = np.asarray(outputs, np.float32).reshape(len(outputs), -1)
    failures: list[str] = []
    if ref.shape != out.shape:
        failures.append(f"output shape {out.shape} differs from the reference {ref.shape}")
        return ParityResult(file, format, precision, len(ref), float("inf"), float("inf"), float("inf"),
                            0.0, None, None, False, failures, incompatible=True)
    diff = np.abs(out - ref)
    same = same_decision(ref, out, independent)
    agree = float(np.mean(same)) if len(ref) else 0.0
    acc = ref_acc = ref_ok = out_ok = None
    if labels is not None:  # (independent: the folder's label is given, whatever else is)
        ref_ok, out_ok = (_given(ref, labels), _given(out, labels)) if independent else \
            (np.argmax(ref, 1) == labels, np.argmax(out, 1) == labels)
        acc, ref_acc = float(np.mean(out_ok)), float(np.mean(ref_ok))
    res = ParityResult(file, format, precision, len(ref), float(diff.max()), float(diff.mean()),
                       float(np.median(diff.max(axis=1))), agree, acc, ref_acc, True, failures,
                       classes=ref.shape[1], agreement_ci=stats.wilson(int(np.sum(same)), len(ref)),
                       agreement_of="label sets" if independent else "top-1")
    _near_ties(res, ref, same)
    t = thresholds
    if t.max_abs is not None and res.max_abs_error > t.max_abs:
        failures.append(f"max abs error {res.max_abs_error:.3g} > {t.max_abs:g}")
    failures += _agreement_rule(res, ref, out, t)
    if labels is not None:
        failures += _accuracy_rule(res, ref_ok, out_ok, t)
    failures += [f"degenerate output: {d}" for d in degenerate(out, ref, ties=not independent)]
    failures += [f"degenerate reference: {d}" for d in degenerate(ref, ties=not independent)]
    res.passed = not failures
    return res


def _given(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per image: independent scores give its folder's label (score over DECISION)."""
    return scores[np.arange(len(scores)), labels] > DECISION


def _near_ties(res: ParityResult, ref: np.ndarray, same: np.ndarray) -> None:
    """Where the reference gives probabilities: how many flips are near-ties (its top-2 margin < NEAR_TIE), and the
    agreement on the other images. On the int8 zoo's MobileNet 0.25 heads, 189 of 191 flips of 1300 other photos were
    near-ties (6-9 % of those photos); on the models trained from scratch 28 of 101 (docs/int8-fidelity.md, "Where
    the flips are")."""
    if ref.shape[1] < 2 or len(ref) == 0 or ref.min() < 0 or not np.allclose(ref.sum(1), 1.0, atol=1e-3):
        return
    top2 = np.partition(ref, -2, axis=1)[:, -2:]  # the two largest, in no order
    tie = np.abs(top2[:, 1] - top2[:, 0]) < NEAR_TIE
    res.near_tie_flips = int(np.sum(~same & tie))
    res.confident = (int(np.sum(same & ~tie)), int(np.sum(~tie)))


def _agreement_rule(res: ParityResult, ref: np.ndarray, out: np.ndarray, t: Thresholds) -> list[str]:
    """Top-1 agreement for few classes; top-k agreement from t.many_classes classes on."""
    n = len(ref)
    if res.classes >= t.many_classes and res.agreement_of == "top-1":  # (label sets are judged whole, any count)
        hit = stats.topk_agreement(ref, out, t.top_k)
        res.top_k, res.topk_agreement = t.top_k, float(np.mean(hit)) if n else 0.0
        res.topk_ci = stats.wilson(int(np.sum(hit)), n)
        res.warnings += stats.resolution_warnings(n, min_share=t.min_topk_agreement, share_name=f"top-{t.top_k} "
                                                  "agreement", max_accuracy_drop=None, labelled=False)
        if res.topk_agreement < t.min_topk_agreement:
            return [f"top-{t.top_k} agreement {below(res.topk_agreement, t.min_topk_agreement)} "
                    f"{stats.fmt_interval(*res.topk_ci)} "
                    f"< {t.min_topk_agreement:g} ({res.classes} classes: top-1 agreement {res.top1_agreement:.3f})"]
        return []
    what = f"{res.agreement_of} agreement"
    res.warnings += stats.resolution_warnings(n, min_share=t.min_agreement, share_name=what,
                                              max_accuracy_drop=None, labelled=False)
    if res.top1_agreement < t.min_agreement:
        ties = f" ({res.near_tie_flips} of {n - round(res.top1_agreement * n)} flips are near-ties)" \
            if res.near_tie_flips is not None else ""
        sets = f" (images whose every score is on the reference's side of {DECISION:g})" \
            if res.agreement_of != "top-1" else ""
        return [f"{what} {below(res.top1_agreement, t.min_agreement)} {stats.fmt_interval(*res.agreement_ci)} "
                f"< {t.min_agreement:g}{ties}{sets}"]
    return []


def below(value: float, limit: float) -> str:
    """`value`, under `limit`, with the digits that show it is under: 48/49 read "0.980 < 0.98"."""
    for digits in range(3, 8):
        text = f"{value:.{digits}f}"
        if float(text) < limit:
            return text
    return repr(value)


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


def xml_legal(text: str) -> str:
    """`text` with what XML 1.0 cannot hold written as `\\xNN`: control characters (a file named `ctl\\x1b.tflite`
    made a report no XML parser reads) and the surrogates Python gives undecodable bytes of file names
    (`m\\xff.tflite`: UnicodeEncodeError while writing the report)."""
    def ok(c: str) -> bool:
        o = ord(c)
        return o in (0x9, 0xA, 0xD) or 0x20 <= o <= 0xD7FF or 0xE000 <= o <= 0xFFFD or o >= 0x10000

    if all(ok(c) for c in text):
        return text
    return "".join(c if ok(c) else f"\\x{ord(c) - 0xDC00 if 0xDC80 <= ord(c) <= 0xDCFF else ord(c):02x}"
                   for c in text)


@dataclass
class ParityReport:
    images: int
    results: list[ParityResult]
    reference: str = ""
    notes: list[str] = field(default_factory=list)
    fidelity: list[dict] = field(default_factory=list)  # int8 repair rungs tried (tledge.export.fidelity)
    explain: str = ""  # Markdown: per-layer int8 error table
    clients: dict = field(default_factory=dict)  # MediaPipe's agreement (tledge.clients.measure)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per export step (tledge export)
    # files listed but not checked (no runtime for them here; compiled for an accelerator): {"file", "reason"}
    skipped: list[dict] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(r.passed for r in self.results)

    def unmatched(self, thresholds) -> list[str]:
        """File-name keys of `thresholds` that name no file of this report: a misspelt name left that file on its
        precision's defaults, silently."""
        checked = {Path(r.file).name for r in self.results} | {Path(s["file"]).name for s in self.skipped}
        return sorted(k for k in (thresholds or {}) if "." in k and k not in checked)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON values: a figure that is not a number (inf: a file that could not run) is null."""
        return finite({"passed": self.passed, "images": self.images, "reference": self.reference,
                        "results": [asdict(r) for r in self.results], "notes": list(self.notes),
                        "fidelity": list(self.fidelity), "seconds": dict(self.seconds),
                        **({"skipped": list(self.skipped)} if self.skipped else {}),
                        **({"clients": self.clients} if self.clients else {})})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    def to_markdown(self) -> str:
        lines = [f"# Parity report ({'PASSED' if self.passed else 'FAILED'})", "",
                 f"Reference: `{self.reference}`; {self.images} images.", "",
                 "| file | precision | max abs | mean abs | top-1 agreement [95 %] | top-k agreement [95 %] | "
                 "accuracy | reference acc | accuracy change [95 %], McNemar p | result |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
        for r in self.results:
            lines.append(f"| {r.file} | {r.precision} | {r.max_abs_error:.2e} | {r.mean_abs_error:.2e} | "
                         f"{_with_ci(r.top1_agreement, r.agreement_ci)}{_of(r)} | {_topk(r)} | {_fmt(r.accuracy)} | "
                         f"{_fmt(r.reference_accuracy)} | {_change(r)} | {'pass' if r.passed else 'FAIL'} |")
        lines += [f"| {s['file']} | - | - | - | - | - | - | - | - | not checked: {s['reason']} |" for s in self.skipped]
        fails = [(r.file, f) for r in self.results for f in r.failures]
        if fails:
            lines += ["", "## Failures", ""] + [f"- `{name}`: {f}" for name, f in fails]
        ties = [r for r in self.results if r.confident and r.top1_agreement < 1.0]
        if ties:
            lines += ["", "## Where the flips are", "", f"Flips (top-1 differs from the reference) against the "
                      f"reference's top-2 probability margin: under {NEAR_TIE:g} is a near-tie.", ""]
            lines += [f"- `{r.file}`: {_near_tie_line(r)}" for r in ties]
        warns = [(r.file, w) for r in self.results for w in r.warnings]
        if warns:
            lines += ["", "## Statistical resolution", ""] + [f"- `{name}`: {w}" for name, w in warns]
        if self.notes:
            lines += ["", "## Notes", ""] + [f"- {n}" for n in self.notes]
        if self.fidelity:
            lines += ["", "## int8 fidelity loop", "", "| file | rung | top-1 agreement | accuracy | max abs | mean abs | "
                      "median image max abs | batch-1 ms | seconds | result |", "|---|---|---|---|---|---|---|---|---|---|"]
            for a in self.fidelity:
                secs = _fmt(a.get("seconds"), 1)
                if "error" in a or "skipped" in a:
                    why = f"not used: {a['error'][:160]}" if "error" in a else f"not started: {a['skipped']}"
                    lines.append(f"| {a['file']} | {a['rung']} | - | - | - | - | - | - | {secs} | {why} |")
                    continue
                lines.append(f"| {a['file']} | {a['rung']} | {a['agreement']:.3f} | {_fmt(a['accuracy'])} | "
                             f"{a['max_abs']:.3g} | {_g(a.get('mean_abs'))} | {a['median_image_max_abs']:.3g} | "
                             f"{_fmt(a['latency_ms'], 2)} | {secs} | {'pass' if a['passed'] else 'fail'}"
                             f"{', kept' if a.get('kept') else ''} |")
        if self.clients:
            from tledge.clients import markdown

            lines += markdown(self.clients)
        if self.seconds:
            lines += ["", "## Time", "", "| step | seconds |", "|---|---|"]
            lines += [f"| {step} | {sec:.1f} |" for step, sec in self.seconds.items()]
            lines.append(f"| total | {sum(self.seconds.values()):.1f} |")
        if self.explain:
            lines += ["", "## int8 per-layer diagnosis", "", self.explain.rstrip()]
        return "\n".join(lines) + "\n"

    def table(self) -> str:
        from tledge.text import printable

        rows = [("file", "prec", "max abs", "agree", "acc", "ref acc", "result")]
        for r in self.results:  # names from the command line or a folder: control characters as escapes
            rows.append((printable(r.file), r.precision, f"{r.max_abs_error:.2e}", f"{r.top1_agreement:.3f}",
                         _fmt(r.accuracy), _fmt(r.reference_accuracy), "pass" if r.passed else "FAIL"))
        rows += [(printable(s["file"]), "-", "-", "-", "-", "-", "not checked") for s in self.skipped]
        widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows)

    def raise_if_failed(self) -> "ParityReport":
        """Raise tledge.ParityError (exit 1) listing every failure of every file, a report that checked no file
        included; return the report when it passed (tledge.testing.assert_parity raises AssertionError instead)."""
        if not self.passed:
            fails = [f"{r.file}: {f}" for r in self.results for f in r.failures] or ["no files checked"]
            raise ParityError("parity failed:\n  " + "\n  ".join(fails), report=self)
        return self

    def to_junit(self, suite: str = "tledge.parity") -> str:
        """JUnit XML: one test case per exported file, failures listed in the message."""
        from xml.sax.saxutils import escape, quoteattr

        failed = sum(not r.passed for r in self.results)
        cases = [f'  <testcase classname={quoteattr(xml_legal(suite))} name={quoteattr(xml_legal(s["file"]))} '
                 f'time="0.000"><skipped message={quoteattr(xml_legal(s["reason"]))}/></testcase>'
                 for s in self.skipped]  # a board without a file's runtime: skipped, not absent (a green build)
        for r in self.results:
            body = ""
            if not r.passed:  # json.dumps escapes what XML cannot hold; names and messages are made legal
                body = (f'<failure message={quoteattr(xml_legal("; ".join(r.failures)))}>'
                        f"{escape(json.dumps(finite(asdict(r)), indent=1, allow_nan=False))}</failure>")
            cases.append(f'  <testcase classname={quoteattr(xml_legal(suite))} name={quoteattr(xml_legal(r.file))} '
                         f'time="{(r.latency_ms or 0) * r.images / 1000:.3f}">{body}</testcase>')
        return (f'<?xml version="1.0" encoding="utf-8"?>\n<testsuite name={quoteattr(xml_legal(suite))} '
                f'tests="{len(self.results) + len(self.skipped)}" failures="{failed}" errors="0" '
                f'skipped="{len(self.skipped)}">\n' + "\n".join(cases) +
                "\n</testsuite>\n")

    def write(self, folder: str | Path) -> None:
        from tledge.io import atomic_write_text

        atomic_write_text(Path(folder) / "parity.json", self.to_json() + "\n")
        atomic_write_text(Path(folder) / "parity.md", self.to_markdown())


def _g(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def _fmt(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _near_tie_line(r: ParityResult) -> str:
    flips = round((1 - r.top1_agreement) * r.images)
    agree, n = r.confident
    other = f"{agree / n:.3f} {stats.fmt_interval(*stats.wilson(agree, n))}" if n else "-"
    return (f"{r.near_tie_flips} of {flips} flips are near-ties ({r.images - n} of {r.images} images are); "
            f"agreement on the other {n} images {other}")


def _with_ci(v: float, ci) -> str:
    return f"{v:.3f}" if ci is None else f"{v:.3f} {stats.fmt_interval(*ci)}"


def _of(r: ParityResult) -> str:
    return "" if r.agreement_of == "top-1" else f" ({r.agreement_of})"


def _topk(r: ParityResult) -> str:
    return "-" if r.topk_agreement is None else f"top-{r.top_k} {_with_ci(r.topk_agreement, r.topk_ci)}"


def _change(r: ParityResult) -> str:
    if r.accuracy_change is None or r.accuracy_change_ci is None:
        return "-"
    return f"{stats.fmt_points(r.accuracy_change, *r.accuracy_change_ci)}, p={r.mcnemar_p:.2g}"
