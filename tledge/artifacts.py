"""The files `tledge export` writes, as one table, and the export folder's manifest. No TensorFlow,
no numpy: importable by the runtime, the device profiles and the exporter alike.

The table (ARTIFACTS) holds every model file kind: format x precision x file name x default parity
thresholds. Export (which files it can write), parity (default thresholds), the device profiles
(which files a board prefers), the runtime (which file of a folder to open) and `tledge bundle` all
look files up here, so they cannot disagree.

The manifest (`manifest.json`, written last and atomically by `tledge export`) lists every file of
the export with its kind, precision, size, sha256 and parity verdict, plus the source model's
sha256. A file is *vouched for* when the manifest lists it as a model file that passed parity and
its bytes still hash to the recorded sha256; consumers (`bundle`, `run` and `info` on a folder)
trust only those; tledge.trust checks a folder or file against its manifest.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tledge.safejson import finite, loads_json
from tledge.errors import TledgeError

MANIFEST = "manifest.json"
SCHEMA = 1
CONTRACT_FILE, LABELS_FILE = "tledge.json", "labels.txt"  # beside a trained model and in an export folder
SIDE_FILES = (CONTRACT_FILE, LABELS_FILE, "parity.json", "parity.md",
              "golden.npz")  # parity images + Keras outputs (tledge.runtime.golden)
REJECTED = "rejected"  # the int8 fallback's folder: listed in the manifest, never vouched for
KINDS = ("tflite", "onnx")
PRECISIONS = ("fp32", "fp16", "dynamic", "int8")


@dataclass(frozen=True)
class Thresholds:
    max_abs: float | None = None  # max |exported - reference| over all outputs
    min_agreement: float = 1.0  # top-1 agreement with the reference
    max_accuracy_drop: float | None = None  # in accuracy points (0.01 = 1 point)
    # Many-class models (>= many_classes outputs): top-1 agreement is dominated by near-ties, so the
    # gate is top-k agreement (the reference's top-1 among the file's top k) >= min_topk_agreement;
    # top-1 agreement is still reported with its interval (tledge.stats).
    many_classes: int = 20
    top_k: int = 5
    min_topk_agreement: float = 0.99
    # An accuracy drop beyond max_accuracy_drop fails when it is real: McNemar p below this, or a 95 %
    # interval of the change below 0; None judges the point estimate alone. The agreement rule bounds
    # the drop either way.
    significance: float | None = 0.05
    # the fields a thresholds file's entry set (tledge.thresholds); None: a Thresholds made in code
    given: frozenset | None = field(default=None, compare=False, repr=False)

    def overrides(self) -> dict:
        """The fields this entry sets (every field for a Thresholds made in code), as a thresholds file's table."""
        return {f: getattr(self, f) for f in THRESHOLD_FIELDS if self.given is None or f in self.given}

    @classmethod
    def for_precision(cls, precision: str) -> "Thresholds":
        return DEFAULT_THRESHOLDS.get(precision, DEFAULT_THRESHOLDS["int8"])

    @classmethod
    def lookup(cls, table: dict, name: str, precision: str) -> "Thresholds":
        """A file's budget in a table of overrides: by file name, else by precision, else the default. An entry by
        file name was built on the defaults of the precision in its name (model_fp32.tflite: fp32's; a name that
        states none: Thresholds()); the file's own precision decides, so unless they agree the entry's own fields
        are put on the defaults of the file's precision (a looser min_agreement made an int8 file named
        model_fp32.tflite fail fp32's max_abs, and an int8 file named hym_int8.tflite need agreement 1.0). The entry's
        own fields are the ones its file gave (a value equal to the name's default was dropped when they were guessed
        by comparison: min_agreement = 1.0 for mine.tflite checked an int8 file at 0.98)."""
        t = table.get(name)
        if t is None:
            return table.get(precision) or cls.for_precision(precision)
        named = precision_in_name(name)
        if named == precision:
            return t
        if t.given is not None:
            return replace(cls.for_precision(precision), **t.overrides())
        base = DEFAULT_THRESHOLDS[named] if named else cls()  # a Thresholds made in code: its fields that differ
        own = {f: getattr(t, f) for f in THRESHOLD_FIELDS if getattr(t, f) != getattr(base, f)}
        return replace(cls.for_precision(precision), **own)


THRESHOLD_FIELDS = tuple(f for f, d in Thresholds.__dataclass_fields__.items() if d.compare)  # what a file may set


def precision_in_name(name: str) -> str | None:
    """The precision a file name states (model_int8.onnx -> int8), None for other names."""
    m = re.fullmatch(r"model_(\w+)\.\w+", Path(name).name)
    return m.group(1) if m and m.group(1) in DEFAULT_THRESHOLDS else None


DEFAULT_THRESHOLDS: dict[str, Thresholds] = {
    "fp32": Thresholds(max_abs=1e-4, min_agreement=1.0),
    "fp16": Thresholds(min_agreement=0.99),
    "dynamic": Thresholds(min_agreement=0.99),
    "int8": Thresholds(min_agreement=0.98, max_accuracy_drop=0.01),
}


@dataclass(frozen=True)
class Artifact:
    """One kind of exported model file."""

    kind: str  # tflite | onnx
    precision: str  # fp32 | fp16 | dynamic | int8
    compiled_for: str | None = None  # "edgetpu": edgetpu_compiler's output of the plain file

    @property
    def name(self) -> str:
        return f"{self.kind}_{self.precision}" + (f"_{self.compiled_for}" if self.compiled_for else "")

    @property
    def filename(self) -> str:
        tag = f"_{self.compiled_for}" if self.compiled_for else ""
        return f"model_{self.precision}{tag}.{self.kind}"

    @property
    def thresholds(self) -> Thresholds:
        return DEFAULT_THRESHOLDS[self.precision]

    @property
    def source(self) -> "Artifact | None":
        """The file a compiled file is made from (None for a converted file)."""
        return replace(self, compiled_for=None) if self.compiled_for else None


ARTIFACTS: dict[str, Artifact] = {a.name: a for a in (
    Artifact("tflite", "fp32"),
    Artifact("tflite", "fp16"),
    Artifact("tflite", "dynamic"),
    Artifact("tflite", "int8"),
    Artifact("onnx", "fp32"),
    Artifact("onnx", "int8"),
    Artifact("tflite", "int8", compiled_for="edgetpu"),
)}
BY_FILENAME: dict[str, Artifact] = {a.filename: a for a in ARTIFACTS.values()}
# other files a tool of ours leaves in an export folder (edgetpu_compiler's log)
EXTRA_OWNED = ("model_int8_edgetpu.log",)
# with no device profile: the order a folder's vouched files are tried in (fast CPU paths first)
DEFAULT_ORDER = ("tflite_int8", "tflite_fp32", "onnx_int8", "onnx_fp32", "tflite_fp16", "tflite_dynamic")


def lookup(kind: str, precision: str, compiled_for: str | None = None) -> Artifact:
    """The table entry, or TledgeError naming what export can write."""
    a = Artifact(kind, precision, compiled_for)
    if a.name not in ARTIFACTS:
        raise TledgeError(f"tledge export cannot write a {kind} {precision} file"
                          f"{' compiled for ' + compiled_for if compiled_for else ''}; it writes: "
                          f"{', '.join(x.filename for x in ARTIFACTS.values())}")
    return ARTIFACTS[a.name]


def filename_of(kind: str, precision: str, compiled_for: str | None = None) -> str:
    """The file name an export gives that file (`model_int8.tflite`): read from the table, never typed again."""
    return lookup(kind, precision, compiled_for).filename


def exportable() -> list[Artifact]:
    """The files `tledge export` converts itself (compiled files come from another tool)."""
    return [a for a in ARTIFACTS.values() if a.compiled_for is None]


def owned_names() -> set[str]:
    """Top-level names an export folder's previous export may have left (removed before a new one)."""
    return set(BY_FILENAME) | set(SIDE_FILES) | set(EXTRA_OWNED) | {MANIFEST}


# ---- the manifest ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    file: str  # relative to the folder (`rejected/model_int8.tflite` for a rejected one)
    role: str  # model | side | rejected
    bytes: int
    sha256: str
    kind: str | None = None
    precision: str | None = None
    verdict: str | None = None  # pass | fail (models); None for side files
    figures: dict = field(default_factory=dict)  # parity: agreement, max abs, accuracy ...
    derived_from: str | None = None  # a compiled file: the file it was compiled from
    input: dict = field(default_factory=dict)  # what the file takes: {"layout", "dtype", "shape"} (models)

    @property
    def vouched(self) -> bool:
        return self.role == "model" and self.verdict == "pass"


@dataclass(frozen=True)
class Manifest:
    source: dict  # {"path": ..., "sha256": ...}
    files: tuple[Entry, ...]
    tledge: str = ""
    created: str = ""
    schema: int = SCHEMA

    def entry(self, name: str) -> Entry | None:
        return next((e for e in self.files if e.file == name), None)

    def vouched(self) -> list[Entry]:
        return [e for e in self.files if e.vouched]

    def to_dict(self) -> dict:
        return {"format": "tledge.export", "schema": self.schema, "tledge": self.tledge, "created": self.created,
                "source": dict(self.source), "files": [asdict(e) for e in self.files]}

    @classmethod
    def from_dict(cls, d: dict) -> "Manifest":
        if not isinstance(d, dict) or d.get("format") != "tledge.export" or not isinstance(d.get("files"), list):
            raise ValueError("not a tledge export manifest")
        schema = d.get("schema", SCHEMA)
        if not isinstance(schema, int) or isinstance(schema, bool):
            raise ValueError(f"schema {str(schema)[:20]!r} is not an integer")
        if schema > SCHEMA:
            raise ValueError(f"schema {schema} is newer than this tledge reads ({SCHEMA})")
        if not all(isinstance(e, dict) for e in d["files"]) or not isinstance(d.get("source") or {}, dict):
            raise ValueError("its files are not entries")
        known = set(Entry.__dataclass_fields__)
        files = tuple(Entry(**{k: v for k, v in e.items() if k in known}) for e in d["files"])
        for e in files:  # every field of its type: parsed, never trusted (a hand-edited file, a wrong one)
            _check_name(e.file)
            _check_types(e)
        return cls(dict(d.get("source") or {}), files, str(d.get("tledge", "")), str(d.get("created", "")), schema)


_SAFE_NAME = re.compile(r"(rejected/)?[A-Za-z0-9][A-Za-z0-9_.-]*")


_TYPES = {"file": str, "role": str, "bytes": int, "sha256": str, "kind": (str, type(None)),
          "precision": (str, type(None)), "verdict": (str, type(None)), "figures": dict,
          "derived_from": (str, type(None)), "input": dict}


def _check_types(e: Entry) -> None:
    for name, want in _TYPES.items():
        value = getattr(e, name)
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise ValueError(f"{e.file!r}: {name} is {type(value).__name__} {value!r}")


def _check_name(name: str) -> None:
    if not _SAFE_NAME.fullmatch(name):
        raise ValueError(f"unsafe file name {name!r}")


def sha256_of(path: str | Path) -> str:
    """sha256 of a file, or of a folder's files (relative names and contents, sorted): SavedModel."""
    import hashlib  # here: loading OpenSSL costs milliseconds, and `tledge run` on a file with no manifest hashes nothing

    p, h = Path(path), hashlib.sha256()
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    for f in files:
        if p.is_dir():
            h.update(f.relative_to(p).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def build(folder: Path, source: str | Path, verdicts: dict[str, tuple[bool, dict]],
          derived: dict[str, str] | None = None, inputs: dict[str, dict] | None = None,
          loading: dict | None = None) -> Manifest:
    """A manifest of `folder` as it is: side files, model files with their verdicts, rejected/.
    verdicts: file name -> (passed, figures). derived: compiled file -> the file it came from.
    inputs: file name -> what it takes ({"layout": "nchw", "dtype": "uint8", "shape": [...]}).
    loading: options the source was loaded with (`--signature`, `--binary-output`), which parity takes again."""
    import tledge

    derived = derived or {}
    entries = []
    for name in _present(folder):
        p = folder / name
        a = BY_FILENAME.get(Path(name).name)
        if name in SIDE_FILES:
            entries.append(Entry(name, "side", p.stat().st_size, sha256_of(p)))
            continue
        if name in derived:
            passed, figures = verdicts.get(derived[name], (False, {}))
            figures = {**figures, "note": f"compiled from {derived[name]}; its parity verdict applies"}
        else:
            passed, figures = verdicts.get(name, (False, {"note": "not checked by parity"}))
        role = "rejected" if name.startswith(REJECTED + "/") else "model"
        entries.append(Entry(name, role, p.stat().st_size, sha256_of(p), a.kind if a else None,
                             a.precision if a else None, "pass" if passed and role == "model" else "fail",
                             figures, derived.get(name), dict((inputs or {}).get(name) or {})))
    src = Path(source)
    origin = {"path": str(source), "sha256": sha256_of(src) if src.exists() else None}
    return Manifest({**origin, **{k: v for k, v in (loading or {}).items() if v}}, tuple(entries),
                    tledge.__version__, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def _present(folder: Path) -> list[str]:
    names = [n for n in list(SIDE_FILES) + list(BY_FILENAME) if (folder / n).is_file()]
    rej = folder / REJECTED
    if rej.is_dir():
        names += [f"{REJECTED}/{f.name}" for f in sorted(rej.iterdir()) if f.name in BY_FILENAME]
    return names


def write(folder: Path, manifest: Manifest) -> Path:
    from tledge.io import atomic_write_text

    return atomic_write_text(Path(folder) / MANIFEST, json.dumps(finite(manifest.to_dict()), indent=2, allow_nan=False) + "\n")


def read(folder: str | Path) -> Manifest | None:
    """The folder's manifest, None when there is none; TledgeError when it is unreadable."""
    p = Path(folder) / MANIFEST
    if not p.is_file():
        return None
    try:  # (a ValueError names JSON nested too deeply)
        return Manifest.from_dict(loads_json(p.read_text(encoding="utf-8-sig")))  # (an editor's BOM: "re-export")
    except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
        raise TledgeError(f"{p} is not a valid tledge manifest ({exc}): re-export with tledge export") from None
