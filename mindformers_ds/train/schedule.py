"""Learning-rate schedules, evaluated on the host and fed to the step as a tensor (no retracing)."""
from __future__ import annotations

import math


def learning_rate(step: int, base_lr: float, kind: str, warmup_steps: int, total_steps: int,
                  min_lr_ratio: float) -> float:
    """LR for the `step`-th update (0-based): linear warmup to base_lr over `warmup_steps`
    updates, then cosine or linear decay to base_lr * min_lr_ratio at `total_steps`."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if kind == "constant":
        return base_lr
    min_lr = base_lr * min_lr_ratio
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / span))
    if kind == "cosine":
        return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return base_lr - (base_lr - min_lr) * progress
