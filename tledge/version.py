"""tledge's version (a leaf module: tledge._deps and the exporters read it without importing the package's API)."""
__version__ = "0.1.0"
