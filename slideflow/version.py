"""The package version, in a module of its own so any layer can record it without importing
the package root (whose lazy public API points at every layer)."""

__version__ = "0.1.0"
