"""The standard TFLite metadata (TFLite Support `metadata_schema.fbs`, file identifier "M001"), read and written
by hand: the model metadata entry `TFLITE_METADATA` that MediaPipe Tasks, the TFLite Task Library and Android
Studio's ML Model Binding read, and the associated files packed as a zip appended to the flatbuffer.

Only the fields an image classifier uses are covered: model name / description / version / author / license /
min_parser_version; per tensor: name, description, content (ImageProperties or FeatureProperties),
NormalizationOptions, Stats and associated files. Reading needs nothing (tledge.flatbuf); writing needs the
`flatbuffers` package (export side). Field slots below are the declaration order of the schema's tables
(schema semantic version 1.5.0, identical for these tables since 1.0.0).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from tledge.errors import ModelLoadError
from tledge.flatbuf import Table, guarded

ENTRY_NAME = "TFLITE_METADATA"  # Model.metadata name of the buffer holding the M001 flatbuffer
IDENTIFIER = b"M001"
# The newest parser feature the fields written here need: all of them exist since metadata schema 1.0.0
# (later versions added vocabulary files 1.0.1, tokenizers 1.1.0, tensor groups 1.2.0, content range 1.2.1,
# audio 1.3.0, file versions 1.4.1, custom metadata 1.5.0: none written here).
MIN_PARSER_VERSION = "1.0.0"

# enums
FILE_DESCRIPTIONS, FILE_TENSOR_AXIS_LABELS, FILE_TENSOR_VALUE_LABELS, FILE_SCORE_CALIBRATION = 1, 2, 3, 4
COLOR_SPACES = {0: "unknown", 1: "rgb", 2: "gray"}
CONTENT_FEATURE, CONTENT_IMAGE = 1, 2
PROCESS_NORMALIZATION, PROCESS_SCORE_CALIBRATION, PROCESS_SCORE_THRESHOLDING = 1, 2, 3
SCORE_TRANSFORMATIONS = {0: "identity", 1: "log", 2: "inverse_logistic"}
# table slots
MODEL = dict(name=0, description=1, version=2, subgraphs=3, author=4, license=5, files=6, min_parser_version=7)
SUBGRAPH = dict(name=0, description=1, inputs=2, outputs=3, files=4)
TENSOR = dict(name=0, description=1, dimension_names=2, content=3, process_units=4, stats=5, files=6)
CONTENT = dict(properties_type=0, properties=1, range=2)
IMAGE = dict(color_space=0, default_size=1)
FILE = dict(name=0, description=1, type=2, locale=3)
PROCESS_UNIT = dict(options_type=0, options=1)
NORMALIZATION = dict(mean=0, std=1)
SCORE_CALIBRATION = dict(score_transformation=0, default_score=1)
SCORE_THRESHOLDING = dict(global_score_threshold=0)
STATS = dict(max=0, min=1)


@dataclass(frozen=True)
class AssociatedFile:
    name: str
    type: int = FILE_TENSOR_AXIS_LABELS
    description: str = ""
    locale: str = ""


@dataclass(frozen=True)
class TensorMd:
    name: str = ""
    description: str = ""
    content: int = 0  # CONTENT_IMAGE / CONTENT_FEATURE / 0
    color_space: str | None = None  # rgb / gray / unknown, images only
    mean: tuple[float, ...] | None = None  # NormalizationOptions
    std: tuple[float, ...] | None = None
    stats_min: tuple[float, ...] | None = None
    stats_max: tuple[float, ...] | None = None
    files: tuple[AssociatedFile, ...] = ()
    calibration: tuple[str, float] | None = None  # ScoreCalibrationOptions: (transformation, default_score)
    score_threshold: float | None = None  # ScoreThresholdingOptions: results scoring below are dropped by default


@dataclass(frozen=True)
class StandardMetadata:
    name: str = ""
    description: str = ""
    version: str = ""
    author: str = ""
    license: str = ""
    min_parser_version: str = ""
    inputs: tuple[TensorMd, ...] = ()
    outputs: tuple[TensorMd, ...] = ()
    packed: dict = field(default_factory=dict, compare=False)  # associated file name -> bytes (the zip)

    def labels(self, output: int = 0) -> tuple[str, ...]:
        """The first TENSOR_AXIS_LABELS file of an output (without locale first), one label per line."""
        if output >= len(self.outputs):
            return ()
        files = [f for f in self.outputs[output].files if f.type == FILE_TENSOR_AXIS_LABELS]
        files.sort(key=lambda f: bool(f.locale))
        for f in files:
            if f.name in self.packed:
                return labels_from_text(self.packed[f.name])
        return ()

    def file_names(self) -> set[str]:
        """The associated files the tensors name (the only packed files read)."""
        return {f.name for t in self.inputs + self.outputs for f in t.files}

    def score_calibration(self, output: int = 0) -> dict | None:
        """An output's ScoreCalibrationOptions with its TENSOR_AXIS_SCORE_CALIBRATION file, as the Task Library
        reads them: {"transformation", "default_score", "sigmoids": one [scale, slope, offset, min_score or None]
        per class, None for an empty line (that class gets the default score)}; None when there is none. ValueError
        for a file it cannot read."""
        if output >= len(self.outputs) or self.outputs[output].calibration is None:
            return None
        transformation, default = self.outputs[output].calibration
        names = [f.name for f in self.outputs[output].files if f.type == FILE_SCORE_CALIBRATION]
        raw = next((self.packed[n] for n in names if n in self.packed), None)
        if raw is None:
            raise ValueError("score calibration without its calibration file")
        sigmoids: list = []
        text = raw.decode("utf-8", "replace")
        for i, line in enumerate((text[:-1] if text.endswith("\n") else text).split("\n")):
            parts = line.strip().split(",") if line.strip() else []
            if parts and len(parts) not in (3, 4):
                raise ValueError(f"line {i + 1} of {names[0]} has {len(parts)} values, not 3 or 4")
            nums = [float(v) for v in parts]  # ValueError for what is no number
            sigmoids.append((nums + [None] * (4 - len(nums))) if nums else None)
        return {"transformation": transformation, "default_score": default, "sigmoids": sigmoids}


def labels_from_text(raw: bytes) -> tuple[str, ...]:
    """Label file bytes -> labels, one per line (line i is output i; trailing blank lines dropped)."""
    lines = [ln.strip() for ln in raw.decode("utf-8", "replace").split("\n")]  # (as MediaPipe: not at U+2028)
    while lines and not lines[-1]:
        lines.pop()
    return tuple(lines)


# ---- reading ------------------------------------------------------------------------------------------

@guarded
def parse(meta: bytes, packed: dict | None = None) -> StandardMetadata:
    """An M001 flatbuffer (the TFLITE_METADATA buffer) -> StandardMetadata (first subgraph)."""
    root = Table.root(meta, IDENTIFIER)
    subgraphs = root.tables(MODEL["subgraphs"])
    sg = subgraphs[0] if subgraphs else None
    return StandardMetadata(
        name=root.string(MODEL["name"]) or "", description=root.string(MODEL["description"]) or "",
        version=root.string(MODEL["version"]) or "", author=root.string(MODEL["author"]) or "",
        license=root.string(MODEL["license"]) or "",
        min_parser_version=root.string(MODEL["min_parser_version"]) or "",
        inputs=tuple(_tensor(t) for t in (sg.tables(SUBGRAPH["inputs"]) if sg else [])),
        outputs=tuple(_tensor(t) for t in (sg.tables(SUBGRAPH["outputs"]) if sg else [])),
        packed=dict(packed or {}))


def _tensor(t: Table) -> TensorMd:
    kind, color, mean, std, calibration, threshold = 0, None, None, None, None, None
    content = t.table(TENSOR["content"])
    if content is not None:
        kind, props = content.union(CONTENT["properties_type"])
        if kind == CONTENT_IMAGE and props is not None:
            color = COLOR_SPACES.get(props.scalar(IMAGE["color_space"], "b", 0), "unknown")
    for unit in t.tables(TENSOR["process_units"]):
        utype, opts = unit.union(PROCESS_UNIT["options_type"])
        if utype == PROCESS_NORMALIZATION and opts is not None and mean is None:
            mean = tuple(opts.scalars(NORMALIZATION["mean"], "f")) or None
            std = tuple(opts.scalars(NORMALIZATION["std"], "f")) or None
        if utype == PROCESS_SCORE_CALIBRATION and opts is not None:  # the Task Library applies it to the scores
            g = opts.scalar(SCORE_CALIBRATION["score_transformation"], "b", 0)
            calibration = (SCORE_TRANSFORMATIONS.get(g, f"unknown ({g})"),
                           float(opts.scalar(SCORE_CALIBRATION["default_score"], "f", 0.0)))
        if utype == PROCESS_SCORE_THRESHOLDING and opts is not None:  # MediaPipe and the Task Library's default
            threshold = float(opts.scalar(SCORE_THRESHOLDING["global_score_threshold"], "f", 0.0))
    stats = t.table(TENSOR["stats"])
    return TensorMd(
        name=t.string(TENSOR["name"]) or "", description=t.string(TENSOR["description"]) or "", content=kind,
        color_space=color, mean=mean, std=std, calibration=calibration, score_threshold=threshold,
        stats_min=(tuple(stats.scalars(STATS["min"], "f")) or None) if stats else None,
        stats_max=(tuple(stats.scalars(STATS["max"], "f")) or None) if stats else None,
        files=tuple(AssociatedFile(f.string(FILE["name"]) or "", f.scalar(FILE["type"], "b", 0),
                                   f.string(FILE["description"]) or "", f.string(FILE["locale"]) or "")
                    for f in t.tables(TENSOR["files"])))


MAX_PACKED_FILE = 16 << 20  # larger associated files (not labels) are not read, nor more than this in all


def packed_files(data: bytes, names=None) -> dict[str, bytes]:
    """The associated files zipped after a TFLite flatbuffer (empty when there are none): those named in `names`
    (the metadata's), up to MAX_PACKED_FILE in all. Every entry was read: 30 entries of 16 MB of zeros in a 0.5 MB
    file took 550 MB to `tledge info`."""
    import io
    import zipfile  # here, not at import: `tledge run` on a tledge file never needs it (cold start)

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            out, left = {}, MAX_PACKED_FILE
            for i in zf.infolist():
                if (names is None or i.filename in names) and i.filename not in out and i.file_size <= left:
                    out[i.filename] = zf.read(i)
                    left -= i.file_size
            return out
    except zipfile.BadZipFile:
        return {}
    except Exception as exc:  # a corrupt zip raises EOFError, zlib.error, NotImplementedError, ...
        raise ModelLoadError(f"cannot read the files packed in the TFLite file: {type(exc).__name__} {exc}") from None


# ---- writing ------------------------------------------------------------------------------------------

def pack_files(data: bytes, files: dict[str, bytes]) -> bytes:
    """`data` with `files` appended as a zip (stored, uncompressed), as the TFLite Support populator does. The
    entries carry a fixed date (zip's epoch, 1980-01-01), so the same model and contract give the same bytes: the
    time of the export stayed in the file before."""
    import io
    import zipfile

    out = io.BytesIO(data)
    out.seek(0, io.SEEK_END)
    with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as zf:
        for name, payload in files.items():
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o600 << 16  # what writestr gives a bare name
            zf.writestr(info, payload)
    return out.getvalue()


def build(md: StandardMetadata) -> bytes:
    """StandardMetadata -> an M001 flatbuffer (the payload of the TFLITE_METADATA entry)."""
    import flatbuffers

    b = flatbuffers.Builder(1024)
    w = _Writer(b)
    sub = w.table({SUBGRAPH["inputs"]: ("off", w.offsets([w.tensor(t) for t in md.inputs])),
                   SUBGRAPH["outputs"]: ("off", w.offsets([w.tensor(t) for t in md.outputs]))})
    strings = {k: w.string(getattr(md, k)) for k in ("name", "description", "version", "author", "license")}
    version = w.string(md.min_parser_version or MIN_PARSER_VERSION)
    fields = {MODEL[k]: ("off", v) for k, v in strings.items()}
    fields.update({MODEL["subgraphs"]: ("off", w.offsets([sub])), MODEL["min_parser_version"]: ("off", version)})
    b.Finish(w.table(fields), file_identifier=IDENTIFIER)
    return bytes(b.Output())


class _Writer:
    """Helpers over flatbuffers.Builder: children are built before the table that points at them."""

    def __init__(self, builder):
        self.b = builder

    def string(self, s: str | None):
        return self.b.CreateString(s) if s else None

    def offsets(self, offs: list):
        self.b.StartVector(4, len(offs), 4)
        for o in reversed(offs):
            self.b.PrependUOffsetTRelative(o)
        return self.b.EndVector()

    def floats(self, values) -> int | None:
        if values is None:
            return None
        self.b.StartVector(4, len(values), 4)
        for v in reversed(list(values)):
            self.b.PrependFloat32(float(v))
        return self.b.EndVector()

    def table(self, fields: dict[int, tuple[str, object]]):
        b = self.b
        b.StartObject(max(fields, default=-1) + 1)
        for slot, (kind, value) in sorted(fields.items()):
            if value is None:
                continue
            if kind == "off":
                b.PrependUOffsetTRelativeSlot(slot, value, 0)
            elif kind == "float":
                b.PrependFloat32Slot(slot, float(value), 0.0)
            else:  # "byte": enums and union types (the schema's defaults are 0)
                b.PrependInt8Slot(slot, int(value), 0)
        return b.EndObject()

    def file(self, f: AssociatedFile):
        name, desc, locale = self.string(f.name), self.string(f.description), self.string(f.locale)
        return self.table({FILE["name"]: ("off", name), FILE["description"]: ("off", desc),
                           FILE["type"]: ("byte", f.type), FILE["locale"]: ("off", locale)})

    def tensor(self, t: TensorMd):
        if t.content == CONTENT_IMAGE:
            space = {v: k for k, v in COLOR_SPACES.items()}.get(t.color_space or "unknown", 0)
            props = self.table({IMAGE["color_space"]: ("byte", space)})
        else:
            props = self.table({})  # FeatureProperties: an empty table
        content = self.table({CONTENT["properties_type"]: ("byte", t.content or CONTENT_FEATURE),
                              CONTENT["properties"]: ("off", props)})
        units = []
        if t.mean is not None and t.std is not None:
            norm = self.table({NORMALIZATION["mean"]: ("off", self.floats(t.mean)),
                               NORMALIZATION["std"]: ("off", self.floats(t.std))})
            units.append(self.table({PROCESS_UNIT["options_type"]: ("byte", PROCESS_NORMALIZATION),
                                     PROCESS_UNIT["options"]: ("off", norm)}))
        if t.score_threshold is not None:
            opts = self.table({SCORE_THRESHOLDING["global_score_threshold"]: ("float", t.score_threshold)})
            units.append(self.table({PROCESS_UNIT["options_type"]: ("byte", PROCESS_SCORE_THRESHOLDING),
                                     PROCESS_UNIT["options"]: ("off", opts)}))
        stats = None
        if t.stats_min is not None or t.stats_max is not None:
            stats = self.table({STATS["max"]: ("off", self.floats(t.stats_max)),
                                STATS["min"]: ("off", self.floats(t.stats_min))})
        files = self.offsets([self.file(f) for f in t.files]) if t.files else None
        name, desc, units = self.string(t.name), self.string(t.description), self.offsets(units) if units else None
        return self.table({TENSOR["name"]: ("off", name), TENSOR["description"]: ("off", desc),
                           TENSOR["content"]: ("off", content), TENSOR["process_units"]: ("off", units),
                           TENSOR["stats"]: ("off", stats), TENSOR["files"]: ("off", files)})
