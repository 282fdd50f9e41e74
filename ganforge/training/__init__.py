"""The shared training loop: options, run directories, logs, one step, and the loop itself.

Importing the package loads nothing; `train`, `TrainOptions` and `TrainingError` are imported on
first use, so that the lower layers (snapshots, sampling) never pull the loop in.
"""

import importlib

_EXPORTS = {"TrainOptions": "ganforge.training.options", "TrainingError": "ganforge.errors",
            "train": "ganforge.training.loop"}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_EXPORTS)
