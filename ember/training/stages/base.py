from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Stage:
    name: str
    loss: Callable[..., torch.Tensor]
    description: str
