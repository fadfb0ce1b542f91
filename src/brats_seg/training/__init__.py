"""Training the network: the `train` params, the loop with resumable checkpoints, batches in memory or streamed,
losses, augmentation on the device, and DistributedDataParallel under torchrun."""
