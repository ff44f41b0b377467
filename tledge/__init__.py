"""tledge: transfer learning to edge devices with one preprocessing contract.

Importing tledge changes nothing in the user's process (no environment variables, no TensorFlow import);
the `tledge` command quietens TensorFlow's C++ logs for its own process only (tledge.cli.main).
"""
from tledge.contract import Contract
from tledge.errors import (ArgumentError, ContractError, DataError, ImageError, MissingDependency, ModelLoadError,
                           ModelRunError, ParityError, TledgeError)
from tledge.version import __version__

__all__ = ["ArgumentError", "Contract", "ContractError", "DataError", "ImageError", "MissingDependency",
           "ModelLoadError", "ModelRunError", "ParityError", "TledgeError", "__version__"]
