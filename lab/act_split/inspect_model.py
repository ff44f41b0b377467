from common import D, ZOO, Path, keras, load, macs, np, predict, repair, sys, time  # noqa: F401
m, d = load()
flat, _ = repair.apply(m, d["calib"], steps=("fold",))
mc = macs(flat); tot = sum(mc.values())
stem6 = set(repair.stem_layers(flat, 6))
for op, node in repair.nodes(flat):
    ins = [t._keras_history.operation.name for t in node.input_tensors]
    print(f"{op.name:45s} {type(op).__name__:22s} q={int(repair.requantised(op))} stem6={int(op.name in stem6)} "
          f"macs={mc.get(op.name,0)/tot*100:5.2f}% shape={tuple(node.outputs[0].shape)} act={getattr(op,'activation',None).__name__ if hasattr(op,'activation') and callable(getattr(op,'activation',None)) else ''} <- {ins}")
print("total MACs", tot)
