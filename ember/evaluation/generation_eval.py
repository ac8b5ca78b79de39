"""Generation metrics over a dataset: generate answers (or read a predictions file), then BLEU-4 / ROUGE / exact match.

Records are read with `ember.data.files` (JSON, JSONL — PromptCBLUE's `.json` files are JSONL — CSV, parquet).
The prompt and reference fields are found by name unless given: prompt ← instruction | input | prompt | question
(Alpaca's instruction + input are joined by a newline); reference ← target | reference | output | answer | std_answer.
Conversation records (OpenAI `messages`, ShareGPT `conversations`, Firefly `conversation`, MOSS `chat`) are read by the
data path: the model is given every message before the last assistant turn (`--history-max-tokens` drops the oldest
rounds first, as `ember chat` does), and that turn is the reference.

Exact match compares the stripped strings. Choice accuracy, on records with `answer_choices`, compares the *set* of
choices named in the prediction with the set named in the reference; a choice is named when its text occurs, longest
choices first, each occurrence used once (so "不相关" does not also count as "相关"). A record whose reference names
no choice (PromptCBLUE's "非上述类型") is right when the prediction names none either and says what the reference
says (contains its text): an answer that names nothing, or gibberish, is not a correct "none of these".
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

from ember.errors import DataError, EmberError
from ember.evaluation.generate import GenerateFn, generate_all
from ember.evaluation.outputs import percent
from ember.evaluation.text_metrics import text_scores

PROMPT_FIELDS = ("instruction", "input", "prompt", "question")  # instruction first: Alpaca also has `input`
REFERENCE_FIELDS = ("target", "reference", "output", "answer", "std_answer")
GROUP_FIELDS = ("task_type", "category", "class", "kind")
METRICS = ("bleu-4", "rouge-1", "rouge-2", "rouge-l")


def load_gen_dataset(path: str, prompt_field: Optional[str] = None, reference_field: Optional[str] = None,
                     limit: Optional[int] = None) -> list[dict]:
    """Records normalized to {id, prompt, reference, answer_choices, group}."""
    rows = []
    for source, record in _records(path):
        rows.append(_normalize(source, record, prompt_field, reference_field, len(rows)))
        if limit is not None and len(rows) >= limit:
            break
    if not rows:
        raise EmberError(f"{path} holds no records to evaluate")
    return rows


def _records(path: str) -> Iterator[tuple[str, dict]]:
    """(file:line, record) as training's readers read them; the first unreadable record (not UTF-8, not JSON)
    raises its DataError, which names the file and line."""
    from ember.data.files import iter_records

    for source, record in iter_records(path):
        if isinstance(record, DataError):
            raise record
        yield source, record


def _pick(record: dict, given: Optional[str], candidates: tuple[str, ...], what: str, source: str) -> str:
    if given:
        if given not in record:
            raise DataError(source, given, f"no such field (the record has {', '.join(sorted(record))})")
        return given
    for name in candidates:
        if name in record:
            return name
    flag = "--prompt-field" if what == "prompt" else "--reference-field"
    raise DataError(source, None, f"no {what} field among {', '.join(candidates)}; name it with {flag}")


CONVERSATION_FORMATS = ("openai", "sharegpt", "firefly", "moss")  # every dialogue format training reads


def _from_conversation(source: str, record: dict, index: int) -> Optional[dict]:
    from ember.data.formats import convert, detect_format

    try:
        fmt = detect_format(record)
    except ValueError:
        return None
    if fmt not in CONVERSATION_FORMATS:
        return None
    messages = convert(fmt, record, source, {}).messages  # validated: it holds an assistant turn
    last = max(i for i, m in enumerate(messages) if m.role == "assistant")
    context = [{"role": m.role, "content": m.content} for m in messages[:last]]
    return {
        "id": str(record.get("sample_id", record.get("id", index))),
        "prompt": next((m["content"] for m in reversed(context) if m["role"] == "user"), ""),
        "messages": context,
        "reference": messages[last].content,
        "answer_choices": record.get("answer_choices") or None,
        "group": next((str(record[g]) for g in GROUP_FIELDS if record.get(g)), None),
    }


def _normalize(source: str, record: dict, prompt_field: Optional[str], reference_field: Optional[str], index: int) -> dict:
    if prompt_field is None and reference_field is None:
        conversation = _from_conversation(source, record, index)
        if conversation is not None:
            return conversation
    pf = _pick(record, prompt_field, PROMPT_FIELDS, "prompt", source)
    rf = _pick(record, reference_field, REFERENCE_FIELDS, "reference", source)
    prompt = str(record[pf])
    if pf == "instruction" and record.get("input"):
        prompt = f"{prompt}\n{record['input']}"
    group = next((str(record[g]) for g in GROUP_FIELDS if record.get(g)), None)
    return {
        "id": str(record.get("sample_id", record.get("id", index))),
        "prompt": prompt,
        "reference": "" if record[rf] is None else str(record[rf]),
        "answer_choices": record.get("answer_choices") or None,
        "group": group,
    }


def load_predictions(path: str) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        raise EmberError(f"predictions file not found: {p}")
    rows = []
    for source, row in _records(path):
        missing = [k for k in ("prediction", "reference") if k not in row]
        if missing:
            raise DataError(source, None, f"a predictions record needs 'prediction' and 'reference'; missing {missing}")
        rows.append(row)
    return rows


def generate_predictions(rows: list[dict], generate: GenerateFn, batch_size: int = 8, progress: bool = True) -> list[dict]:
    conversations = [r.get("messages") or [{"role": "user", "content": r["prompt"]}] for r in rows]
    answers = generate_all(generate, conversations, batch_size, "generating", progress)
    return [{**row, "prediction": answer} for row, answer in zip(rows, answers, strict=True)]


def named_choices(text: str, choices: list[str]) -> set[str]:
    found = set()
    for choice in sorted(set(choices), key=len, reverse=True):
        if choice and choice in text:
            found.add(choice)
            text = text.replace(choice, "\0")
    return found


def score_predictions(rows: list[dict], lang: str = "auto") -> tuple[dict[str, Any], list[dict]]:
    items = []
    for index, row in enumerate(rows):
        prediction, reference = str(row["prediction"]), str(row["reference"])
        item = {k: row[k] for k in ("id", "group", "prompt") if row.get(k) is not None}
        item.update({"index": index, "prediction": prediction, "reference": reference})
        item.update({k: round(v, 4) for k, v in text_scores(prediction, reference, lang).items()})
        item["exact_match"] = prediction.strip() == reference.strip()
        choices = row.get("answer_choices")
        if choices:
            named = named_choices(reference, choices)
            item["choice_correct"] = named_choices(prediction, choices) == named and (
                bool(named) or reference.strip() in prediction)
        items.append(item)
    scores = summarize(items)
    groups = defaultdict(list)
    for item in items:
        if item.get("group"):
            groups[item["group"]].append(item)
    if groups:
        scores["categories"] = {name: summarize(group) for name, group in sorted(groups.items())}
    return scores, items


def summarize(items: list[dict]) -> dict[str, Any]:
    n = len(items)
    scores: dict[str, Any] = {m: round(sum(i[m] for i in items) / n, 4) if n else 0.0 for m in METRICS}
    scores["exact_match"] = percent(sum(i["exact_match"] for i in items), n)
    with_choices = [i for i in items if "choice_correct" in i]
    if with_choices:
        scores["choice_accuracy"] = percent(sum(i["choice_correct"] for i in with_choices), len(with_choices))
        scores["n_choice"] = len(with_choices)
    scores["n"] = n
    return scores
