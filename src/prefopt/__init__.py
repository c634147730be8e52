"""prefopt: align language models from comparisons and rankings."""

__version__ = "0.1.0"
