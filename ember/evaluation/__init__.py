"""Evaluation: multiple-choice benchmarks, GSM8K, generation metrics, pairwise judging, human annotation, reports.

Every command writes `scores.json` + `items.jsonl` to its run directory (see `outputs`); generation is injected as a
`GenerateFn` (see `generate`) so that scoring logic is testable without a model.
"""
