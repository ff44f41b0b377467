"""What in a SavedModel could act outside the model: read from `saved_model.pb` before loading it.

A SavedModel holds TensorFlow ops, not Python: loading one never runs Python code from the file.
But a few ops act on the world when the graph runs: they write files (WriteFile, summary writers,
checkpoint savers, PrintV2 to a `file://` stream, debug dumps) or call back into Python (PyFunc,
EagerPyFunc: the function itself is not in the file, but calling into the host process is not what an
image classifier does), and whole op families no classifier's graph holds (tf.data, readers, file and RPC ops:
ACTING_FAMILIES, matched by name, as a list of single ops is never complete). Those are refused unless --unsafe. Checkpoint save ops are expected in the
SavedModel's own save function, which tledge never calls; they are refused only where the serving
signature or the init op can reach them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tledge.errors import ModelLoadError

# op type -> what it does when the graph runs
ACTING_OPS: dict[str, str] = {
    "WriteFile": "writes a file",
    "PyFunc": "calls into the host Python process",
    "PyFuncStateless": "calls into the host Python process",
    "EagerPyFunc": "calls into the host Python process",
    "CreateSummaryFileWriter": "writes event files",
    "CreateSummaryDbWriter": "writes a database",
    "WriteSummary": "writes event files",
    "WriteScalarSummary": "writes event files",
    "WriteImageSummary": "writes event files",
    "WriteAudioSummary": "writes event files",
    "WriteHistogramSummary": "writes event files",
    "WriteGraphSummary": "writes event files",
    "WriteRawProtoSummary": "writes event files",
    "ImportEvent": "writes event files",
    "DatasetToTFRecord": "writes a TFRecord file",
    "ExperimentalDatasetToTFRecord": "writes a TFRecord file",
    "DebugIdentity": "dumps tensors to debug URLs",
    "DebugIdentityV2": "dumps tensors to debug URLs",
    "DebugNanCount": "dumps tensors to debug URLs",
    "DebugNumericSummary": "dumps tensors to debug URLs",
    "DebugNumericSummaryV2": "dumps tensors to debug URLs",
    "DistributedSave": "writes a dataset to files",
    "RemoteCall": "runs a function on another device or host",
}
SAVE_OPS = frozenset({"Save", "SaveV2", "SaveSlices", "MergeV2Checkpoints"})  # fine only in the save function
# reads a checkpoint: expected in the restore function only (a path the graph chooses, from the serving path)
RESTORE_OPS = frozenset({"Restore", "RestoreV2", "RestoreSlice"})
# Whole families an image classifier's serving graph never holds (the save and restore functions do: those
# are not reached from a signature), matched by op name: a list of single op names is never complete (tf.data's cache() and save() write files; readers, snapshots and RPC reach outside)
ACTING_FAMILIES: tuple[tuple[str, str], ...] = (
    ("Dataset", "runs a tf.data pipeline (cache, save, snapshot and readers write or read files)"),
    ("Iterator", "runs a tf.data pipeline"),
    ("Snapshot", "reads or writes snapshot files"),
    ("Reader", "reads files"),
    ("File", "reads or writes files"),
    ("Summary", "writes event files"),
    ("Rpc", "calls a remote service"),
    ("ImmutableConst", "maps a file into memory"),
    ("LoadAndRemapMatrix", "reads a checkpoint file"),
)


@dataclass(frozen=True)
class OpFinding:
    where: str  # function (or "main graph") and node name
    op: str
    reason: str


def read_proto(folder: str | Path, saved_model_pb2):
    """The SavedModel proto of `folder`: saved_model.pb, or the text form TensorFlow also loads
    (`Builder.save(as_text=True)`: saved_model.pbtxt), parsed; ModelLoadError when unreadable."""
    from google.protobuf import text_format

    sm = saved_model_pb2.SavedModel()
    binary, text = Path(folder) / "saved_model.pb", Path(folder) / "saved_model.pbtxt"
    try:
        if binary.is_file():
            sm.ParseFromString(binary.read_bytes())
        else:
            text_format.Parse(text.read_text(encoding="utf-8"), sm)
    except Exception as exc:  # protobuf's DecodeError / ParseError and friends
        raise ModelLoadError(f"cannot read {binary if binary.is_file() else text}: {str(exc)[:200]}") from None
    return sm


def find_acting_ops(folder: str | Path) -> list[OpFinding]:
    """Ops of the SavedModel at `folder` that act outside the model when they run."""
    from tledge._deps import require

    require("tensorflow", extra="export")
    from tensorflow.core.protobuf import saved_model_pb2

    sm = read_proto(folder, saved_model_pb2)
    found: list[OpFinding] = []
    for graph in sm.meta_graphs:
        functions = {f.signature.name: f for f in graph.graph_def.library.function}
        reached_fns, reached_nodes = _reachable(graph, functions, _serving_starts(graph))
        load_fns, load_nodes = _reachable(graph, functions, _load_starts(graph))
        # what the TF2 loader may call itself (a resource's _initialize: SaveV2 there wrote files at load, without
        # --unsafe) is every concrete function its object graph names; the saver's save and restore functions are
        # not among them. A TF1 graph has no object graph: a function nothing reaches never runs.
        callable_fns = _closure(functions, list(graph.object_graph_def.concrete_functions))
        for node in graph.graph_def.node:  # TF1: a main-graph node nothing reaches never runs
            reason = _reason(node, node.name in reached_nodes, node.name in load_nodes, inert=True)
            if reason:
                found.append(OpFinding(f"main graph/{node.name}", node.op, reason))
        for name, fn in functions.items():
            inert = name not in callable_fns
            for node in fn.node_def:
                reason = _reason(node, name in reached_fns, name in load_fns, inert=inert)
                if reason:
                    found.append(OpFinding(f"{name}/{node.name}", node.op, reason))
    return found


# TF1 SavedModels run these when they load (tf.compat.v1.saved_model.Builder's main_op, the legacy init op,
# table initialisers) besides the saver's restore op; TF2 ones keep their init op as a signature
LOAD_COLLECTIONS = ("saved_model_main_op", "legacy_init_op", "table_initializer", "init_op")


def _serving_starts(graph) -> list[str]:
    return [t.name for s in graph.signature_def.values() for t in s.outputs.values()]


def _load_starts(graph) -> list[str]:
    """What loading runs besides the signatures: the init collections' ops and the saver's restore op (a
    Builder's main_op that saved a checkpoint to a path of its own ran at load, without --unsafe)."""
    starts = [v for key in LOAD_COLLECTIONS if key in graph.collection_def
              for v in graph.collection_def[key].node_list.value]
    restore = graph.saver_def.restore_op_name if graph.HasField("saver_def") else ""
    return starts + ([restore] if restore else [])


def _reason(node, reachable: bool, at_load: bool = False, inert: bool = False) -> str | None:
    """Why `node` acts outside the model, or None. `inert`: in what nothing runs (the saver's save function, a TF1
    main-graph node no signature or load op reaches); a function outside it may run, at load or when called."""
    if node.op in ACTING_OPS:
        return ACTING_OPS[node.op]
    if node.op.startswith("Debug"):  # the whole tfdbg family (DebugIdentityV3 was missing from the list)
        return "dumps tensors to debug URLs (files or a remote host)"
    if node.op == "PrintV2" and node.attr["output_stream"].s.decode(errors="replace").startswith("file://"):
        return "prints to a file"
    if node.op in SAVE_OPS and reachable:
        return "writes a checkpoint from the serving path"
    if node.op in SAVE_OPS and at_load:
        return "writes a checkpoint when the model loads (its init or restore op)"
    if node.op in RESTORE_OPS and reachable:
        return "reads a checkpoint from the serving path"
    if node.op in RESTORE_OPS and at_load:  # the restore op reading the SavedModel's own variables
        return None
    if not reachable and not at_load:
        if inert:  # the SavedModel's own save function, which tledge never calls
            return None
        if node.op in SAVE_OPS:
            return "writes a checkpoint in a function loading may call itself (a resource's initialiser)"
        if node.op in RESTORE_OPS:  # reads a checkpoint: the restore function, however it is reached
            return None
    return next((why for part, why in ACTING_FAMILIES if part in node.op), None)


def _reachable(graph, functions: dict, starts: list[str]) -> tuple[set[str], set[str]]:
    """Functions and main-graph nodes `starts` (tensor or node names) reach, following inputs and function
    attributes."""
    by_name = {n.name: n for n in graph.graph_def.node}
    todo = [t.split(":")[0].lstrip("^") for t in starts]
    seen_nodes: set[str] = set()
    called: list[str] = []
    while todo:
        name = todo.pop()
        if name in seen_nodes or name not in by_name:
            continue
        seen_nodes.add(name)
        node = by_name[name]
        called += _called(node)
        todo += [i.split(":")[0].lstrip("^") for i in node.input]
    return _closure(functions, called), seen_nodes


def _closure(functions: dict, called: list[str]) -> set[str]:
    """The functions `called` names and every function they call, transitively."""
    reached: set[str] = set()
    while called:
        fn = called.pop()
        if fn in reached or fn not in functions:
            continue
        reached.add(fn)
        for node in functions[fn].node_def:
            called += _called(node)
    return reached


def _called(node) -> list[str]:
    names = []
    for value in node.attr.values():
        if value.HasField("func"):
            names.append(value.func.name)
        names += [f.name for f in value.list.func]
    return names


def serving_tags(folder: str | Path) -> list[str] | None:
    """The tags of the MetaGraph to load when a SavedModel holds several (TensorFlow then asks for `tags=`): the one
    tagged `serve` alone, else the first tagged `serve` among others; None for one MetaGraph (or none served)."""
    from tensorflow.core.protobuf import saved_model_pb2

    try:
        sm = read_proto(folder, saved_model_pb2)
    except ModelLoadError:  # find_acting_ops has said so already
        return None
    if len(sm.meta_graphs) < 2:
        return None
    tag_sets = [list(g.meta_info_def.tags) for g in sm.meta_graphs]
    return next((t for t in tag_sets if t == ["serve"]), None) or next((t for t in tag_sets if "serve" in t), None)


def refuse_unfrozen(fn, name: str) -> None:
    """A ModelLoadError (exit 2) when a SavedModel's signature cannot be frozen (`freeze_problem`): every converter
    and the parity reference's graph reading freeze it first, so no flag gets past it (tledge had suggested
    --preprocess raw, which then ended in exit 1 with TensorFlow's words)."""
    problem = freeze_problem(fn)
    if problem:
        raise ModelLoadError(f"SavedModel {name} cannot be used: {problem}")


def freeze_problem(fn) -> str | None:
    """Why a signature's variables cannot be made constants (what every converter and the preprocessing reader
    do first), or None. A pruning wrapper left in (tfmot's prune_low_magnitude) assigns its mask in the serving
    function: tledge said "does not bake its preprocessing", and the converters failed with TensorFlow's words."""
    try:
        from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

        graph = convert_variables_to_constants_v2(fn).graph.as_graph_def()
        del graph
        return None
    except Exception as exc:  # noqa: BLE001 - the reason is what the user needs
        text = str(exc)
        if re.search(r"Assign\w*VariableOp", text) and re.search(r"random_\w+|seed_generator", text):
            # Keras 3's RandomFlip / RandomRotation / ... advance their seed even at inference (not tfmot at all)
            hint = ("it assigns variables while serving: Keras augmentation layers (RandomFlip, RandomRotation, ...) "
                    "advance their seed in the exported function, and still augment there; export the model's .keras "
                    "file, or export a model without them")
        elif re.search(r"Assign\w*VariableOp", text):
            hint = ("it assigns variables while serving: a training-time wrapper such as tfmot's prune_low_magnitude "
                    "(tfmot.sparsity.keras.strip_pruning(model) before saving)")
        else:
            hint = f"{exc.__class__.__name__}: {text.strip().splitlines()[0][:160] if text.strip() else ''}"
        return f"its serving function cannot be frozen ({hint})"


def check_any_batch(serve, contract, name: str) -> None:
    """ONNX files take any batch (parity, calibration and clients feed several images): a SavedModel whose graph
    fixes the batch (`tf.reshape(h, [1, -1])` under a [1, H, W, C] signature) gave a file that failed on batch 32
    and ended an --int8 export in an onnxruntime traceback."""
    x = np.zeros((2, contract.height, contract.width, contract.channels), np.float32)
    try:
        rows = np.asarray(serve(x)).shape[0]
        why = None if rows == 2 else f"2 images in, {rows} rows out"
    except Exception as exc:  # noqa: BLE001 - TensorFlow's InvalidArgumentError and friends
        why = exc.__class__.__name__
    if why:
        raise ModelLoadError(f"SavedModel {name} runs one image at a time only (its graph fixes the batch: {why}): "
                             "ONNX files take any batch; export the TFLite files alone with --formats tflite")


def refusal(folder: str | Path, found: list[OpFinding]) -> str:
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    f = found[0]
    return (f"{folder}: op {f.where} ({f.op}) {f.reason}{more}. Refused in safe mode: pass --unsafe only if you "
            "trust this SavedModel")
