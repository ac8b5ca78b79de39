"""Stages by name. A stage says how its samples become batches and which loss trains them; adding one is one file."""

from __future__ import annotations

from ember.training.stages.base import Stage
from ember.training.stages.pt import PRETRAIN
from ember.training.stages.sft import SFT

STAGES: dict[str, Stage] = {s.name: s for s in (PRETRAIN, SFT)}

__all__ = ["STAGES", "Stage"]
