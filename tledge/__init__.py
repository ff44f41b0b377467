"""tledge: transfer learning to edge devices with one preprocessing contract."""
import os as _os

# Before anything imports TensorFlow: keep its C++ INFO/WARNING logs out of users' terminals
# (errors still show), and use Keras 3 with the TensorFlow backend.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_os.environ.setdefault("KERAS_BACKEND", "tensorflow")
from tledge.contract import Contract
from tledge.errors import ContractError, MissingDependency, ParityError, TledgeError

__version__ = "0.1.0"
__all__ = ["Contract", "ContractError", "MissingDependency", "ParityError", "TledgeError", "__version__"]
