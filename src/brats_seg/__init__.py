"""brats-seg: an MLOps pipeline that turns BraTS multimodal MRI into a registered 2D U-Net."""

from __future__ import annotations

__version__ = "0.1.0"
