"""ganforge from Python: load a run's generator and sample it; train, evaluate and project as the
commands do, each the same function the command line calls (`import ganforge` reaches these lazily)."""

from __future__ import annotations

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
