"""hepfm's version, in a module of its own so that subpackages read it without importing the package
root; pyproject.toml reads it from here too (hatch's dynamic version), so it is written once."""

__version__ = "0.1.0"
