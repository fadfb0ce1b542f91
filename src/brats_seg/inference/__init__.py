"""Applying a model: the model file (load, save, device), the network's forward passes with test-time mirroring,
post-processing, and the one predict step from probabilities to a case's masks on its own grid."""
