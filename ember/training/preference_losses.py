"""Preference losses: one small function per objective, chosen by a typed map (`OBJECTIVES`, `DPO_LOSSES`).

Each takes the summed answer log-probs of a batch (and the answers' token counts, and the reference's log-probs
where the objective has one) and returns `Terms`: the per-example losses, an optional token-level term (ORPO's
NLL), the implicit rewards and what is logged under TRL's metric names. The trainer (ember.training.preference)
divides the per-example sum by the examples of the whole accumulation step and the token term by its chosen-answer
tokens, so batch 8 × accumulation 1 equals batch 2 × accumulation 4.

| stage | loss per example (Δ = chosen − rejected) | reward |
|---|---|---|
| dpo, sigmoid | −(1−ε)·log σ(β·Δ) − ε·log σ(−β·Δ), Δ of log-ratios log π/π_ref | β·log π/π_ref |
| dpo, ipo | (Δ of length-averaged log-ratios − 1/(2β))² | β·log π/π_ref |
| orpo | NLL of the chosen answer (per token) − β·log σ(log odds(chosen) − log odds(rejected)), on mean log-probs | β·mean log π |
| simpo | −(1−ε)·log σ(β·Δ − γ) − ε·log σ(γ − β·Δ), Δ of mean log-probs | β·mean log π |
| kto | desirable: w_d·(1 − σ(β·(log π/π_ref − z))); undesirable: w_u·(1 − σ(β·(z − log π/π_ref))); z = max(0, KL estimate) | β·log π/π_ref |
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Optional

import torch
import torch.nn.functional as F

from ember.config.schema import PreferenceConfig


@dataclass
class PairLogps:
    """Per pair: summed log-probs of the answer tokens (policy, and reference where used) and the token counts."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor
    ref_chosen: Optional[torch.Tensor] = None
    ref_rejected: Optional[torch.Tensor] = None


@dataclass
class KTOLogps:
    """Per example: the answer's summed log-probs, the mismatched answer's (for the KL baseline), both models."""

    policy: torch.Tensor
    ref: torch.Tensor
    label: torch.Tensor  # bool: desirable
    kl: torch.Tensor  # the batch's KL baseline z (detached, clamped at 0; gathered over ranks)


@dataclass
class Terms:
    per_example: torch.Tensor  # summed and divided by the examples of the accumulation step
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    chosen_logps: torch.Tensor  # what is logged as logps/chosen (sums, or means for orpo/simpo)
    rejected_logps: torch.Tensor
    token_sum: Optional[torch.Tensor] = None  # summed and divided by the chosen-answer tokens of the step
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # more metrics (their mean is logged)


def _conservative(logits: torch.Tensor, smoothing: float) -> torch.Tensor:
    """−log σ(x), and with label smoothing ε the expectation over a label flipped with probability ε."""
    return -(1 - smoothing) * F.logsigmoid(logits) - smoothing * F.logsigmoid(-logits)


def _ratios(lp: PairLogps) -> tuple[torch.Tensor, torch.Tensor]:
    assert lp.ref_chosen is not None and lp.ref_rejected is not None, "dpo needs reference log-probs"
    return lp.chosen - lp.ref_chosen, lp.rejected - lp.ref_rejected


def dpo_sigmoid(lp: PairLogps, opt: PreferenceConfig) -> Terms:
    chosen, rejected = _ratios(lp)
    losses = _conservative(opt.beta * (chosen - rejected), opt.label_smoothing)
    return Terms(losses, opt.beta * chosen.detach(), opt.beta * rejected.detach(), lp.chosen.detach(),
                 lp.rejected.detach())


def dpo_ipo(lp: PairLogps, opt: PreferenceConfig) -> Terms:
    chosen, rejected = _ratios(lp)
    # Averaged over each answer's tokens, so beta means the same for short and long answers (as TRL does).
    delta = chosen / lp.chosen_tokens.clamp(min=1) - rejected / lp.rejected_tokens.clamp(min=1)
    losses = (delta - 1 / (2 * opt.beta)) ** 2
    return Terms(losses, opt.beta * chosen.detach(), opt.beta * rejected.detach(), lp.chosen.detach(),
                 lp.rejected.detach())


DPO_LOSSES: dict[str, Callable[[PairLogps, PreferenceConfig], Terms]] = {"sigmoid": dpo_sigmoid, "ipo": dpo_ipo}


def dpo(lp: PairLogps, opt: PreferenceConfig) -> Terms:
    return DPO_LOSSES[opt.loss_type](lp, opt)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − exp(x)) for x < 0, without cancellation on either side of −log 2."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def _means(lp: PairLogps) -> tuple[torch.Tensor, torch.Tensor]:
    return lp.chosen / lp.chosen_tokens.clamp(min=1), lp.rejected / lp.rejected_tokens.clamp(min=1)


def orpo(lp: PairLogps, opt: PreferenceConfig) -> Terms:
    chosen, rejected = _means(lp)
    log_odds = (chosen - rejected) - (_log1mexp(chosen) - _log1mexp(rejected))
    ratio = F.logsigmoid(log_odds)
    return Terms(-opt.beta * ratio, opt.beta * chosen.detach(), opt.beta * rejected.detach(), chosen.detach(),
                 rejected.detach(), token_sum=-lp.chosen.sum(),
                 extra={"log_odds_ratio": ratio.detach(), "log_odds_chosen": log_odds.detach()})


def simpo(lp: PairLogps, opt: PreferenceConfig) -> Terms:
    chosen, rejected = _means(lp)
    losses = _conservative(opt.beta * (chosen - rejected) - opt.simpo_gamma, opt.label_smoothing)
    return Terms(losses, opt.beta * chosen.detach(), opt.beta * rejected.detach(), chosen.detach(), rejected.detach())


def kto(lp: KTOLogps, opt: PreferenceConfig) -> Terms:
    ratio = lp.policy - lp.ref
    desirable = opt.kto_desirable_weight * (1 - torch.sigmoid(opt.beta * (ratio - lp.kl)))
    undesirable = opt.kto_undesirable_weight * (1 - torch.sigmoid(opt.beta * (lp.kl - ratio)))
    losses = torch.where(lp.label, desirable, undesirable)
    rewards = opt.beta * ratio.detach()
    return Terms(losses, rewards[lp.label], rewards[~lp.label], lp.policy.detach()[lp.label],
                 lp.policy.detach()[~lp.label], extra={"kl": lp.kl.detach().reshape(1)})


@dataclass(frozen=True)
class Objective:
    """What a preference stage trains: its loss, whether it compares with a reference model, its sample kind."""

    name: str
    kind: Literal["pairs", "kto"]
    loss: Callable[..., Terms]
    needs_reference: bool


OBJECTIVES: dict[str, Objective] = {
    "dpo": Objective("dpo", "pairs", dpo, needs_reference=True),
    "orpo": Objective("orpo", "pairs", orpo, needs_reference=False),
    "simpo": Objective("simpo", "pairs", simpo, needs_reference=False),
    "kto": Objective("kto", "kto", kto, needs_reference=True),
}
