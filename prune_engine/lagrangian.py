"""The Lagrangian that pulls the expected size of the L0 masks to the (ramped) target.

`l1 * gap + l2 * gap^2` summed over the target's constraints, the multipliers trained by gradient
ascent: a persistent gap makes them grow until the gates give in, which a fixed penalty weight
cannot guarantee. Each gap is relative to the full size (targets.py), so one set of multiplier
learning rates works for MiniLM and BGE-M3 alike.
"""

from __future__ import annotations

import torch
from torch import nn

# The linear multiplier integrates only while the gap is within this share of the full size, at
# this fraction of the quadratic one's learning rate, and leaks (AdamW decay) at this rate: it loses
# lr * INTEGRAL_RATE * INTEGRAL_LEAK of its value per step (5% at the default lr), which bounds it
# near 1 and lets it fade in about 20 steps once the gap closes (see Lagrangian).
INTEGRATION_BAND = 0.05
INTEGRAL_RATE = 0.1
INTEGRAL_LEAK = 1.0


class Lagrangian(nn.Module):
    """`l1 * gap + l2 * gap^2` summed over constraints, the multipliers trained by gradient ascent
    (`optimizer`): a persistent gap makes them grow until the gates give in, which a fixed penalty
    weight cannot guarantee.

    Read as a controller, the quadratic term is the proportional part (its push follows the gap and
    reverses with it) and `l1` the integral part that removes the offset the task loss leaves. The
    gates start near 1 and lag the ramped target by tens of steps; integrating those large gaps wound
    `l1` up and drove MiniLM's expected size to 2.2M against a 5.3M target. So `l1` integrates only
    inside INTEGRATION_BAND, at INTEGRAL_RATE of the rate, and leaks (a leaky integrator): without
    the leak it still wound up inside the band and left the size 1.4% under target after 300 mask
    steps; with it, 0.0% after 150 and 0.8% after 300 (benchmarks/RESULTS.md has the runs).
    """

    def __init__(self, constraint_names: list[str]):
        super().__init__()
        self.constraint_names = list(constraint_names)
        self.lambda_1 = nn.Parameter(torch.zeros(len(constraint_names)))
        self.lambda_2 = nn.Parameter(torch.zeros(len(constraint_names)))

    def forward(self, gaps: torch.Tensor) -> torch.Tensor:
        # Same value either way; outside the band lambda_1 gets no gradient (anti-windup).
        integrating = (gaps.detach().abs() <= INTEGRATION_BAND).to(gaps.dtype)
        lambda_1 = self.lambda_1 * integrating + self.lambda_1.detach() * (1 - integrating)
        return (lambda_1 * gaps + self.lambda_2 * gaps.pow(2)).sum()

    def optimizer(self, lr: float) -> torch.optim.Optimizer:
        """Gradient ascent on the multipliers, `l1` at INTEGRAL_RATE of `lr` and leaking."""
        groups = [{"params": [self.lambda_2], "lr": lr, "weight_decay": 0.0},
                  {"params": [self.lambda_1], "lr": lr * INTEGRAL_RATE, "weight_decay": INTEGRAL_LEAK}]
        return torch.optim.AdamW(groups, maximize=True)

    def multipliers(self) -> dict[str, float]:
        out = {}
        for i, name in enumerate(self.constraint_names):
            out[f"lambda_1/{name}"] = float(self.lambda_1[i].detach())
            out[f"lambda_2/{name}"] = float(self.lambda_2[i].detach())
        return out
