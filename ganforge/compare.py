"""`ganforge compare`: the latest figures of runs (or of `evaluate --out` files) side by side, each
metric's column marked where the figures were measured under different protocols.

Every figure carries the protocol it was measured under (ganforge.metrics.evaluate.Evaluator.protocol:
images a side, the real data's identity and split, resolution and resize, the feature network, the noise truncation,
seeds, the ganforge version): two FIDs on different n or splits are not the same measure, and the
table says which field differs rather than letting the numbers pass for comparable.
"""

from __future__ import annotations

import json
from pathlib import Path

from ganforge.errors import OptionError
from ganforge.metrics import registered
from ganforge.metrics.protocol import differences, shown
from ganforge.training.plots import own_files, read_jsonl

PAPER = "paper"  # the row of numbers typed in with --paper


def latest_results(source: str | Path) -> dict[str, dict]:
    """{metric: its latest figures} of a run (the last row of each metric-<name>.jsonl) or of a JSON
    file written by `ganforge evaluate --out`."""
    path = Path(source)
    if path.is_dir():
        found = {p.stem[len("metric-"):]: read_jsonl(p) for p in own_files(path, "metric-*.jsonl")}
        results = {name: rows[-1] for name, rows in found.items() if rows}
        if not results:
            raise OptionError(f"{path}: no metric results in this folder (a run's metric-<name>.jsonl)")
        return results
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise OptionError(f"{path}: not a run folder nor a JSON file of `ganforge evaluate --out` ({e})") from e
    if not isinstance(results, dict) or not all(isinstance(r, dict) for r in results.values()):
        raise OptionError(f"{path}: not a JSON file of `ganforge evaluate --out` ({{metric: figures}})")
    return results


def headline_key(name: str) -> str:
    """The key of the metric's one number (its own name for a metric no longer registered)."""
    declared = registered().get(name)
    return declared.headline if declared else name


def comparison(sources: list[str], paper: dict[str, float] | None = None, paper_protocol: dict | None = None
               ) -> list[str]:
    """The lines `ganforge compare` prints: the table of latest figures, then what differs in each
    marked column."""
    table = {source: latest_results(source) for source in sources}
    if paper:
        table[PAPER] = {name: {headline_key(name): value, "protocol": paper_protocol or {}} for name, value in paper.items()}
    metrics = list(dict.fromkeys(name for results in table.values() for name in results))
    notes, marked = [], set()
    for name in metrics:
        measured = {label: results[name] for label, results in table.items() if name in results}
        unrecorded = [label for label, figures in measured.items() if not isinstance(figures.get("protocol"), dict)]
        differing = differences({label: figures["protocol"] for label, figures in measured.items()
                                          if label not in unrecorded})
        if unrecorded and len(measured) > 1:
            notes.append(f"{name}: no protocol recorded in {', '.join(unrecorded)} (measured before ganforge "
                         "recorded one): the figures may not compare")
        for field, values in differing.items():
            notes.append(f"{name}: {field} differs: " + ", ".join(f"{shown(v)} ({label})" for label, v in values.items()))
        if differing or (unrecorded and len(measured) > 1):
            marked.add(name)
    rows = [("", *(f"{name} !" if name in marked else name for name in metrics))]
    for label, results in table.items():
        values = [_figure(name, results[name]) if name in results else "-" for name in metrics]
        rows.append((label, *values))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    if marked:
        lines += ["", "! measured under different protocols:", *(f"  {note}" for note in notes)]
    if paper and not paper_protocol:
        lines.append("note: the paper's protocol is not given: --paper-n N states its number of generated images")
    return lines


def _figure(name: str, figures: dict) -> str:
    value = figures.get(headline_key(name))
    return f"{value:.4g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "?"

