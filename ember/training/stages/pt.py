"""Continued pretraining: raw-text blocks (every token a target once per epoch), causal LM loss."""

from ember.data.recipes import TEXT
from ember.training.losses import causal_lm_loss
from ember.training.stages.base import Stage

PRETRAIN = Stage("pt", TEXT, causal_lm_loss, "continued pretraining on raw text blocks", needs_template=False)
