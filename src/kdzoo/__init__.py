"""kdzoo: knowledge distillation for PyTorch."""
from kdzoo.version import __version__

__all__ = ["__version__"]
