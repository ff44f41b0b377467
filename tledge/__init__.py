"""tledge: transfer learning to edge devices with one preprocessing contract."""
from tledge.contract import Contract
from tledge.errors import ContractError, MissingDependency, ParityError, TledgeError

__version__ = "0.1.0"
__all__ = ["Contract", "ContractError", "MissingDependency", "ParityError", "TledgeError", "__version__"]
