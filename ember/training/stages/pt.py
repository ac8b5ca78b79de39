"""Continued pretraining: raw-text blocks (every token a target once per epoch), causal LM loss."""

from ember.training.losses import causal_lm_loss
from ember.training.stages.base import Stage

PRETRAIN = Stage("pt", causal_lm_loss, "continued pretraining on raw text blocks")
