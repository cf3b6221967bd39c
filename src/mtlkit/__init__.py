"""mtlkit: multi-task learning for PyTorch."""

from mtlkit.errors import ConfigError, SpecError

__version__ = "0.1.0"

__all__ = ["ConfigError", "SpecError", "__version__"]
