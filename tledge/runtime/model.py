"""EdgeModel: a loaded .tflite / .onnx file plus its contract."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tledge.contract import ColorOrder, Contract, Layout, Norm, Quant
from tledge.errors import ContractError, ModelLoadError
from tledge.runtime.backends import TensorInfo, backend_for


@dataclass(frozen=True)
class Prediction:
    index: int
    label: str
    score: float


class EdgeModel:
    def __init__(self, path: Path, backend, contract: Contract):
        self.path, self.backend, self.contract = path, backend, contract
        inp = backend.inp
        # Feeding prepared values straight in: same dtype and no quantisation step needed.
        self._in_quant = inp.quant
        if inp.quant is not None and contract.baked and contract.input_dtype == inp.dtype and \
                inp.quant.scale == 1.0 and inp.quant.zero_point == 0:
            self._in_quant = None
        self._out_quant = backend.out.quant

    @property
    def format(self) -> str:
        return self.backend.format

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Prepared inputs (as `contract.prepare` makes them, with a batch axis) -> float32 outputs."""
        x = np.asarray(batch)
        if x.ndim == len(self.contract.input_shape):
            x = x[None]
        if self._in_quant is not None:
            x = self._in_quant.quantize(x)
        elif x.dtype.name != self.backend.inp.dtype:
            x = x.astype(self.backend.inp.dtype)
        y = self.backend.run(np.ascontiguousarray(x))
        if self._out_quant is not None:
            return self._out_quant.dequantize(y)
        return np.asarray(y, np.float32)

    def classify(self, images: Sequence[Any], top_k: int = 1) -> list[list[Prediction]]:
        """Raw images (paths or RGB arrays) -> top-k predictions per image."""
        batch = self.contract.prepare_batch(list(images))
        return [self.top(row, top_k) for row in self.predict(batch)]

    def top(self, scores: np.ndarray, k: int = 1) -> list[Prediction]:
        scores = np.asarray(scores).reshape(-1)
        idx = np.argsort(-scores, kind="stable")[:k]
        return [Prediction(int(i), self.contract.label(int(i)), float(scores[i])) for i in idx]


def infer_contract(inp: TensorInfo, out: TensorInfo, **options: Any) -> Contract:
    """A contract for a file made elsewhere: from its input tensor, completed by `options`."""
    shape = [d for d in inp.shape]
    if len(shape) != 4:
        raise ContractError(f"expected a 4-D image input, got shape {inp.shape}; pass a contract")
    layout = Layout(options.pop("layout", None) or ("nchw" if shape[1] in (1, 3) and shape[3] not in (1, 3) else "nhwc"))
    c, h, w = (shape[1], shape[2], shape[3]) if layout is Layout.NCHW else (shape[3], shape[1], shape[2])
    if min(h, w) <= 0:
        raise ContractError(f"the input size is dynamic ({inp.shape}); pass --input-size")
    base = dict(height=h, width=w, channels=c, layout=layout,
                color=ColorOrder.GRAY if c == 1 else ColorOrder.RGB, input_dtype=inp.dtype)
    if inp.quant is not None and inp.dtype in ("uint8", "int8") and "norm" not in options:
        # Quantised input: real = (q - zp) * scale. Choose the normalisation whose real values are
        # exactly the quantised pixels, so quantize(prepare(pixel)) == pixel.
        zp = inp.quant.zero_point + (128 if inp.dtype == "int8" else 0)
        base.update(norm=Norm.CUSTOM, baked=False, mean=(float(zp),), std=(1.0 / inp.quant.scale,),
                    input_quant=inp.quant)
    elif inp.dtype == "uint8":
        base.update(norm=Norm.RAW, baked=True)
    else:
        base.update(norm=Norm.RAW, baked=False, input_dtype="float32")
    base.update({k: v for k, v in options.items() if v is not None})
    if "norm" in options and options["norm"] is not None:
        base["baked"] = options.get("baked", False)
    return Contract(**base)


def load(path: str | Path, *, threads: int | None = None, contract: Contract | None = None,
         providers: Sequence | None = None, **contract_options: Any) -> EdgeModel:
    """Open a .tflite / .onnx file with its embedded contract (or an inferred one)."""
    from tledge.metadata import read_contract

    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"model file not found: {p}")
    spec = backend_for(p)
    kwargs = {"providers": providers} if spec.name == "onnx" and providers else {}
    backend = spec.opener(p, threads=threads, **kwargs)
    if contract is None:
        try:
            contract = read_contract(p)
        except ContractError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"cannot read metadata of {p}: {exc}") from None
    if contract is None:
        contract = infer_contract(backend.inp, backend.out, **contract_options)
    elif contract_options.get("labels"):
        contract = contract.replace(labels=tuple(contract_options["labels"]))
    return EdgeModel(p, backend, contract)
