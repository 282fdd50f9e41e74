"""Progress bars for every step that can take more than a few seconds (decoding, caption encoding,
feature extraction, sampling), on stderr so that printed results stay clean.

Bars show on a terminal and in a Jupyter notebook (tqdm.auto: the notebook's own widget bar where
ipywidgets, the [notebook] extra, is installed; else tqdm's text bar); set GANFORGE_PROGRESS=1 to
show them in logs too, 0 to hide them.
"""

from __future__ import annotations

import os
import sys


def enabled() -> bool:
    setting = os.environ.get("GANFORGE_PROGRESS")
    return setting == "1" if setting in ("0", "1") else sys.stderr.isatty() or in_notebook()


def in_notebook() -> bool:
    """Whether this is a Jupyter kernel (its stderr is no terminal, yet a bar there is drawn, not
    logged line by line); the test tqdm.auto makes."""
    return "ipykernel.zmqshell" in sys.modules


def bar(total: int, desc: str, unit: str = "img", initial: int = 0, show: bool = True):
    """A tqdm bar with count, rate and ETA (a no-op object when progress is hidden or not `show`); in
    a notebook, the notebook's bar."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True,
                leave=False, mininterval=0.5, file=sys.stderr, disable=not (show and enabled()))


def bar_over(items, desc: str, unit: str = "batch"):
    """Iterate over a sized collection with a bar."""
    with bar(len(items), desc, unit=unit) as progress:
        for item in items:
            yield item
            progress.update(1)
