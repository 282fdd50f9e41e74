"""Where and how fast the networks run: the device, the arithmetic (tf32, bf16/fp16 autocast and
loss scaling), the memory layout and compilation. Training runs and bench set up through here
alone, so a timed step is the step a run takes."""

from __future__ import annotations

import contextlib
import warnings

import torch

from ganforge.errors import TrainingError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise TrainingError(f"--device {name}: not a device (use auto, cpu, cuda or cuda:N)") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"--device {name}: CUDA is not available on this machine")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise TrainingError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s)")
    if device.type not in ("cpu", "cuda", "mps", "meta"):
        raise TrainingError(f"--device {name}: not supported (use auto, cpu, cuda or cuda:N)")
    return device


def autocast_for(precision: str, device: torch.device):
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device.type, dtype=dtype)
    return contextlib.nullcontext()


def make_scalers(precision: str, device: torch.device) -> dict[str, torch.amp.GradScaler]:
    """One loss scaler per network (fp16 only): G's and D's overflows are their own, and each scale
    grows on its own network's steps."""
    return {net: torch.amp.GradScaler(device.type, enabled=precision == "fp16") for net in ("G", "D")}


def check_precision(model, precision: str) -> None:
    """fp16 is refused where a gradient penalty differentiates D twice: the gradients of gradients of
    an fp16 graph underflow unless every inner gradient is scaled and unscaled by hand; bf16 has
    fp32's range, needs no loss scaling and is as fast on GPUs that have fp16."""
    if precision == "fp16" and model.double_backward:
        raise TrainingError(f"--precision fp16: {model.name}'s gradient penalty differentiates "
                            f"{' and '.join(model.double_backward)} twice, which fp16 does not survive; "
                            "use --precision bf16 (or tf32/fp32)")


def compile_networks(model) -> list[str]:
    """torch.compile the forward of G and D, keeping the modules (and their snapshot keys) as they are.

    A network that a gradient penalty differentiates twice (model.double_backward) stays eager:
    compiled graphs do not support double backward. A network whose forward fails to compile
    falls back to eager on its first call, with a warning.
    """
    notes = []
    for name in ("G", "D"):
        if name in model.double_backward:
            notes.append(f"{name} stays eager: its gradient penalty needs double backward, which compile does not support")
            continue
        net = getattr(model, name)
        eager, compiled = net.forward, torch.compile(net.forward)

        def forward(*args, _net=net, _eager=eager, _compiled=compiled, _name=name, **kwargs):
            try:
                return _compiled(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - any compiler failure: run eagerly from now on
                warnings.warn(f"torch.compile failed for {_name}; running it eagerly ({type(e).__name__}: {e})",
                              stacklevel=2)
                _net.forward = _eager
                return _eager(*args, **kwargs)

        net.forward = forward
        notes.append(f"{name} compiled")
    return notes


def prepare_networks(model, precision: str, channels_last: bool, compile: bool) -> tuple:
    """The model set up for speed as asked: precision checked, tf32 switched on, NHWC layout,
    compiled forwards. Returns (model, notes for the log)."""
    check_precision(model, precision)
    if precision == "tf32":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    notes = []
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        notes += compile_networks(model)
    return model, notes
