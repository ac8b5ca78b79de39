"""`ember eval report RUN_DIRS...`: runs side by side (e.g. base vs tuned) in one markdown file with charts.

Runs are grouped by kind (bench, gen, compare, from `meta.kind` in their scores.json). Bench and gen runs become one
table per kind, a column per run, and a Δ column per later run against the first one; compare runs show their
win / tie / loss table. Charts are PNGs written next to the markdown file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

from ember.errors import EmberError
from ember.evaluation.charts import grouped_bars, outcome_chart
from ember.evaluation.outputs import metrics_of, read_scores
from ember.evaluation.pairwise import rates_line
from ember.evaluation.pairwise_report import judge_coverage, judge_label, kappa_text, table_markdown

GEN_ORDER = ("bleu-4", "rouge-1", "rouge-2", "rouge-l", "exact_match", "choice_accuracy")


def _label(run: Path, scores: dict[str, Any]) -> str:
    return scores.get("meta", {}).get("label") or run.name


def _fmt(value: Optional[float]) -> str:
    if value is None:
        return "–"
    return str(value) if isinstance(value, int) else f"{value:.2f}"  # counts stay counts


def _delta(value: Optional[float], base: Optional[float]) -> str:
    if value is None or base is None:
        return "–"
    d = value - base
    return f"{d:+d}" if isinstance(d, int) else f"{d:+.2f}"


def metric_table(names: list[str], columns: list[tuple[str, dict[str, float]]]) -> str:
    head = ["metric", *(label for label, _ in columns), *(f"Δ {label}" for label, _ in columns[1:])]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    base = columns[0][1]
    for name in names:
        cells = [_fmt(m.get(name)) for _, m in columns]
        deltas = [_delta(m.get(name), base.get(name)) for _, m in columns[1:]]
        lines.append("| " + " | ".join([name, *cells, *deltas]) + " |")
    return "\n".join(lines)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower() or "chart"


def write_report(runs: list[Path], out: Path, labels: Optional[list[str]] = None) -> Path:
    """Write `out` (a .md file, or a directory that gets report.md) and its charts; return the markdown path."""
    out = Path(out)
    md_path = out if out.suffix == ".md" else out / "report.md"
    md_path.parent.mkdir(parents=True, exist_ok=True)
    if labels and len(labels) != len(runs):
        raise EmberError(f"--labels gives {len(labels)} names for {len(runs)} run directories; give one per run")
    loaded = []
    for k, run in enumerate(runs):
        scores = read_scores(run)
        label = labels[k] if labels else _label(Path(run), scores)
        loaded.append((label, scores.get("meta", {}).get("kind", "bench"), scores))
    lines = ["# Evaluation report", "", "Runs: " + ", ".join(f"**{label}** (`{run}`)" for (label, _, _), run in
                                                              zip(loaded, runs, strict=True)), ""]
    bench = [(label, metrics_of(s)) for label, kind, s in loaded if kind == "bench"]
    if bench:
        lines += _bench_section(bench, md_path.parent)
    gen = [(label, metrics_of(s)) for label, kind, s in loaded if kind == "gen"]
    if gen:
        names = [m for m in GEN_ORDER if any(m in metrics for _, metrics in gen)]
        chart = grouped_bars(names, {label: [m.get(n, 0.0) for n in names] for label, m in gen},
                             md_path.parent / "report_generation.png", "Generation metrics", "score (0–100)")
        lines += ["## Generation metrics", "", metric_table(names + ["n"], gen), "", f"![generation]({chart.name})", ""]
    for label, kind, scores in loaded:
        if kind == "compare":
            lines += _compare_section(label, scores, md_path.parent)
    md_path.write_text("\n".join(lines), encoding="utf-8")
    return md_path


def _bench_section(columns: list[tuple[str, dict[str, float]]], folder: Path) -> list[str]:
    names: list[str] = []
    for _, metrics in columns:
        names += [n for n in metrics if n not in names]
    lines = ["## Benchmarks", "", "Accuracy in %, per task overall and per category.", "",
             metric_table(names, columns), ""]
    tasks = sorted({n.split("/")[0] for n in names if "/" in n})
    for task in tasks:
        groups = [n for n in names if n.startswith(f"{task}/") and not n.endswith(("/n", "/accuracy_macro"))]
        chart = grouped_bars([g.split("/", 1)[1] for g in groups], {label: [m.get(g, 0.0) for g in groups]
                             for label, m in columns}, folder / f"report_{_slug(task)}.png", task, "accuracy (%)")
        lines += [f"![{task}]({chart.name})", ""]
    return lines


def _compare_section(label: str, scores: dict[str, Any], folder: Path) -> list[str]:
    meta = scores.get("meta", {})
    lines = [f"## Pairwise: {meta.get('model_a', 'A')} vs {meta.get('model_b', 'B')} ({label})", ""]
    for source, table in scores.get("categories", {}).items():
        chart = outcome_chart(table, folder / f"report_{_slug(label)}_{source}.png", f"{label}: {source}")
        lines += [f"**{source}:** {rates_line(table['overall'])} (n = {table['overall']['n']})", "",
                  table_markdown(table), "", f"![{source}]({chart.name})", ""]
    if "judge/unparsed" in scores:
        lines += [f"Judge: {judge_label(meta)}. Outputs {judge_coverage(scores)}", ""]
    if "agreement" in scores:
        lines += [f"Judge–human agreement: {scores['agreement']:.2f}% over {scores['agreement/n']} items "
                  f"({kappa_text(scores)}).", ""]
    return lines
