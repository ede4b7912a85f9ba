"""selfsup: classic pretext-task self-supervised visual representation learning."""

__version__ = "0.1.0"
