"""One-output binary classifiers (`Dense(1, activation="sigmoid")`, or the logit of TensorFlow's transfer-learning
tutorial, `Dense(1)` trained with `from_logits=True`) exported as two class scores.

With one output every argmax is 0: parity would report agreement 1.000 for any int8 file, accuracy would be the
share of the first class, and MediaPipe's classifier would show one category. So the export appends
[1 - p, p] (p = the sigmoid output, or sigmoid(logit)): p is the probability of the second label (class folders
sorted by name, as Keras' `image_dataset_from_directory` numbers them), every file has two outputs that sum to
one, and the contract says probabilities. The same head goes into the traced function (every converter, the
parity reference, `tledge parity`) and into the Keras model the int8 repairs work on.
"""
from __future__ import annotations

from tledge.errors import ModelLoadError

SIGMOID, LOGIT = "sigmoid", "logit"
UNKNOWN = "unknown"  # the graph cannot be seen through: OPAQUE_OPS, or a function the walk cannot follow
OPAQUE_OPS = frozenset({"XlaCallModule"})  # a JAX-backend `model.export()` / StableHLO module: one op, no graph


def output_kind(model, output: str | None = None) -> str:
    """SIGMOID when the model's output comes from a sigmoid (a layer's activation, an Activation layer, a SavedModel's
    Sigmoid op), looking through layers and ops that only pool, reshape or drop out, else LOGIT. Read from configs and
    graphs only. `output`: a SavedModel signature's output name (default its first)."""
    if getattr(model, "layers", None) is not None:
        act = final_activation(model)
        if act == CODE:  # a TensorFlow function or Lambda makes the output: the traced graph says
            return _graph_kind(traced(model))
        if act in PROBABILITY_ACTIVATIONS:
            return SIGMOID
        return LOGIT if act in LINEAR_ACTIVATIONS or not isinstance(act, str) else ACTIVATION + act
    return _graph_kind(model, output)


# what a Keras output layer's activation makes of a one-output model: a logit (no activation; a one-unit softmax is
# the constant 1, which parity calls degenerate), else ACTIVATION + its name: a tanh or relu output is neither a
# probability nor a logit (a tanh read as a logit gave scores capped at sigmoid(1) = 0.73, exit 0), so refused
# without --binary-output
LINEAR_ACTIVATIONS = frozenset({"linear", "softmax"})
ACTIVATION = "activation "


# activations whose output is a probability in 0..1 (hard_sigmoid: tf_keras's clip(0.2 x + 0.5, 0, 1), Keras 3's
# relu6(x + 3) / 6): a one-output model with one of them was read as a logit and given a second sigmoid
PROBABILITY_ACTIVATIONS = frozenset({"sigmoid", "hard_sigmoid"})


CODE = "code"  # final_activation: the output comes from code (a TFOpLambda or Lambda) the config does not name
# tf.keras 2's TFOpLambda functions that are activations (`tf.math.sigmoid(x)` in a functional model)
_TF_ACTIVATIONS = {"math.sigmoid": "sigmoid", "nn.sigmoid": "sigmoid", "sigmoid": "sigmoid",
                   "nn.softmax": "softmax", "math.softmax": "softmax", "nn.relu": "relu"}


def traced(model):
    """A Keras model (Keras 3 or tf_keras) as a concrete TensorFlow function of one float image batch, or None."""
    try:
        import tensorflow as tf

        shape = [1, *(int(d) if d else None for d in model.inputs[0].shape[1:])]
        return tf.function(lambda x: model(x, training=False)).get_concrete_function(tf.TensorSpec(shape, tf.float32))
    except Exception:  # noqa: BLE001 - a model that will not trace: nothing to read (the export says why later)
        return None


# layers that keep a value in 0..1 (pooling a sigmoid map gives a probability): looked through
_PASS = {"GlobalAveragePooling2D", "GlobalAveragePooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling1D", "Flatten",
         "Reshape", "Dropout", "SpatialDropout2D", "GaussianDropout", "AlphaDropout", "Identity", "AveragePooling2D",
         "MaxPooling2D", "Cropping2D", "Permute", "InputLayer"}


def final_activation(model) -> str | None:
    """The activation that makes a Keras model's (first) output (`sigmoid`, `softmax`, `linear`...), looking through
    _PASS layers and nested models; None when it cannot be told."""
    try:
        t = model.outputs[0]
    except (AttributeError, IndexError, TypeError, ValueError):
        return None
    for _ in range(256):
        hist = getattr(t, "_keras_history", None)
        layer = getattr(hist, "operation", None) or getattr(hist, "layer", None)
        if layer is None:
            return None
        if getattr(layer, "layers", None) is not None and hasattr(layer, "outputs"):  # a nested model
            return final_activation(layer)
        try:
            cfg = layer.get_config()
        except Exception:  # noqa: BLE001 - an op without a config: nothing to read
            return None
        name = type(layer).__name__
        if name in ("TFOpLambda", "Lambda"):  # a TensorFlow function (named in the config) or Python code
            function = cfg.get("function") if name == "TFOpLambda" else None
            return _TF_ACTIVATIONS.get(function, CODE) if isinstance(function, str) else CODE
        act = "softmax" if name == "Softmax" else cfg.get("activation")
        act = act.get("config", {}).get("name", act.get("class_name")) if isinstance(act, dict) else act
        if act not in (None, "linear") or name not in _PASS:
            return act or "linear"
        try:  # a look-through layer: to the tensor it was given
            t = layer._inbound_nodes[hist[1]].input_tensors[0]
        except (AttributeError, IndexError, TypeError):
            return None
    return None


_GRAPH_PASS = {"Identity", "IdentityN", "Mean", "Max", "Reshape", "Squeeze", "ExpandDims", "StopGradient", "Cast",
               "ClipByValue", "Minimum", "Maximum"}  # (a sigmoid clipped away from 0 and 1 is still a sigmoid)
# ops that make a logit; any other op at a one-output graph's end is probed (tledge.export.binary.probe)
_GRAPH_LINEAR = {"MatMul", "BiasAdd", "Add", "AddV2", "Sub", "Mul", "Conv2D", "BatchMatMulV2", "BatchMatMulV3",
                 "Einsum", "FusedBatchNormV3", "Placeholder"}


def _graph_kind(fn, output: str | None = None) -> str:
    """A SavedModel signature: the op that produces its output, through Identity, pooling and reshaping ops and into
    the functions that (Stateful)PartitionedCall ops call (Keras 3's `model.export()` wraps the model in one)."""
    try:  # (fn None: AttributeError)
        graph_def = fn.graph.as_graph_def()
        library = {f.signature.name: f for f in graph_def.library.function}
        nodes = {n.name: n for n in graph_def.node}
        at = sorted(fn.structured_outputs).index(output) if output is not None else 0  # fn.outputs: by sorted key
        name, index = fn.outputs[at].op.name, fn.outputs[at].value_index
        op = _walk(nodes, library, name, index, 0)
        return SIGMOID if op == "Sigmoid" else LOGIT if op in _GRAPH_LINEAR else UNKNOWN
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        return LOGIT


def _walk(nodes: dict, library: dict, name: str, index: int, depth: int) -> str:
    bounded: set[str] = set()  # Minimum / Maximum by a constant within 0..1 on the way (tf.clip_by_value's ops)
    for _ in range(256):
        node = nodes[name]
        if node.op in ("StatefulPartitionedCall", "PartitionedCall") and depth < 16:
            f = library[node.attr["f"].func.name]
            ret = f.ret[f.signature.output_arg[index].name]  # "node:output_arg:i" or "node:i" inside the function
            inner = {n.name: n for n in f.node_def}
            name, index = _ref(ret, f)
            return _walk(inner, library, name, index, depth + 1) if name in inner else "?"
        if node.op == "ClipByValue" and _bounds_in_0_1(nodes, node.input[1:3]):
            return "Sigmoid"  # clipped into 0..1: a (hard) sigmoid's probability, whatever computed it
        if node.op in ("Minimum", "Maximum") and len(node.input) == 2 and _bounds_in_0_1(nodes, node.input[1:]):
            bounded.add(node.op)
            if bounded == {"Minimum", "Maximum"}:
                return "Sigmoid"
        if node.op not in _GRAPH_PASS or not node.input:
            return node.op
        name, index = _ref(node.input[0], None)
    return "?"


def _bounds_in_0_1(nodes: dict, inputs) -> bool:
    """Whether the nodes named by `inputs` are all constants within 0..1."""
    try:
        import tensorflow as tf

        values = [tf.make_ndarray(nodes[_ref(i, None)[0]].attr["value"].tensor) for i in inputs]
        return bool(values) and all(v.size and float(v.min()) >= 0.0 and float(v.max()) <= 1.0 for v in values)
    except (KeyError, TypeError, ValueError, ImportError):
        return False


def _ref(ref: str, f) -> tuple[str, int]:
    """'node:out:2' / 'node:2' / 'node' -> (node, 2); a function argument has no node (returned as is)."""
    parts = ref.lstrip("^").split(":")
    return parts[0], int(parts[-1]) if len(parts) > 1 and parts[-1].isascii() and parts[-1].isdigit() else 0


def tf_head(tf, y, kind: str):
    """[1 - p, p] as TensorFlow ops (the traced function)."""
    p = tf.sigmoid(y) if kind == LOGIT else y
    return tf.concat([1.0 - p, p], axis=-1)


def keras_head(keras, y, kind: str):
    """The same head as Keras 3 layers (the repairs' pixel model)."""
    p = keras.layers.Activation("sigmoid", name="tledge_binary_sigmoid")(y) if kind == LOGIT else y
    q = keras.layers.Rescaling(-1.0, offset=1.0, name="tledge_binary_complement")(p)
    return keras.layers.Concatenate(axis=-1, name="tledge_binary_scores")([q, p])


def opaque(fn) -> str | None:
    """Why a SavedModel signature's computation cannot be read from its graph (OPAQUE_OPS), or None."""
    try:
        graph = fn.graph.as_graph_def()
        ops = {n.op for n in graph.node} | {n.op for f in graph.library.function for n in f.node_def}
    except Exception:  # noqa: BLE001 - no graph to read: nothing to say
        return None
    return "its computation is one XlaCallModule op (a JAX-backend model.export(), StableHLO)" \
        if ops & OPAQUE_OPS else None


def probe(call, hw, channels: int) -> str | None:
    """LOGIT when a one-output model gives a value outside 0..1 on probe images (constant and noise images, one at
    a time), which no sigmoid does; else None (its outputs cannot tell)."""
    import numpy as np

    h, w = hw or (224, 224)
    rng = np.random.default_rng(0)
    images = [np.full((1, h, w, channels), v, np.float32) for v in (0, 64, 128, 192, 255)]
    images += [rng.uniform(0, 255, (1, h, w, channels)).astype(np.float32) for _ in range(4)]
    y = np.concatenate([np.asarray(call(x), np.float32).reshape(-1) for x in images])
    return LOGIT if np.any((y < -1e-6) | (y > 1 + 1e-6)) else None


def one_output_kind(loaded, kind: str, given: str | None) -> str:
    """SIGMOID or LOGIT for a one-output model: `given` (--binary-output) wins; a graph that cannot be read is
    probed (a value outside 0..1 is a logit) and else refused: a guess was a sigmoid applied twice, every label
    flipped, and parity passed against the same wrong head (a JAX model.export())."""
    if given is not None:
        if given not in (SIGMOID, LOGIT):
            raise ModelLoadError(f"--binary-output takes {SIGMOID} or {LOGIT}, not {given!r}")
        if kind == SIGMOID and given == LOGIT:  # a sigmoid the model shows: a second one would flip every label
            raise ModelLoadError(f"{loaded.path.name}'s one output is a {kind}, read from the model: --binary-output "
                                 f"{given} contradicts it (drop it)")
        loaded.notes.append(f"the one output is a {given}, as --binary-output says")
        return given
    if kind.startswith(ACTIVATION):
        raise ModelLoadError(f"the one output of {loaded.path.name} comes from a {kind[len(ACTIVATION):]} activation: "
                             "neither a probability (sigmoid) nor a logit (no activation); pass --binary-output sigmoid "
                             "or --binary-output logit to say how to read it")
    if kind != UNKNOWN:
        return kind
    found = probe(loaded.model, loaded.input_hw, loaded.channels)
    if found is None:
        why = loaded.opaque or "the op that makes its output cannot be read from its graph"
        raise ModelLoadError(f"cannot tell whether the one output of {loaded.path.name} is a sigmoid probability or a "
                             f"logit: {why}, and it stayed in 0..1 on probe images; pass --binary-output sigmoid or "
                             "--binary-output logit")
    loaded.notes.append("the one output is a logit: values outside 0..1 on probe images (its graph cannot say)")
    return found


def note(kind: str) -> str:
    what = "a sigmoid probability" if kind == SIGMOID else "a logit (no sigmoid in the model)"
    return (f"the model has one output, {what}: the files give two class scores [1 - p, p], p = "
            f"{'the output' if kind == SIGMOID else 'sigmoid(output)'} = the probability of the second label")
