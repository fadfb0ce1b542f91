"""The networks: a 2D U-Net (unet) and a residual U-Net (resunet), made from a typed
:class:`~brats_seg.models.config.ModelConfig` by :func:`brats_seg.models.factory.build`, the one place training and
inference make a network. A new architecture is a module here, an entry in ``factory.ARCHITECTURES`` and its name
in ``config.Architecture``. Importing the package imports no torch (config.py is torch-free)."""
