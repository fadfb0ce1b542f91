"""Models: the 2D U-Net, a pure nn.Module."""
