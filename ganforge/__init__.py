"""ganforge: train, sample and evaluate GANs on your own images.

From Python (each name is imported on first use, so `import ganforge` stays light):

    import ganforge
    g = ganforge.load("runs/00000-cdcgan-mnist")   # a run directory or a snapshot file
    images = g.sample(16, seed=7, label=3)          # float [16, C, H, W] in [-1, 1]
    run = ganforge.train(model="cdcgan", data="mnist", kimg=1, outdir="runs")   # `ganforge train`'s options
    ganforge.interpolate(run, "walk.gif", seeds=[1, 7, 42])   # likewise evaluate, project, export, dataset

Mistakes the user can fix (a wrong label, a path that is not a run) raise `ganforge.GanforgeError`
with the one-line message the command line prints.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ganforge.version import __version__

# Public name -> the module that defines it, imported when the name is first used.
_EXPORTS = {
    "load": "ganforge.api",
    "train": "ganforge.api",
    "Run": "ganforge.api",
    "evaluate": "ganforge.api",
    "project": "ganforge.api",
    "interpolate": "ganforge.api",
    "export": "ganforge.api",
    "dataset": "ganforge.api",
    "Projection": "ganforge.explore",
    "Generator": "ganforge.inference",
    "GanforgeError": "ganforge.errors",
    "OptionError": "ganforge.errors",
}

if TYPE_CHECKING:  # for type checkers and editors only: at run time the names come from __getattr__
    from ganforge.api import Run, dataset, evaluate, export, interpolate, load, project, train
    from ganforge.errors import GanforgeError, OptionError
    from ganforge.explore import Projection
    from ganforge.inference import Generator


def __getattr__(name: str):
    """The public names, each imported from its module when first used."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # found once, then a plain attribute
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = ["__version__", "load", "train", "Run", "evaluate", "project", "interpolate", "export", "dataset",
           "Projection", "Generator", "GanforgeError", "OptionError"]
