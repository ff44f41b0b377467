from common import D, ZOO, Path, keras, load, macs, np, predict, repair, sys, time  # noqa: F401
from tledge.quant import selective
from tledge.quant.qdqgraph import layer_of
data = (D / "_file_repaired_stem6_minmax_float_none.tflite").read_bytes()
for op, out, ins in selective.tflite_graph(data)[:200]:
    print(op, out[:110], "->", layer_of(out))
