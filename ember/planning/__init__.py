"""What a training run needs in memory, predicted from the model's config alone (`ember plan`)."""

from ember.planning.memory import Target, ZeRO
from ember.planning.plan import Change, Plan, machine_target, plan
from ember.planning.report import render, summary_line, to_json

__all__ = ["Change", "Plan", "Target", "ZeRO", "machine_target", "plan", "render", "summary_line", "to_json"]
