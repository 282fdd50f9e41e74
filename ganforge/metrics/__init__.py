"""Measuring what a GAN makes: the metric contract and the registry of metrics.

A `Metric` declares everything shared code may ask of it, so that the evaluator, the training loop,
the command line, `plot`, the studio and `compare` never name one. The evaluator measures each side
(generated images, and the reals where a metric asks for them) a block of images at a time, on every
process of a run; of each block it keeps what the metrics declare (Inception features or logits, and
each metric's own per-block summary); then each metric makes its figures from the kept tallies.

The built-in metrics are declared in ganforge.metrics.builtin, one `@metric` block each, beside their
maths in this package. A metric of one's own is one `@metric` block in a module ganforge imports:
an installed package's entry point in the group `ganforge.metrics`, or a module on the Python path
named in GANFORGE_PLUGINS (the README, "Adding a metric").

Importing this package costs nothing (no torch): `ganforge evaluate --help` lists the metrics at once.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Callable

from ganforge.errors import OptionError

PLUGIN_GROUP = "ganforge.metrics"  # the entry point group of installed packages that declare metrics
PLUGIN_ENV = "GANFORGE_PLUGINS"    # comma-separated modules to import: metrics in files of one's own


@dataclass(frozen=True)
class Metric:
    """What shared code may ask of a metric. The callables get the Evaluator (ganforge.metrics.evaluate):
    its real data (`real`), `seed`, `device`, `captions`, `cached(...)` and `prepared(...)`."""

    name: str                        # what --metrics takes, and the name of the run's metric-<name>.jsonl
    result: Callable                 # (evaluator, generated Tally, real Tally or None) -> {key: number}
    headline: str                    # the key of its one number: best.pt, `runs`, `compare`, TensorBoard
    lower_is_better: bool
    keeps: tuple[str, ...] = ()      # of the Inception network, per block: "moments" (the running mean and
                                     # covariance of the features), "features" (each image's), "logits"
    summary: Callable | None = None  # (evaluator, Block) -> its own summary of one block (tensors), or None
    real_side: bool = False          # the reals are measured too (result gets their tally, else None)
    paired_reals: bool = False       # each generated block is summarised beside the real block of its number
    prepare: Callable | None = None  # (evaluator) -> what it makes once from the reals before any block
    check: Callable | None = None    # (evaluator) -> None: refuses a setting before any image is measured
    floor: Callable | None = None    # (evaluator) -> its figures of real images against real ones
    default: bool = False            # in the --metrics default set
    needs: str | None = None         # the conditioning its samples need: GanModel.conditioning's CLASS or TEXT
    min_images: int = 2              # a side with fewer has no defined value (a spread, a pair, a neighbour)

    @property
    def uses_inception(self) -> bool:
        return bool(self.keeps)


METRICS: dict[str, Metric] = {}  # by name, in the order declared: the built-in ones, then plug-ins'


def metric(name: str, headline: str, lower_is_better: bool, **contract) -> Callable:
    """Declare the function below as the result of metric `name`, with the rest of its contract
    (Metric's fields: keeps, summary, real_side, paired_reals, prepare, default, needs, ...)."""
    def declare(result: Callable) -> Callable:
        register(Metric(name, result, headline, lower_is_better, **contract))
        return result

    return declare


def register(declared: Metric) -> Metric:
    METRICS[declared.name] = declared
    return declared


def unregister(name: str) -> None:
    METRICS.pop(name, None)


_plugins_loaded = False


def registered() -> dict[str, Metric]:
    """Every metric by name, the plug-ins' loaded on first use."""
    global _plugins_loaded
    if not _plugins_loaded:
        _plugins_loaded = True
        load_plugins()
    return METRICS


def load_plugins() -> None:
    """Import the modules that declare metrics outside ganforge: every entry point of the group
    `ganforge.metrics` (a package installed with pip), then each module GANFORGE_PLUGINS names (a
    file on the Python path). A plug-in that cannot be imported stops the command, naming it."""
    from importlib.metadata import entry_points

    for point in entry_points(group=PLUGIN_GROUP):
        try:
            point.load()
        except Exception as e:  # noqa: BLE001 - whatever a plug-in raises, the user must see which one
            raise OptionError(f"metric plug-in {point.name} ({point.value}, entry point group {PLUGIN_GROUP}) "
                              f"failed to load: {e}") from e
    for module in filter(None, (m.strip() for m in os.environ.get(PLUGIN_ENV, "").split(","))):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            raise OptionError(f"{PLUGIN_ENV}: no module {module} on the Python path (PYTHONPATH)") from e


def parse_metrics(text: str | list[str] | None) -> list[str]:
    names = [m.strip().lower() for m in (text.split(",") if isinstance(text, str) else (text or [])) if m.strip()]
    known = registered()
    unknown = [m for m in names if m not in known]
    if unknown:
        raise OptionError(f"--metrics {','.join(unknown)}: unknown (choose from {', '.join(known)})")
    return names


def default_metrics() -> list[str]:
    return [name for name, m in registered().items() if m.default]


def suggested_metrics(conditioning: str) -> list[str]:
    """What to measure a finished run with first, without the [metrics] extra: the default metrics
    that use no Inception network, and those made for the run's conditioning."""
    return [name for name, m in registered().items()
            if not m.uses_inception and (m.default and m.needs is None or m.needs == conditioning)]


def inception_metrics(names: list[str] | None = None) -> list[str]:
    """Those of `names` (default: every metric) that use the Inception network (the [metrics] extra)."""
    known = registered()
    return [name for name in (known if names is None else names) if known[name].uses_inception]


def metrics_help() -> str:
    """--metrics' help: every metric, with what it needs."""
    def described(m: Metric) -> str:
        needs = [f"{m.needs}-conditional runs"] if m.needs else []
        return m.name + (f" ({', '.join(needs)})" if needs else "")

    return "Comma-separated: " + ", ".join(described(m) for m in registered().values())


from ganforge.metrics import builtin  # noqa: E402,F401 - the built-in metrics declare themselves
