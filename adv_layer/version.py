"""Package version, defined once and read by setup.py."""

__version__ = "0.1.0"
