"""Loss functions shared by the GANs, as plain functions of discriminator outputs.

Kept free of any model so each can be checked against hand-computed values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ganforge.conv import no_weight_gradients


def bce_with_logits(logits: torch.Tensor, target: float) -> torch.Tensor:
    """Mean binary cross-entropy of sigmoid(logits) against a constant target (1 real, 0 fake).

    Written with softplus, the numerically stable form: -[t log s(x) + (1-t) log(1 - s(x))]
    = t softplus(-x) + (1-t) softplus(x).
    """
    logits = logits.float()
    return (target * F.softplus(-logits) + (1.0 - target) * F.softplus(logits)).mean()


def gradient_penalty(critic, points: torch.Tensor, target: float = 1.0) -> torch.Tensor:
    """WGAN-GP term E[(||grad_x critic(x)|| - target)^2] / target^2 at `points` (PGGAN's target-scaled form).

    The graph is kept (create_graph) so the penalty itself trains the critic; the critic's weights
    get their gradient from that second backward only (hence no_weight_gradients in the first).
    """
    points = points.detach().requires_grad_(True)
    scores = critic(points)
    with no_weight_gradients():
        (grad,) = torch.autograd.grad(scores.float().sum(), points, create_graph=True)
    norms = grad.float().flatten(1).norm(dim=1)
    return ((norms - target) ** 2).mean() / target**2
