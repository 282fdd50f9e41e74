"""The shared training loop and its snapshots."""

from ganforge.training.loop import TrainOptions, TrainingError, train

__all__ = ["TrainOptions", "TrainingError", "train"]
