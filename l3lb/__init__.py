"""l3lb."""

__version__ = "0.1.0"
