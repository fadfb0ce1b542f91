"""brats-seg: an MLOps pipeline that turns BraTS multimodal MRI into a registered 2D U-Net.

No telemetry unless the user turns it on: every entry point (the DVC stages, ``brats-seg``, the flows) imports this
package before MLflow or Prefect, so the defaults below hold however it is started (``dvc repro``, a shell with
the virtual environment active, a Prefect worker). A variable the user set is kept. MLflow honours
``MLFLOW_DISABLE_TELEMETRY`` (and ``DO_NOT_TRACK`` only when it is ``true``), Prefect's server
``PREFECT_SERVER_ANALYTICS_ENABLED``, DVC ``DVC_NO_ANALYTICS`` (besides ``core.analytics false`` in ``.dvc/config``,
which a ``dvc init`` of a new repository has not written yet: DVC ignores ``DO_NOT_TRACK``).
"""

from __future__ import annotations

import os

__version__ = "0.1.0"

TELEMETRY_OFF = {"DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                 "DVC_NO_ANALYTICS": "1"}
for _key, _value in TELEMETRY_OFF.items():
    os.environ.setdefault(_key, _value)
