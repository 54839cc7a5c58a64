"""The on-disk run format: layout names, per-file index, index cache and writer."""
