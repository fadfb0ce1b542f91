"""Data: layouts, labels, synthetic cases, download, validation, slicing and the in-memory dataset."""
