"""Supervised fine-tuning: rendered conversations, loss on the masked assistant spans."""

from ember.data.recipes import CHAT
from ember.training.losses import causal_lm_loss
from ember.training.stages.base import Stage

SFT = Stage("sft", CHAT, causal_lm_loss, "instruction tuning on conversations")
