"""ganforge from Python: load a run's generator and sample it; train, evaluate and project as the
commands do, each the same function the command line calls (`import ganforge` reaches these lazily)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ganforge.inference import Generator


def load(run_or_snapshot: str | Path, device: str = "cpu") -> Generator:
    """The EMA generator of a run directory (its latest snapshot) or of a snapshot file, on `device`
    ("cpu", "cuda", "cuda:N" or "auto"), ready to sample:

        g = ganforge.load("runs/00000-cdcgan-mnist")
        images = g.sample(16, seed=7, label=3)   # [16, C, H, W] in [-1, 1]

    A path that holds no snapshot, or a snapshot that cannot be used, raises a GanforgeError whose
    message says why (the line `ganforge generate` prints)."""
    from ganforge.hardware import resolve_device

    return Generator.load(run_or_snapshot, resolve_device(device))


class Run(os.PathLike):
    """A run directory, as `train` returns it; a path (os.PathLike) that `load`, `evaluate` and
    `project` take, with the run's options and whether it reached its --kimg."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, (Run, str, os.PathLike)) and Path(other) == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    @property
    def options(self) -> dict:
        """The run's options as it trains with them (its training_options.json)."""
        return json.loads((self.path / "training_options.json").read_text(encoding="utf-8"))

    @property
    def finished(self) -> bool:
        """Whether the run reached its --kimg; False when it was asked to stop (Ctrl-C, SIGTERM) and
        wrote latest.pt: `train(resume=run)` continues it."""
        rows = (self.path / "stats.jsonl").read_text(encoding="utf-8").splitlines()
        return not rows or json.loads(rows[-1])["kimg"] >= self.options["kimg"]

    def load(self, device: str = "cpu") -> Generator:
        """The run's EMA generator (`ganforge.load(run)`)."""
        return load(self, device)


def train(*, resume: str | os.PathLike | None = None, progress: bool = True, inception_weights: str | None = None,
          **options) -> Run:
    """Train a GAN, or continue one (`resume`: its run directory or a snapshot), as `ganforge train`
    does; returns the run directory.

    The keywords are the fields of TrainOptions (ganforge.training.options), with the same names,
    defaults and checks as the command's options (`data="mnist"` is `--data mnist`; lists such as
    `metrics=["swd"]` may also be given as "swd,fid"; the model's own hyperparameters go in
    `model_opts={"lr": 2e-4}`). An unknown keyword or a value the command would refuse raises an
    OptionError with the command's message. `progress=False` hides the progress bar and tick lines.

    Ctrl-C (or SIGTERM) stops the run after the current step and writes latest.pt, as the command
    does; `train` then returns the run, with `run.finished` False.

        run = ganforge.train(model="cdcgan", data="mnist", kimg=1, outdir="runs")
    """
    from ganforge.training.loop import train as run_training
    from ganforge.training.options import checked_options

    opts = checked_options(options)
    run_dir = run_training(opts, resume=None if resume is None else os.fspath(resume), explicit=set(options),
                           progress=progress, inception_weights=inception_weights)
    return Run(run_dir)

