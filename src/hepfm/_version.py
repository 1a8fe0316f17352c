"""hepfm's version, in a module of its own so that subpackages read it without importing the package
root (keep in step with ``version`` in pyproject.toml)."""

__version__ = "0.1.0"
