"""Preference stages: dpo, orpo, simpo (a prompt with a chosen and a rejected answer) and kto (one answer labelled
desirable or not). They share the renderer and the data path with sft; what differs is here: the recipe
(ember.data.preference_encode), the batches (two sequences per sample), the loss (ember.training.preference_losses)
and the trainer that computes the reference's log-probs (ember.training.preference)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ember.config.schema import EmberConfig
from ember.data.preference_collate import KTODataset, PairDataset, PreferenceCollator
from ember.data.preference_encode import KTO, PAIRS
from ember.training.preference_losses import OBJECTIVES, Objective
from ember.training.stages.base import Stage


@dataclass(frozen=True)
class PreferenceStage(Stage):
    objective: Objective = OBJECTIVES["dpo"]

    def dataset(self, samples) -> torch.utils.data.Dataset:
        return KTODataset(samples) if self.objective.kind == "kto" else PairDataset(samples)

    def packs_by_default(self) -> bool:
        return False  # a reference model (or copy) attends as loaded; packed rows stay an explicit data.packing: true

    def collator(self, tokenizer, packing: bool, flash: bool = False) -> Any:
        multiple = 8 if torch.cuda.is_available() and not packing else 1
        return PreferenceCollator(tokenizer.pad_token_id, packing, multiple, flash_kwargs=packing and flash)

    def trainer(self, cfg: EmberConfig, **kwargs) -> Any:
        from ember.training.preference import PreferenceTrainer, disable_dropout, reference_copy

        options = cfg.preference
        model = kwargs["model"]
        if options.disable_dropout:
            disable_dropout(model)
        ref_model = None
        lora = cfg.method.type in ("lora", "qlora")
        if self.objective.needs_reference and not lora and not options.precompute_ref:
            ref_model = reference_copy(model)  # full / freeze: the weights as they are before the first step
        return PreferenceTrainer(objective=self.objective, options=options, ref_model=ref_model, **kwargs)


def _stage(name: str, description: str) -> PreferenceStage:
    objective = OBJECTIVES[name]
    recipe = KTO if objective.kind == "kto" else PAIRS
    return PreferenceStage(name, recipe, objective.loss, description, objective=objective)


DPO = _stage("dpo", "direct preference optimisation on chosen/rejected pairs against a reference model")
ORPO = _stage("orpo", "odds-ratio preference optimisation: SFT on the chosen answer plus an odds-ratio term, no reference")
SIMPO = _stage("simpo", "simple preference optimisation: length-averaged log-probs with a target margin, no reference")
KTO_STAGE = _stage("kto", "Kahneman-Tversky optimisation on answers labelled desirable or undesirable")
