"""The version of ganforge, where every layer may read it (the figures of a metric record it)."""

__version__ = "0.1.0"
