"""Summarize a compare run directory: judge and human outcome tables, agreement, scores.json, markdown and charts.

A compare run directory holds:
  compare.json                  what was compared (models, judge, template, prompt file)
  prompts.jsonl                 the prompt set, normalized: {id, prompt, category, reference}
  answers_a.jsonl / answers_b   each model's answers, generated once and reused
  judgements.jsonl              the judge's two outputs per pair, parsed verdicts and A's outcome
  human.jsonl                   verdicts from `ember eval annotate`, appended one per click
and this module writes scores.json, items.jsonl, pairwise.md and pairwise_{judge,human}.png beside them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ember.evaluation.charts import outcome_chart
from ember.evaluation.outputs import read_jsonl, write_run
from ember.evaluation.pairwise import OUTCOMES, agreement, outcome_table, rates_line

JUDGEMENTS = "judgements.jsonl"
HUMAN = "human.jsonl"
META = "compare.json"


def latest_by_id(records: list[dict]) -> list[dict]:
    """One record per id, the last one written (a re-annotated item counts once, with its newest verdict)."""
    return list({r["id"]: r for r in records}.values())


def summarize_pairwise(run: Path) -> dict[str, Any]:
    run = Path(run)
    meta = json.loads((run / META).read_text(encoding="utf-8")) if (run / META).is_file() else {}
    judged = read_jsonl(run / JUDGEMENTS) if (run / JUDGEMENTS).is_file() else []
    human = latest_by_id(read_jsonl(run / HUMAN)) if (run / HUMAN).is_file() else []
    scores: dict[str, Any] = {"meta": {"kind": "compare", **meta}}
    tables: dict[str, Any] = {}
    for source, records in (("judge", judged), ("human", human)):
        if not records:
            continue
        table = outcome_table(records)
        tables[source] = table
        overall = table["overall"]
        scores.update({f"{source}/{k}": overall[k] for k in (*OUTCOMES, "n")})
        scores.update({f"{source}/{o}_rate": overall[f"{o}_rate"] for o in OUTCOMES})
    if judged:
        # Outputs without a [[...]] verdict count as ties; say how many, since a weak judge shows up only here.
        scores["judge/unparsed"] = sum(v is None for r in judged for v in r.get("verdicts", []))
        scores["judge/inconsistent"] = sum(not r.get("consistent", True) for r in judged)
    if judged and human:
        agree = agreement(judged, human)
        scores.update({"agreement": agree["agreement"], "agreement/n": agree["n"]})
        if agree["kappa"] is not None:  # absent = undefined (one label everywhere); the report says so
            scores["kappa"] = agree["kappa"]
    scores["categories"] = tables
    human_by_id = {r["id"]: r["outcome"] for r in human}
    items = [{**rec, "human_outcome": human_by_id.get(rec["id"])} for rec in judged] or human
    write_run(run, scores, items)
    write_markdown(run, scores, tables, meta)
    return scores


def judge_label(meta: dict[str, Any]) -> str:
    mode = ", verdict by likelihood" if meta.get("judge_mode") == "likelihood" else ""
    return f"{meta.get('judge', 'judge')}{mode}"


def judge_coverage(scores: dict[str, Any]) -> str:
    """How much of the judge's work counted: a weak judge shows up here, not in the win rates."""
    return (f"without a verdict: {scores['judge/unparsed']} of {2 * scores['judge/n']}; pairs judged differently in "
            f"the two orders: {scores['judge/inconsistent']} (both count as ties).")


def table_markdown(table: dict[str, dict[str, Any]]) -> str:
    lines = ["| category | win | tie | loss | n | win % | tie % | loss % |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in table.items():
        label = f"**{name}**" if name == "overall" else name
        lines.append(f"| {label} | {row['win']} | {row['tie']} | {row['loss']} | {row['n']} | "
                     f"{row['win_rate']:.2f} | {row['tie_rate']:.2f} | {row['loss_rate']:.2f} |")
    return "\n".join(lines)


def write_markdown(run: Path, scores: dict[str, Any], tables: dict[str, Any], meta: dict[str, Any]) -> Path:
    a, b = meta.get("model_a", "model A"), meta.get("model_b", "model B")
    out = [f"# Pairwise comparison: {a} (A) vs {b} (B)", "",
           "Outcomes are from A's side: win = A's answer is better.", ""]
    titles = {"judge": f"LLM judge ({judge_label(meta)}), both orders; inconsistent verdicts count as ties",
              "human": "Human annotation (answers shown anonymised, in random order)"}
    for source, table in tables.items():
        chart = outcome_chart(table, run / f"pairwise_{source}.png", f"{a} vs {b}: {source}")
        out += [f"## {titles[source]}", "", f"**Overall:** {rates_line(table['overall'])} "
                f"(n = {table['overall']['n']})", "", table_markdown(table), "", f"![{source}]({chart.name})", ""]
    if "judge/unparsed" in scores:
        out += [f"Judge outputs {judge_coverage(scores)}", ""]
    if "agreement" in scores:
        out += ["## Judge–human agreement", "",
                f"{scores['agreement']:.2f}% of {scores['agreement/n']} items agree ({kappa_text(scores)}).", ""]
    if not tables:
        out += ["No verdicts yet: run `ember eval compare --judge ...` or `ember eval annotate`.", ""]
    path = run / "pairwise.md"
    path.write_text("\n".join(out), encoding="utf-8")
    return path


def kappa_text(scores: dict[str, Any]) -> str:
    if "kappa" in scores:
        return f"Cohen's κ = {scores['kappa']:.3f}"
    return "Cohen's κ undefined: judge and human each gave one and the same verdict to every item"
