"""Preference records → samples, through the one renderer (ember.data.render), and the recipes that do it.

**Prompt ids.** Each answer is rendered after its prompt by the chat template (`renderer.encode` of prompt +
answer, the prompt's own assistant turns untrained): its ids are exactly `apply_chat_template(prompt + answer)`,
and its labels are the answer's tokens and its end-of-turn token, never the role header or the template text after
it. The first ids of both rows must equal `renderer.prompt_ids(prompt)` — `apply_chat_template(prompt,
add_generation_prompt=True)`, what chat and serve feed the model. A template whose generation prompt merges with the
answer into one token cannot give that; such a pair is skipped and counted rather than trained on ids generation
never sees.

**Truncation** (`data.max_length` bounds each row). The answers are never cut, so they keep their end-of-turn
tokens. The prompt is cut first, and the same way for both rows: drop its oldest whole rounds (a round starts at a
user message; the system prompt stays), then cut the last user message from the left. A pair whose longer answer
does not fit even after an empty last question is dropped and counted. `data.truncation: drop` drops every pair
that is too long without cutting anything.

**Dropped and counted** (the data report): pairs whose two answers encode to the same tokens (their DPO gradient is
zero), pairs or KTO examples with an empty answer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

from ember.config.schema import DataConfig, DatasetSpec
from ember.data.conversation import Conversation, Message
from ember.data.preference import (KTO_RECORD_SCHEMA, PAIR_RECORD_SCHEMA, KTOExample, PreferencePair, convert_kto,
                                   convert_pair, detect_kto_format, detect_pair_format, is_empty, kto_row, pair_row,
                                   row_kto, row_pair)
from ember.data.preference_samples import (KTO_SAMPLE_SCHEMA, PAIR_SAMPLE_SCHEMA, KTOSample, KTOSamples, PairSample,
                                           PairSamples, kto_sample_row, pair_sample_row)
from ember.data.recipes import EncodeContext, Recipe, record_error
from ember.data.render import Encoded, RenderError, Renderer
from ember.data.report import DataReport
from ember.data.truncation import LOST_ROUNDS, LOST_TOO_LONG, _rounds  # rounds as truncation: turns splits them
from ember.errors import DataError

BOUNDARY = "the template's generation prompt and the answer merge into one token (prompt ids would differ from " \
           "the ones generation uses)"


def _smallest(lo: int, hi: int, ok: Callable[[int], bool]) -> Optional[int]:
    """The smallest k in [lo, hi] with ok(k), for ok monotone (False … True); None if not ok(hi)."""
    if lo > hi or not ok(hi):
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


class PromptCutter:
    """Shorter versions of one prompt: its oldest rounds dropped, then its last user message cut from the left."""

    def __init__(self, renderer: Renderer, prompt: list[Message], tools):
        self.renderer, self.tools = renderer, tools
        self.system = prompt[:1] if prompt[0].role == "system" else []
        self.rounds = _rounds(prompt[len(self.system):])
        self._ids: dict[tuple[int, int], list[int]] = {}

    def prompt(self, dropped: int, cut: int = 0) -> list[Message]:
        """Without its first `dropped` rounds; with `cut` characters removed from the front of the last question."""
        kept = [list(r) for r in self.rounds[dropped:]]
        if cut:
            question = kept[-1][0]
            kept[-1][0] = replace(question, content=question.content[cut:])
        return self.system + [m for r in kept for m in r]

    def ids(self, dropped: int, cut: int = 0) -> list[int]:
        if (dropped, cut) not in self._ids:
            self._ids[dropped, cut] = self.renderer.prompt_ids(self.prompt(dropped, cut), tools=self.tools)
        return self._ids[dropped, cut]

    def fit(self, budget: int) -> Optional[tuple[int, int]]:
        """(rounds dropped, characters cut) of the longest prompt of at most `budget` tokens; None if none is."""
        last = len(self.rounds) - 1
        dropped = _smallest(0, last, lambda k: len(self.ids(k)) <= budget)
        if dropped is not None:
            return dropped, 0
        question = self.rounds[last][0]
        if question.role != "user":
            return None
        cut = _smallest(1, len(question.content), lambda c: len(self.ids(last, c)) <= budget)
        return (last, cut) if cut is not None else None

    def answers_dropped(self, dropped: int) -> int:
        return sum(1 for r in self.rounds[:dropped] for m in r if m.role == "assistant")


def encode_answer(renderer: Renderer, prompt: list[Message], answer: list[Message], source: str, tools,
                  prompt_ids: list[int]) -> Optional[Encoded]:
    """prompt + answer rendered and labelled (only the answer's assistant messages train); None when its first ids
    are not `prompt_ids` (see BOUNDARY)."""
    messages = [replace(m, train=False) if m.role == "assistant" else m for m in prompt]
    messages += [replace(m, train=True, weight=1.0) if m.role == "assistant" else m for m in answer]
    enc = renderer.encode(Conversation(messages, source, tools), "all_assistant")
    return enc if enc.input_ids[:len(prompt_ids)] == prompt_ids else None


def fit_answers(renderer: Renderer, prompt: list[Message], answers: Sequence[list[Message]], source: str, tools,
                data: DataConfig) -> tuple[Optional[tuple[list[Encoded], int]], int, dict[str, int], Optional[str]]:
    """Encode the answers after one shared prompt, cut to `data.max_length` by the rule above.

    Returns ((encodings, prompt length) or None, answer tokens before truncation, answer tokens lost by reason,
    why it was dropped or None)."""
    prompt_ids = renderer.prompt_ids(prompt, tools=tools)
    encs = [encode_answer(renderer, prompt, a, source, tools, prompt_ids) for a in answers]
    if any(e is None for e in encs):
        return None, 0, {}, BOUNDARY
    total = sum(e.trained_tokens for e in encs)
    longest = max(len(e.input_ids) for e in encs)
    if longest <= data.max_length:
        return (encs, len(prompt_ids)), total, {}, None
    too_long = (None, total, {LOST_TOO_LONG: total}, f"longer than max_length={data.max_length}")
    if data.truncation == "drop":
        return too_long
    cutter = PromptCutter(renderer, prompt, tools)
    budget = data.max_length - (longest - len(prompt_ids))
    for _ in range(3):  # the answers' ids do not depend on the prompt unless tokens merge across it: rarely retried
        place = cutter.fit(budget) if budget > 0 else None
        if place is None:
            return too_long
        short_prompt, short_ids = cutter.prompt(*place), cutter.ids(*place)
        encs = [encode_answer(renderer, short_prompt, a, source, tools, short_ids) for a in answers]
        if any(e is None for e in encs):
            return None, total, {}, BOUNDARY
        over = max(len(e.input_ids) for e in encs) - data.max_length
        if over <= 0:
            dropped = cutter.answers_dropped(place[0])
            encs = [replace(e, turns_dropped=dropped, truncated=True) for e in encs]
            lost = total - sum(e.trained_tokens for e in encs)
            return (encs, len(short_ids)), total, ({LOST_ROUNDS: lost} if lost > 0 else {}), None
        budget -= over
    return too_long


def _skip(report: DataReport, source: str, reason: str) -> None:
    report.skip_sample(source, reason)
    report.warn(f"{source}: {reason}")


def _add(report: DataReport, encs: Sequence[Encoded]) -> None:
    for e in encs:
        report.total_tokens += len(e.input_ids)
        report.trained_tokens += e.trained_tokens
        for warning in e.warnings:
            report.warn(warning)
    report.truncated += int(encs[0].truncated)
    report.turns_dropped += encs[0].turns_dropped


def _detect(detect: Callable[[dict[str, Any]], str], record: dict[str, Any], source: str) -> str:
    try:
        return detect(record)
    except ValueError as exc:
        raise DataError(source, None, str(exc)) from None


class _PreferenceRecipe(Recipe):
    """What pairs and KTO examples share: the renderer's stop tokens, their sample files, and one answer set fitted
    after one prompt with every outcome counted in the report."""

    samples_class: type

    def stop_token_ids(self, ctx: EncodeContext) -> list[int]:
        assert ctx.renderer is not None
        return ctx.renderer.stop_token_ids

    def samples(self, paths: Sequence[Path], keep: Optional[object] = None):
        return self.samples_class(paths, keep)

    @staticmethod
    def fit(prompt: list[Message], answers: Sequence[list[Message]], source: str, tools, ctx: EncodeContext,
            report: DataReport) -> Optional[tuple[list[Encoded], int]]:
        for name, answer in zip(("chosen", "rejected") if len(answers) == 2 else ("",), answers, strict=True):
            if is_empty(answer):
                report.dropped_empty_answers += 1
                _skip(report, source, f"empty {name} answer" if name else "empty answer")
                return None
        assert ctx.renderer is not None
        try:  # the template may refuse this record (raise_exception on its content): that record's error
            fitted, total, lost, why = fit_answers(ctx.renderer, prompt, answers, source, tools, ctx.data)
        except (RenderError, RecursionError) as exc:
            record_error(source, exc, ctx.data, report)
            return None
        report.count_answers(total, lost)
        if fitted is None:
            if why == BOUNDARY:
                report.skip(source, why)
            else:
                report.dropped_too_long += 1
                report.skip_sample(source, why)
        return fitted


class PairRecipe(_PreferenceRecipe):
    """dpo / orpo / simpo: a prompt with a chosen and a rejected answer → one `PairSample`."""

    name = "pairs"
    unit = "pair"
    record_schema = PAIR_RECORD_SCHEMA
    shard_schema = PAIR_SAMPLE_SCHEMA
    samples_class = PairSamples

    def detect(self, record: dict[str, Any], source: str) -> str:
        return _detect(detect_pair_format, record, source)

    def convert(self, fmt: str, record: dict[str, Any], source: str, spec: DatasetSpec, data: DataConfig) -> PreferencePair:
        return convert_pair(fmt, record, source, spec.system or data.system)

    def record_row(self, record: PreferencePair) -> dict[str, Any]:
        return pair_row(record)

    def row_record(self, row: dict[str, Any]) -> PreferencePair:
        return row_pair(row)

    def encode(self, records: Sequence[PreferencePair], ctx: EncodeContext, report: DataReport) -> Iterator[dict[str, Any]]:
        for pair in records:
            sample = self.encode_one(pair, ctx, report)
            if sample is not None:
                yield pair_sample_row(sample)

    def encode_one(self, pair: PreferencePair, ctx: EncodeContext, report: DataReport) -> Optional[PairSample]:
        fitted = self.fit(pair.prompt, [pair.chosen, pair.rejected], pair.source, pair.tools, ctx, report)
        if fitted is None:
            return None
        (chosen, rejected), prompt_length = fitted
        if chosen.input_ids[prompt_length:] == rejected.input_ids[prompt_length:]:
            report.dropped_identical_pairs += 1
            _skip(report, pair.source, "the chosen and rejected answers are identical")
            return None
        _add(report, (chosen, rejected))
        report.kept_records += 1
        return PairSample(chosen, rejected, prompt_length)


class KTORecipe(_PreferenceRecipe):
    """kto: a prompt with one answer and its label → one `KTOSample`."""

    name = "kto"
    unit = "example"
    record_schema = KTO_RECORD_SCHEMA
    shard_schema = KTO_SAMPLE_SCHEMA
    samples_class = KTOSamples

    def detect(self, record: dict[str, Any], source: str) -> str:
        return _detect(detect_kto_format, record, source)

    def convert(self, fmt: str, record: dict[str, Any], source: str, spec: DatasetSpec, data: DataConfig) -> KTOExample:
        if fmt != "kto":
            raise DataError(source, None, f"stage kto reads {{messages, label}} records, not '{fmt}' data")
        return convert_kto(record, source, spec.system or data.system)

    def record_row(self, record: KTOExample) -> dict[str, Any]:
        return kto_row(record)

    def row_record(self, row: dict[str, Any]) -> KTOExample:
        return row_kto(row)

    def encode(self, records: Sequence[KTOExample], ctx: EncodeContext, report: DataReport) -> Iterator[dict[str, Any]]:
        for example in records:
            fitted = self.fit(example.prompt, [example.completion], example.source, example.tools, ctx, report)
            if fitted is None:
                continue
            (enc,), prompt_length = fitted
            _add(report, (enc,))
            report.kept_records += 1
            yield kto_sample_row(KTOSample(enc, example.label, prompt_length))


PAIRS = PairRecipe()
KTO = KTORecipe()
