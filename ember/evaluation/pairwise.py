"""Pairwise comparison of model A against model B: prompt sets, cached answers, an LLM judge with position swap.

Outcomes are always from model A's side: "win" (A better), "tie", "loss" (B better). The judge sees every pair twice,
A as Answer 1 and then B as Answer 1. A verdict counts only when both orders agree on the same model (or both say
tie); any disagreement, or an output without a verdict, is a tie. The judge prompt is a Jinja template file
(`judge_prompt.jinja` by default) that receives `question`, `answer_1`, `answer_2`, `category` and `reference` and
must ask for a final `[[1]]`, `[[2]]` or `[[TIE]]`; the last such mark in the output is the verdict.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from pathlib import Path
from typing import Any, Optional

from ember.errors import EmberError
from ember.evaluation.generate import GenerateFn, generate_all
from ember.evaluation.outputs import append_jsonl, percent, read_jsonl

OUTCOMES = ("win", "tie", "loss")
_VERDICT = re.compile(r"\[\[\s*(1|2|tie)\s*\]\]", re.IGNORECASE)
DEFAULT_TEMPLATE = Path(__file__).with_name("judge_prompt.jinja")


# ---- prompt sets ---------------------------------------------------------------------------------------------------

def load_prompt_set(path: str, limit: Optional[int] = None) -> list[dict]:
    """[{id, prompt, category, reference}] from the Firefly eval spreadsheet (kind, instruction) or a JSONL file."""
    p = Path(path)
    if not p.is_file():
        raise EmberError(f"prompt set not found: {p} (give a .xlsx with kind/instruction columns or a JSONL file)")
    rows = _read_xlsx(p) if p.suffix.lower() == ".xlsx" else _read_jsonl_prompts(p)
    if not rows:
        raise EmberError(f"{p} holds no prompts")
    return rows[:limit] if limit is not None else rows


def _read_xlsx(p: Path) -> list[dict]:
    import openpyxl

    sheet = openpyxl.load_workbook(p, read_only=True).worksheets[0]
    table = list(sheet.iter_rows(values_only=True))
    header = [str(h or "").strip().lower() for h in table[0]]
    prompt_col = next((header.index(h) for h in ("instruction", "prompt", "question") if h in header), None)
    category_col = next((header.index(h) for h in ("kind", "category", "class") if h in header), None)
    if prompt_col is None:
        raise EmberError(f"{p}: the first sheet needs an 'instruction' (or 'prompt') column; its header is {header}")
    reference_col = next((header.index(h) for h in ("reference", "output", "answer") if h in header), None)
    rows = []
    for i, row in enumerate(table[1:], start=2):
        if row[prompt_col] is None:
            continue
        rows.append({
            "id": f"{p.stem}-{i}",
            "prompt": str(row[prompt_col]),
            "category": str(row[category_col]) if category_col is not None and row[category_col] else "all",
            "reference": str(row[reference_col]) if reference_col is not None and row[reference_col] else None,
        })
    return rows


def _read_jsonl_prompts(p: Path) -> list[dict]:
    rows = []
    for i, rec in enumerate(read_jsonl(p)):
        if "prompt" not in rec:
            raise EmberError(f"{p}:{i + 1}: each line needs a 'prompt' (and a 'category'); got {sorted(rec)}")
        rows.append({"id": str(rec.get("id", f"{p.stem}-{i + 1}")), "prompt": str(rec["prompt"]),
                     "category": str(rec.get("category") or "all"), "reference": rec.get("reference")})
    return rows


# ---- answers, generated once ---------------------------------------------------------------------------------------

def cached_answers(items: list[dict], generate: Optional[GenerateFn], path: Path, model: str,
                   batch_size: int = 8, progress: bool = True) -> dict[str, str]:
    """id → answer. Answers already in `path` for the same model and prompt are reused; new ones are appended."""
    have = {}
    if path.is_file():
        for rec in read_jsonl(path):
            if rec.get("model") == model:
                have[(rec["id"], rec["prompt"])] = rec["answer"]
    missing = [it for it in items if (it["id"], it["prompt"]) not in have]
    if missing:
        if generate is None:
            raise EmberError(f"{path} lacks answers of '{model}' for {len(missing)} prompts and no generator is available")
        convs = [[{"role": "user", "content": it["prompt"]}] for it in missing]
        for it, answer in zip(missing, generate_all(generate, convs, batch_size, f"answers of {model}", progress), strict=True):
            append_jsonl(path, {"id": it["id"], "prompt": it["prompt"], "model": model, "answer": answer})
            have[(it["id"], it["prompt"])] = answer
    return {it["id"]: have[(it["id"], it["prompt"])] for it in items}


# ---- the judge -----------------------------------------------------------------------------------------------------

def load_template(path: Optional[str] = None):
    import jinja2

    p = Path(path) if path else DEFAULT_TEMPLATE
    if not p.is_file():
        raise EmberError(f"judge template not found: {p} (copy {DEFAULT_TEMPLATE} and edit it)")
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    try:
        return env.from_string(p.read_text(encoding="utf-8"))
    except jinja2.TemplateSyntaxError as exc:
        raise EmberError(f"{p}:{exc.lineno}: judge template syntax error: {exc.message}") from exc


def judge_prompt(template, item: dict, answer_1: str, answer_2: str) -> str:
    return template.render(question=item["prompt"], answer_1=answer_1, answer_2=answer_2,
                           category=item.get("category", ""), reference=item.get("reference") or "")


def parse_verdict(text: str) -> Optional[str]:
    """"1", "2" or "tie" from the last [[...]] mark in a judge output; None when there is none."""
    marks = _VERDICT.findall(text)
    return marks[-1].lower() if marks else None


def combine(first: Optional[str], swapped: Optional[str]) -> str:
    """A's outcome from the verdict with A as Answer 1 (`first`) and with B as Answer 1 (`swapped`)."""
    as_a = {"1": "win", "2": "loss", "tie": "tie"}
    as_b = {"1": "loss", "2": "win", "tie": "tie"}
    one, two = as_a.get(first or ""), as_b.get(swapped or "")
    return one if one is not None and one == two else "tie"


def judge_outputs(prompts: list[str], judge: GenerateFn, cache: Optional[Path], judge_name: str,
                  batch_size: int = 8, progress: bool = True) -> list[str]:
    """The judge's output for each prompt. With `cache`, outputs of the same judge for the same prompt text are
    reused and new ones are appended batch by batch, so a re-run or an interrupted run never judges a pair twice."""
    keys = [hashlib.sha256(p.encode("utf-8")).hexdigest() for p in prompts]
    have: dict[str, str] = {}
    if cache is not None and cache.is_file():
        have = {r["sha256"]: r["output"] for r in read_jsonl(cache) if r.get("judge") == judge_name}
    first_of: dict[str, int] = {}  # identical prompts (e.g. two equal answers swapped) are judged once
    for i, k in enumerate(keys):
        if k not in have:
            first_of.setdefault(k, i)
    missing = list(first_of.values())
    for start in range(0, len(missing), batch_size):
        batch = missing[start: start + batch_size]
        outs = generate_all(judge, [[{"role": "user", "content": prompts[i]}] for i in batch], batch_size,
                            f"judging {start + len(batch)}/{len(missing)}", progress)
        for i, out in zip(batch, outs, strict=True):
            have[keys[i]] = out
            if cache is not None:
                append_jsonl(cache, {"judge": judge_name, "sha256": keys[i], "output": out})
    return [have[k] for k in keys]


VERDICT_MARKS = ("1", "2", "TIE")


def likelihood_judge(model, tokenizer, renderer=None, batch_size: int = 8) -> GenerateFn:
    """A judge that reads its verdict off the likelihoods instead of generating one.

    After the judge prompt (rendered by the judge's own renderer, as `ember chat` would send it) and "[[", the verdict
    is whichever of "1", "2" and "TIE" the judge finds most likely. Small local judges that never write a verdict mark
    still give one; the position swap still turns a judge that always prefers one position into ties. The output
    records the three log-likelihoods. A judge without a chat template reads the prompt as plain text.
    """
    from ember.evaluation.scoring import Request, score_requests

    chat = renderer is not None

    def render(conversation: list[dict]) -> str:
        if chat:
            return renderer.prompt_text(conversation)
        return conversation[-1]["content"] + "\n"

    def judge(batch: list[list[dict]]) -> list[str]:
        # A rendered chat prompt holds its own special tokens; plain text gets the tokenizer's BOS.
        requests = [Request(render(conv) + "[[", VERDICT_MARKS, add_special_tokens=not chat) for conv in batch]
        out = []
        for scores in score_requests(model, tokenizer, requests, batch_size=batch_size, progress=False):
            best = max(range(len(VERDICT_MARKS)), key=lambda i: (scores[i], -i))
            detail = ", ".join(f"{mark}: {score:.4f}" for mark, score in zip(VERDICT_MARKS, scores, strict=True))
            out.append(f"log-likelihood of each verdict ({detail})\n[[{VERDICT_MARKS[best]}]]")
        return out

    return judge


def judge_pairs(items: list[dict], answers_a: dict[str, str], answers_b: dict[str, str], judge: GenerateFn,
                template, batch_size: int = 8, progress: bool = True, cache: Optional[Path] = None,
                judge_name: str = "judge") -> list[dict]:
    prompts = []
    for it in items:
        a, b = answers_a[it["id"]], answers_b[it["id"]]
        prompts += [judge_prompt(template, it, a, b), judge_prompt(template, it, b, a)]
    outputs = judge_outputs(prompts, judge, cache, judge_name, batch_size, progress)
    records = []
    for k, it in enumerate(items):
        first, swapped = outputs[2 * k], outputs[2 * k + 1]
        verdicts = [parse_verdict(first), parse_verdict(swapped)]
        outcome = combine(*verdicts)
        records.append({
            "id": it["id"], "category": it["category"], "prompt": it["prompt"],
            "answer_a": answers_a[it["id"]], "answer_b": answers_b[it["id"]],
            "judge_outputs": [first, swapped], "verdicts": verdicts, "outcome": outcome,
            "consistent": outcome != "tie" or verdicts == ["tie", "tie"],
        })
    return records


# ---- aggregation ---------------------------------------------------------------------------------------------------

def outcome_table(records: list[dict]) -> dict[str, dict[str, Any]]:
    """Per category (in order of first appearance) and "overall": counts and rates (0–100) of win / tie / loss."""
    by_category: dict[str, Counter] = {}
    for rec in records:
        by_category.setdefault(rec["category"], Counter())[rec["outcome"]] += 1
    total = sum(by_category.values(), Counter())
    return {name: _row(counts) for name, counts in [*by_category.items(), ("overall", total)]}


def _row(counts: Counter) -> dict[str, Any]:
    n = sum(counts[o] for o in OUTCOMES)
    row: dict[str, Any] = {o: counts[o] for o in OUTCOMES}
    row["n"] = n
    row.update({f"{o}_rate": round(percent(counts[o], n), 2) for o in OUTCOMES})
    return row


def rates_line(row: dict[str, Any]) -> str:
    return ", ".join(f"{row[f'{o}_rate']:.2f}% {o}" for o in OUTCOMES)


def agreement(judge_records: list[dict], human_records: list[dict]) -> dict[str, Any]:
    """How often judge and human outcomes agree on the items both judged, with Cohen's kappa. Kappa is None when it is
    undefined: both raters gave one and the same label to every item, so chance agreement is already 100%."""
    judge = {r["id"]: r["outcome"] for r in judge_records}
    human = {r["id"]: r["outcome"] for r in human_records}  # the last verdict of an id wins
    common = [i for i in judge if i in human]
    n = len(common)
    if n == 0:
        return {"n": 0, "agreement": 0.0, "kappa": 0.0}
    observed = sum(judge[i] == human[i] for i in common) / n
    pj, ph = Counter(judge[i] for i in common), Counter(human[i] for i in common)
    expected = sum(pj[o] * ph[o] for o in OUTCOMES) / (n * n)
    kappa = round((observed - expected) / (1 - expected), 4) if expected < 1 else None
    return {"n": n, "agreement": round(100 * observed, 2), "kappa": kappa}
