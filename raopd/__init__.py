"""raopd: an AirPlay 1 (RAOP) receiver daemon."""

__version__ = "0.1.0"

__all__ = ["__version__"]
