"""Comparing the protocols figures were measured under (the "protocol" of each metric result, made
by ganforge.metrics.evaluate.Evaluator.protocol): `compare` marks a column by them, `plot` draws a
series of its own for each protocol in one run's file."""

from __future__ import annotations

import json


def differences(protocols: dict[str, dict]) -> dict[str, dict[str, object]]:
    """{field: {source: value}} of every protocol field whose value is not the same in all sources
    (a field a source does not state counts only where it does)."""
    fields = list(dict.fromkeys(f for protocol in protocols.values() for f in protocol))
    differing = {}
    for field in fields:
        stated = {label: protocol[field] for label, protocol in protocols.items() if field in protocol}
        if len({json.dumps(value) for value in stated.values()}) > 1:
            differing[field] = stated
    return differing


def shown(value) -> str:
    return "none" if value is None else str(value)
