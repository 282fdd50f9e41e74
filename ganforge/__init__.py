"""ganforge: train, sample and evaluate GANs on your own images."""

__version__ = "0.1.0"
