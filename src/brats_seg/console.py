"""What a person sees on the console: this project's messages, one line per event, one timestamp per line.

The project's loggers speak at INFO (DEBUG with ``-v``); every other library only at WARNING and above, so
great-expectations' and MLflow's informational chatter never reaches a person while their warnings and
errors still do. When an orchestrator already stamps each line with a time (the Prefect flows set
``BRATS_SEG_LOG_TIME=0`` for the stages they run), the stages leave theirs out.
"""

from __future__ import annotations

import logging
import os
import warnings

TIME_VARIABLE = "BRATS_SEG_LOG_TIME"


def setup_logging(verbose: bool = False, with_time: bool | None = None) -> None:
    """Configure the root logger for a command line entry point (a stage or ``brats-seg``)."""
    if with_time is None:
        with_time = os.environ.get(TIME_VARIABLE, "1") != "0"
    fmt = "%(asctime)s %(levelname)s %(message)s" if with_time else "%(levelname)s %(message)s"
    logging.basicConfig(format=fmt, datefmt="%H:%M:%S")  # no-op where a host (pytest, Prefect) has handlers
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("brats_seg").setLevel(logging.DEBUG if verbose else logging.INFO)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # mlflow sets up its own logger when imported...
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # ...and a stage may have imported it already
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one model file needs no bar
    logging.captureWarnings(True)  # library warnings become one log line each, not two-line warning dumps
    warnings.filterwarnings("ignore", category=DeprecationWarning)
