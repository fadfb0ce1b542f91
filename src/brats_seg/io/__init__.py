"""File formats: NIfTI, slice shards, archives, tables; each read and written in one module."""
