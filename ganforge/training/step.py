"""One training step, the same in a run and in bench: each phase of the model updates its network
with the other frozen, then the EMA of G follows."""

from __future__ import annotations

import torch

from ganforge.hardware import autocast_for
from ganforge.models.base import GanModel, StepContext
from ganforge.training.distributed import average_gradients


def training_step(model: GanModel, optimizers: dict, scalers: dict, reals: torch.Tensor,
                  labels: torch.Tensor, ctx: StepContext, precision: str, device: torch.device,
                  world_size: int = 1) -> None:
    """One step: each phase of the model updates its network with the other frozen (the NNC sample's lesson)."""
    condition = model.training_condition(labels, ctx)
    for phase in model.phases():
        for net in ("G", "D"):
            getattr(model, net).requires_grad_(net == phase.network)
        optimizer = optimizers[phase.optimizer]
        optimizer.zero_grad(set_to_none=True)
        with autocast_for(precision, device):
            loss = model.loss(phase.name, reals, condition, ctx)
        scaler = scalers[phase.network]
        scaler.scale(loss).backward()
        average_gradients(getattr(model, phase.network), world_size)
        scaler.step(optimizer)
        scaler.update()
    model.after_step(ctx)


@torch.no_grad()
def update_ema(ema: torch.nn.Module, net: torch.nn.Module, beta: float) -> None:
    ema_params = list(ema.parameters())
    torch._foreach_lerp_(ema_params, [p.detach() for p in net.parameters()], 1.0 - beta)
    for b_ema, b in zip(ema.buffers(), net.buffers()):
        b_ema.copy_(b)


def ema_beta(opts, batch: int, images_seen: int, fixed: float | None = None) -> float:
    """EMA decay per step: from a half-life of --ema-kimg, or a model's fixed beta (PGGAN's 0.999).

    The ramp-up bounds the half-life by a fraction of the images seen, so early samples (and short
    runs) are not dominated by the random initial weights; long runs reach the plain decay.
    """
    beta = fixed if fixed is not None else 0.5 ** (batch / (opts.ema_kimg * 1000))
    if opts.ema_rampup is not None:
        beta = min(beta, 0.5 ** (batch / max(images_seen * opts.ema_rampup, 1e-8)))
    return beta


