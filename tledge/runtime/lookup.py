"""The per-pixel-value table (cv2.LUT) that does a contract's normalisation and a file's input quantisation in one
step: what EdgeModel.to_input uses instead of prepare() + quantize() where it is exact."""
from __future__ import annotations

import numpy as np

from tledge.contract import ColorOrder, Contract, Norm
from tledge.runtime.backends import TensorInfo


IDENTITY_TABLE = object()


def lookup_table(contract: Contract, inp: TensorInfo, in_quant):
    """A cv2.LUT table equal to prepare+quantize per pixel value, IDENTITY_TABLE, or None when it does not apply."""
    if inp.dtype not in ("uint8", "int8", "float32"):
        return None
    if not contract.baked and contract.norm is Norm.CAFFE and contract.color is ColorOrder.RGB:
        return None  # caffe swaps channels inside normalize: not per-channel elementwise
    n = contract.channels
    ramp = np.repeat(np.arange(256, dtype=np.uint8)[:, None, None], n, axis=2)  # (256, 1, C)
    x = ramp.astype(contract.input_dtype) if contract.baked else contract.normalize(ramp)
    q = in_quant.quantize(x) if in_quant is not None else x.astype(inp.dtype)
    if q.dtype.name != inp.dtype:
        return None
    if q.dtype == np.uint8 and np.array_equal(q, ramp):
        return IDENTITY_TABLE
    table = q.reshape(256, n)
    if n == 1 or all(np.array_equal(table[:, 0], table[:, i]) for i in range(1, n)):
        return np.ascontiguousarray(table[:, 0])
    return np.ascontiguousarray(table.reshape(1, 256, n))
