"""Running the pipeline: the DVC driver (one `dvc repro` per stage, with locks), the executors that spread
per-case work over processes or a Dask cluster, provenance (code and data digests), and recording a run in git."""
