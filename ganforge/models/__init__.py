"""The GANs of ganforge, one module each, selected by name.

Importing this package costs nothing (no torch): the registry names the module of each model, and
a model's module is imported the first time the model is asked for, so `ganforge --help` answers
at once. A model added elsewhere (a plug-in, a test) joins with `register`.
"""

from __future__ import annotations

import importlib

from ganforge.errors import OptionError

_BUILT_IN = {"cdcgan": "ganforge.models.cdcgan:CDCGAN", "dcgan": "ganforge.models.cdcgan:DCGAN",
             "began": "ganforge.models.began:BEGAN", "pggan": "ganforge.models.pggan:PGGAN",
             "dfgan": "ganforge.models.dfgan:DFGAN"}
_registered: dict[str, type] = {}


def model_names() -> list[str]:
    return sorted({*_BUILT_IN, *_registered})


def model_class(name: str) -> type:
    if name in _registered:
        return _registered[name]
    if name not in _BUILT_IN:
        raise OptionError(f"--model {name}: unknown (choose from {', '.join(model_names())})")
    module, cls = _BUILT_IN[name].split(":")
    return getattr(importlib.import_module(module), cls)


def register(cls: type) -> type:
    """Make a GanModel subclass available by its `name` to every command."""
    _registered[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    _registered.pop(name, None)


def build_model(name: str, config: dict):
    return model_class(name)(config)


_FROM_BASE = {"GanModel", "Phase", "PhaseLoss", "Schedule", "StepContext", "Condition", "parameter_count"}


def __getattr__(attr: str):
    """The base classes, and MODELS (every model class by name), imported on first use."""
    if attr in _FROM_BASE:
        return getattr(importlib.import_module("ganforge.models.base"), attr)
    if attr == "MODELS":
        return {name: model_class(name) for name in model_names()}
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


__all__ = ["GanModel", "Phase", "PhaseLoss", "Schedule", "StepContext", "Condition", "MODELS", "build_model",
           "model_class", "model_names", "parameter_count", "register", "unregister"]
