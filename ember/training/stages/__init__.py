"""Stages by name. A stage says how its samples become batches and which loss trains them; adding one is one file."""

from __future__ import annotations

from ember.training.stages.base import Stage
from ember.training.stages.preference import DPO, KTO_STAGE, ORPO, SIMPO
from ember.training.stages.pt import PRETRAIN
from ember.training.stages.sft import SFT

STAGES: dict[str, Stage] = {s.name: s for s in (PRETRAIN, SFT, DPO, ORPO, SIMPO, KTO_STAGE)}

__all__ = ["STAGES", "Stage"]
