"""The GANs of ganforge, one module each, selected by name."""

from __future__ import annotations

from ganforge.models.base import GanModel, Phase, Schedule, StepContext, parameter_count
from ganforge.models.began import BEGAN
from ganforge.models.cdcgan import CDCGAN, DCGAN
from ganforge.models.dfgan import DFGAN
from ganforge.models.pggan import PGGAN

MODELS: dict[str, type[GanModel]] = {m.name: m for m in (CDCGAN, DCGAN, BEGAN, PGGAN, DFGAN)}
CONDITIONAL = {"cdcgan"}  # models that need labelled data


def build_model(name: str, config: dict) -> GanModel:
    if name not in MODELS:
        raise ValueError(f"--model {name}: unknown (choose from {', '.join(MODELS)})")
    return MODELS[name](config)


__all__ = ["GanModel", "Phase", "Schedule", "StepContext", "MODELS", "CONDITIONAL", "build_model", "parameter_count"]
