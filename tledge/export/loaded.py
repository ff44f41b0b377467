"""What `tledge.export.loader.load_model` returns: a model ready to trace, and how it was loaded."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tledge.contract import Contract

# LoadedModel.kind -> how the model was loaded
KINDS = {
    "keras": "Keras 3, as saved",
    "keras_translated": "Keras 3 (safe mode), after translating the Keras 2 config",
    "tf_keras": "tf_keras (Keras 2)",
    "saved_model": "TensorFlow SavedModel signature",
}
KERAS3_KINDS = frozenset({"keras", "keras_translated"})


@dataclass
class LoadedModel:
    """A model ready to trace: `model` is callable on normalised (or raw, if baked) input."""

    path: Path
    model: Any  # keras.Model (Keras 3 or tf_keras) or a SavedModel signature
    kind: str  # a key of KINDS
    input_hw: tuple[int, int] | None
    channels: int
    baked_mode: str | None  # preprocessing mode found inside the model, if any
    contract: Contract | None  # a tledge.json found beside the model
    num_outputs: int | None = None  # width of the (first) output, when static
    contract_path: Path | None = None  # where `contract` was read from
    notes: list[str] = field(default_factory=list)  # how it was loaded (translations applied)
    contract_source: str | None = None  # where resolve.resolve_contract took each part from
    binary: str | None = None  # one-output model: tledge.export.binary's SIGMOID / LOGIT (files give 2 scores)
    sigmoid_scores: bool = False  # several outputs, each a sigmoid (multi-label): probabilities that need not sum to 1
    opaque: str | None = None  # why a SavedModel's computation cannot be read from its graph (a JAX export)
    integer_input: str | None = None  # a model (or SavedModel signature) taking integer pixels (uint8): raw values
    unread_preprocessing: str | None = None  # arithmetic at the input whose constants cannot be read (graphprep)

    @property
    def is_keras3(self) -> bool:
        return self.kind in KERAS3_KINDS
