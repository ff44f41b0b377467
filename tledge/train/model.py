"""The trained model: raw pixels (float32 0..255) -> tledge_preprocess -> backbone -> Dropout -> Dense softmax.

`Parts.model` is the functional model that is saved. Training goes through `trainer()`, a thin
wrapper sharing the same layers that calls the backbone with training=False explicitly: in Keras 3 a
`backbone(x, training=False)` recorded in a functional graph is overridden by fit's training=True
(keras-team/keras#20285), so the wrapper is what keeps batch norm (and the backbone's own dropout)
in inference mode. Batch-norm layers also stay non-trainable in fine-tuning.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tledge import backbones
from tledge._deps import require
from tledge.errors import TledgeError
from tledge.train.config import DEFAULT_UNFREEZE_FRACTION, TrainConfig


@dataclass
class Parts:
    model: Any  # the functional model that is saved
    preprocess: Any
    backbone: Any
    dropout: Any
    dense: Any
    features: Any  # the backbone output tensor inside `model`
    fold: Any = None  # grayscale.FoldReport when the model was folded to 1 channel


def _preprocess(contract, name: str | None = None):
    """The baked normalisation: a built-in Keras layer, so model.keras loads without tledge (tledge.layers)."""
    from tledge.layers import BAKED_NAME, for_contract

    # float32 under a mixed policy too (tledge.layers makes it float32): normalisation in float16 would differ
    return for_contract(contract, name=name or BAKED_NAME)


def build_backbone(cfg: TrainConfig, contract, *, pretrained: bool = True):
    """(backbone for the contract's channels, FoldReport or None). pretrained=False: random init (for resume)."""
    shape = (contract.height, contract.width, 3)
    weights = cfg.backbone_weights if pretrained else None
    bb = backbones.build(cfg.backbone, shape, weights=weights, alpha=cfg.alpha)
    if contract.channels == 3:
        return bb, None
    from tledge.train.grayscale import fold_to_gray

    rgb = contract.replace(channels=3, color="rgb", mean=None, std=None)
    return fold_to_gray(bb, _preprocess(rgb, "preprocess_rgb"), _preprocess(contract, "preprocess_gray"))


def fetch_weights(cfg: TrainConfig, contract) -> None:
    """Build the pretrained RGB backbone once and drop it, so that Keras downloads (or finds in its cache) the
    ImageNet weights now: a download that fails stops the run before the images load, not after. Not for a
    TF_CONFIG cluster, whose MultiWorkerMirroredStrategy must come before any other TensorFlow work."""
    backbones.build(cfg.backbone, (contract.height, contract.width, 3), weights=cfg.backbone_weights,
                    alpha=cfg.alpha)


def assemble(backbone, contract, n_classes: int, dropout: float, fold=None) -> Parts:
    keras = require("keras", purpose="training")
    inp = keras.Input(shape=(contract.height, contract.width, contract.channels), dtype="float32", name="pixels")
    pre = _preprocess(contract)
    feats = backbone(pre(inp), training=False)
    if len(feats.shape) != 2:
        raise TledgeError(f"backbone {backbone.name} gives features of shape {feats.shape}; expected (batch, n)")
    drop = keras.layers.Dropout(dropout, name="head_dropout")
    dense = keras.layers.Dense(n_classes, activation="softmax", dtype="float32", name="head")
    model = keras.Model(inp, dense(drop(feats)), name=f"tledge_{backbone.name}".replace(".", "_"))
    return Parts(model, pre, backbone, drop, dense, feats, fold)


def build(cfg: TrainConfig, contract, n_classes: int, *, pretrained: bool = True) -> Parts:
    backbone, fold = build_backbone(cfg, contract, pretrained=pretrained)
    return assemble(backbone, contract, n_classes, cfg.dropout, fold)


def compute_dtypes(parts: Parts) -> dict:
    """The dtypes each part computes in while training (the policy: float16 in the backbone under
    mixed precision; the baked preprocessing and the softmax head always float32)."""
    conv = next((layer for layer in parts.backbone.layers if layer.weights), parts.backbone)
    return {"preprocess": parts.preprocess.compute_dtype, "backbone": conv.compute_dtype,
            "head": parts.dense.compute_dtype}


def init_batchnorm_from_data(parts: Parts, x, n: int = 128, seed: int = 0) -> int:
    """For a randomly initialised backbone: set every batch-norm layer's moving mean / variance from
    `n` training images (one forward pass in training mode with momentum 0). Keras' initial
    statistics (0, 1) shrink activations ~10x per block, so a frozen random MobileNet outputs ~0 for
    every image and nothing can learn. Returns the number of layers set."""
    import numpy as np

    keras = require("keras", purpose="training")
    bns = [layer for layer in parts.backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    if not bns or len(x) == 0:
        return 0
    pick = np.random.default_rng(seed).permutation(len(x))[:n]
    sample = np.asarray(parts.preprocess(np.asarray(x)[pick].astype("float32")))
    saved = [layer.momentum for layer in bns]
    for layer in bns:
        layer.momentum = 0.0
    parts.backbone(sample, training=True)
    for layer, m in zip(bns, saved):
        layer.momentum = m
    return len(bns)


def feature_model(parts: Parts):
    keras = require("keras")
    return keras.Model(parts.model.input, parts.features, name="features")


def head_model(parts: Parts):
    """Features -> Dropout -> Dense, sharing the saved model's head layers (the fast path trains this)."""
    keras = require("keras")
    inp = keras.Input(shape=tuple(parts.features.shape[1:]), dtype="float32", name="features")
    return keras.Model(inp, parts.dense(parts.dropout(inp)), name="head_on_features")


def trainer(parts: Parts):
    """Pixels -> probabilities with the backbone always in inference mode (see the module doc)."""
    keras = require("keras")

    class Trainer(keras.Model):
        def __init__(self, p: Parts):
            super().__init__(name="trainer")
            self.pre, self.bb, self.drop, self.dense = p.preprocess, p.backbone, p.dropout, p.dense

        def call(self, x, training=False):
            return self.dense(self.drop(self.bb(self.pre(x), training=False), training=training))

    return Trainer(parts)


def freeze(parts: Parts) -> None:
    parts.backbone.trainable = False


def cut_index(layers: list, unfreeze: int | None, fine_tune_at: str | int | None) -> int:
    """Index of the first backbone layer trained in phase 2."""
    n = len(layers)
    if fine_tune_at is not None:
        if isinstance(fine_tune_at, int):
            if not -n <= fine_tune_at < n:
                raise TledgeError(f"--fine-tune-at {fine_tune_at} is out of range: the backbone has {n} layers")
            return fine_tune_at % n
        names = [layer.name for layer in layers]
        if fine_tune_at not in names:
            raise TledgeError(f"--fine-tune-at: no layer {fine_tune_at!r} in the backbone; the top ones are: "
                              f"{', '.join(names[-12:])}")
        return names.index(fine_tune_at)
    count = round(DEFAULT_UNFREEZE_FRACTION * n) if unfreeze is None else unfreeze
    return max(0, n - count)


def check_fine_tune(layers, unfreeze: int | None, fine_tune_at: str | int | None) -> None:
    """A TledgeError when the layers phase 2 would unfreeze hold no weights it trains (batch norm stays frozen):
    `--unfreeze 2` took a ReLU and the pooling, and fine-tuning trained the head only, without a word."""
    keras = require("keras")
    cut = cut_index(layers, unfreeze, fine_tune_at)
    top = layers[cut:]
    if not top or any(layer.weights and not isinstance(layer, keras.layers.BatchNormalization) for layer in top):
        return
    flag = f"--fine-tune-at {fine_tune_at}" if fine_tune_at is not None else f"--unfreeze {len(top)}"
    raise TledgeError(f"{flag} unfreezes {', '.join(layer.name for layer in top[:4])}"
                      f"{', ...' if len(top) > 4 else ''}: no layer with weights to train (batch norm stays frozen), "
                      "so fine-tuning would train the head only: unfreeze more layers, or pass --fine-tune-epochs 0")


def unfreeze_top(parts: Parts, unfreeze: int | None, fine_tune_at: str | int | None) -> dict:
    """Make the top backbone layers trainable (batch norm excepted). Returns what was unfrozen."""
    keras = require("keras")
    layers = parts.backbone.layers
    cut = cut_index(layers, unfreeze, fine_tune_at)
    parts.backbone.trainable = True
    trained = []
    for i, layer in enumerate(layers):
        layer.trainable = i >= cut and not isinstance(layer, keras.layers.BatchNormalization)
        if layer.trainable and layer.weights:
            trained.append(layer.name)
    return {"from_layer": layers[cut].name if cut < len(layers) else None, "from_index": cut,
            "layers": len(layers) - cut, "weighted_layers": len(trained)}
