"""Data: the built-in demo set, robust image decoding, dataset sources and loaders."""
