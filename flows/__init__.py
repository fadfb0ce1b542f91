"""Prefect flows of brats-seg. Telemetry is off unless the user turned it on explicitly."""

from __future__ import annotations

import os

for _key, _value in {"DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                     "MLFLOW_DISABLE_TELEMETRY": "true"}.items():
    os.environ.setdefault(_key, _value)  # before Prefect is imported: it reads its settings then
