"""Shared set-up of the activation-split diagnosis (lab/act_split/README.md)."""
import os, sys, time  # noqa: F401 - re-exported to the scripts
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
from pathlib import Path
REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(Path(__file__).parent), str(REPO), str(REPO / "benchmarks"), str(REPO / "tests")]
import numpy as np
import keras
import tledge.layers  # noqa  custom objects
from tledge.quant import repair
from tledge.quant.kerasgraph import predict  # noqa: F401 - re-exported

D = Path(os.environ.get("ACT_SPLIT_DIR", "/tmp/act-split"))  # data.npz, pixel.keras, results.jsonl
ZOO = Path(os.environ.get("ZOO_CACHE", "/tmp/tledge-int8-zoo"))  # benchmarks/int8_zoo.py --cache

def load():
    d = np.load(D / "data.npz")
    m = keras.models.load_model(D / "pixel.keras", compile=False)
    return m, d

def macs(flat):
    out = {}
    for op, node in repair.nodes(flat):
        k = type(op).__name__
        o = node.outputs[0].shape
        if k == "Conv2D":
            kh, kw, ci, co = op.kernel.shape
            out[op.name] = o[1] * o[2] * co * kh * kw * ci
        elif k == "DepthwiseConv2D":
            kh, kw, c, mult = op.kernel.shape
            out[op.name] = o[1] * o[2] * c * mult * kh * kw
        elif k == "Dense":
            out[op.name] = int(np.prod(op.kernel.shape))
    return out


def each_output(model, x, batch=64):
    """(layer name, its float output) for every node of a flat model, batch by batch (explain.forward_pass's walk,
    without its rounding, for the scripts' own statistics)."""
    for i in range(0, len(x), batch):
        acts = {id(t): x[i:i + batch] for t in model.inputs}
        for op, node in repair.nodes(model):
            args, kw = node.arguments.fill_in(acts)
            out = np.asarray(repair.apply_layer(op, args, kw))
            yield op.name, out
            for t in node.outputs:
                acts[id(t)] = out
