"""Make an encoded conversation fit `max_length`, and count every answer token that does not make it.

`split` (the SFT default): a long conversation becomes several samples cut at round boundaries. Each sample trains a
run of consecutive rounds and is filled, as far as fits, with the rounds before them as untrained context (the
system prompt always stays), so every answer is trained exactly once. A round that does not fit even alone has its
question cut from the left and then its answer cut from the right (counted as "answer cut").
`turns`: one sample: drop the oldest whole user→assistant rounds (the system prompt stays), then cut the last user
message from the left; the final answer is never cut, so it keeps its end-of-turn token. A sample whose final answer
alone does not fit is dropped. `left` / `right` cut tokens; `drop` drops long samples.

Every candidate sample is a real rendering of a shorter message list, so its prompt ids are the ones serving builds.
Which rounds to keep is guessed from the token boundaries of the full encoding and then checked by encoding, so a
conversation of R rounds costs a few encodings, not one per dropped round. Encoding a window is itself a cut of the
full encoding when that is provably what the tokenizer gives (`_Rounds.cut`): the window renders to exactly the
text of the full rendering's pieces, and every cut falls just before a token the tokenizer always splits at
(`Renderer.hard_split_ids`, e.g. `<|im_start|>`); otherwise the window is rendered and tokenised.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Optional

from ember.data.conversation import Conversation, Message
from ember.data.render import IGNORE_INDEX, Encoded, Renderer, tokenize_batch
from ember.data.tokenize import first_token_from

# Reasons an answer token is not trained; the data report counts lost tokens by these names.
LOST_ROUNDS = "rounds dropped (truncation: turns)"
LOST_CUT = "answer cut to max_length"
LOST_TOO_LONG = "sample dropped: longer than max_length"
LOST_TOKEN_CUT = "cut by truncation: left/right"


@dataclass
class Fitted:
    """What one conversation became: zero or more samples, and the answer tokens they lost."""

    samples: list[Encoded]
    answer_tokens: int
    lost: dict[str, int] = field(default_factory=dict)


def fit(renderer: Renderer, conv: Conversation, enc: Encoded, mode: str, max_length: int, mask: str) -> Optional[Encoded]:
    """One-sample modes (`turns`, `left`, `right`, `drop`): `enc` or a shortened version of it; None = dropped."""
    samples = fit_samples(renderer, conv, enc, mode, max_length, mask).samples
    assert len(samples) <= 1 or mode == "split"
    return samples[0] if samples else None


def fit_samples(renderer: Renderer, conv: Conversation, enc: Encoded, mode: str, max_length: int, mask: str) -> Fitted:
    total = enc.trained_tokens
    if len(enc.input_ids) <= max_length:
        return Fitted([enc], total)
    if mode == "drop":
        out = []
    elif mode == "right":
        out = [_cut(enc, slice(0, max_length))]
    elif mode == "left":
        out = [_cut(enc, slice(len(enc.input_ids) - max_length, None))]
    elif mode == "split" and mask == "all_assistant":
        return _Rounds(renderer, conv, enc, max_length, mask).split()
    else:  # turns (and split for the mask modes that train one answer, or every token, per conversation)
        kept = _Rounds(renderer, conv, enc, max_length, mask).turns()
        out = [kept] if kept is not None else []
    kept_tokens = sum(s.trained_tokens for s in out)
    reason = {"drop": LOST_TOO_LONG, "right": LOST_TOKEN_CUT, "left": LOST_TOKEN_CUT}.get(mode, LOST_ROUNDS)
    if not out:
        reason = LOST_TOO_LONG
    return Fitted(out, total, {reason: total - kept_tokens} if total > kept_tokens else {})


def _cut(enc: Encoded, part: slice) -> Encoded:
    return Encoded(enc.input_ids[part], enc.labels[part], enc.source, enc.weights[part] if enc.weights else None,
                   enc.turns_dropped, True, list(enc.warnings))


def _rounds(messages: list[Message]) -> list[list[Message]]:
    """Split into rounds, each starting at a user message (tool results stay in their round)."""
    rounds: list[list[Message]] = []
    for m in messages:
        if m.role == "user" or not rounds:
            rounds.append([m])
        else:
            rounds[-1].append(m)
    return rounds


def _smallest(lo: int, hi: int, guess: int, ok: Callable[[int], bool]) -> Optional[int]:
    """The smallest k in (lo, hi] with ok(k), for ok monotone (False … False True … True); None if not ok(hi).
    Starts at `guess` and gallops, so a good guess costs two calls."""
    if hi <= lo:
        return None
    k = min(max(guess, lo + 1), hi)
    if ok(k):
        good, bad, step = k, lo, 1
        while good - step > lo:
            if not ok(good - step):
                bad = good - step
                break
            good, step = good - step, step * 2
    else:
        bad, step = k, 1
        while True:
            probe = min(hi, bad + step)
            if ok(probe):
                good = probe
                break
            if probe == hi:
                return None
            bad, step = probe, step * 2
    while good - bad > 1:
        mid = (good + bad) // 2
        if ok(mid):
            good = mid
        else:
            bad = mid
    return good


class _Rounds:
    """A conversation seen as [system] + rounds, with token estimates of every round boundary."""

    def __init__(self, renderer: Renderer, conv: Conversation, enc: Encoded, max_length: int, mask: str):
        self.renderer, self.conv, self.enc, self.max_length, self.mask = renderer, conv, enc, max_length, mask
        self.system = conv.messages[:1] if conv.system is not None else []
        self.rounds = _rounds(conv.messages[len(self.system):])
        self._encoded: dict[tuple, Encoded] = {}
        self.round_starts = [len(self.system)]  # index of each round's first message
        for messages in self.rounds:
            self.round_starts.append(self.round_starts[-1] + len(messages))
        self.bounds = self._boundaries()
        # Windows can be cut out of the full encoding (see `cut`) for the default mask, on plain text without
        # per-message weights or warnings (whose wording names turns of the whole conversation).
        hard = renderer.hard_split_ids
        self.cuttable = (mask == "all_assistant" and enc.offsets is not None and not enc.warnings
                         and enc.weights is None and self.bounds[0] < len(enc.input_ids)
                         and (self.bounds[0] == 0 or enc.input_ids[self.bounds[0]] in hard)
                         and all(x == IGNORE_INDEX for x in enc.labels[:self.bounds[0]]))
        # Whether estimates are exact for this conversation (the template renders rounds the same wherever they
        # stand, and tokenisation never merges across a round boundary): decided by the first window encoded.
        # While they are, a search decides by estimate and only the chosen window is encoded.
        self.trusted: Optional[bool] = None

    def _boundaries(self) -> list[int]:
        """Estimated first token of each round (and the total length at the end), from the full encoding."""
        answers = self.enc.answers
        if answers is None:  # mask `all` skipped span finding; truncation needs it
            text = self.renderer.render_text(self.conv.messages, tools=self.conv.tools)
            _, offsets = self.renderer.tokenize(self.conv.messages, text, tools=self.conv.tools)
            starts = [s for s, _ in offsets]
            answers = [(i, bisect.bisect_left(starts, s), bisect.bisect_left(starts, e))
                       for i, s, e in self.renderer.assistant_spans(self.conv, text)]
        end_of = {index: end for index, _, end in answers}
        n = len(self.enc.input_ids)
        bounds = [0] * (len(self.rounds) + 1)
        position = len(self.system)
        for r, messages in enumerate(self.rounds):
            position += len(messages)
            ends = [end_of[i] for i in range(position - len(messages), position) if i in end_of]
            bounds[r + 1] = ends[-1] if ends else bounds[r]
        bounds[-1] = n
        # What precedes round 0 (the system block, or a default one the template adds): measured on the shortest
        # round after the first standing alone (its width in the full encoding does not depend on bounds[0]).
        # It is the same for every conversation with this system prompt and these tools: measured once.
        # A conversation of one round cannot measure it (its only window is itself).
        key = (self.system[0].content if self.system else None, repr(self.conv.tools) if self.conv.tools else None)
        if len(self.renderer.system_block_tokens) >= 256:  # data whose every system prompt differs: stay bounded
            self.renderer.system_block_tokens.clear()
        if key not in self.renderer.system_block_tokens and len(self.rounds) > 1:
            r = min(range(1, len(self.rounds)), key=lambda k: bounds[k + 1] - bounds[k])
            self.renderer.system_block_tokens[key] = len(self._encode_window(r, r).input_ids) - (bounds[r + 1] - bounds[r])
        bounds[0] = max(0, min(bounds[1], self.renderer.system_block_tokens.get(key, 0)))
        return bounds

    def estimate(self, first: int, last: int) -> int:
        """Tokens of [system] + rounds first..last, from the full encoding's boundaries."""
        return self.bounds[0] + self.bounds[last + 1] - self.bounds[first]

    def window(self, first: int, last: int, trained_from: Optional[int] = None, user_keep: Optional[int] = None) -> Encoded:
        """Encode [system] + rounds first..last; answers before round `trained_from` are untrained context;
        `user_keep` keeps only that many trailing characters of round `first`'s user message."""
        key = (first, last, trained_from, user_keep)
        if key not in self._encoded:
            cut = self.cut(first, last, trained_from, user_keep)
            self._encoded[key] = cut if cut is not None else self._encode_window(first, last, trained_from, user_keep)
        return self._encoded[key]

    def _messages(self, first: int, last: int, trained_from: Optional[int], user_keep: Optional[int]) -> list[Message]:
        messages = list(self.system)
        for r in range(first, last + 1):
            for m in self.rounds[r]:
                if trained_from is not None and r < trained_from and m.role == "assistant":
                    m = replace(m, train=False)
                if r == first and user_keep is not None and m.role == "user":
                    m = replace(m, content=m.content[len(m.content) - user_keep:] if user_keep else "")
                messages.append(m)
        return messages

    def _encode_window(self, first: int, last: int, trained_from: Optional[int] = None,
                       user_keep: Optional[int] = None) -> Encoded:
        key = (first, last, trained_from, user_keep, "encoded")
        if key not in self._encoded:
            conv = Conversation(self._messages(first, last, trained_from, user_keep), self.conv.source,
                                self.conv.tools, self.conv.meta)
            self._encoded[key] = self.renderer.encode(conv, self.mask)
        return self._encoded[key]

    def cut(self, first: int, last: int, trained_from: Optional[int] = None,
            user_keep: Optional[int] = None) -> Optional[Encoded]:
        """[system] + rounds first..last cut out of the full encoding, or None when that is not provably the
        window's own encoding. Proof: the window renders to exactly the full text's system block followed by the
        text of rounds first..last, and each cut (the start of round `first`, the end of round `last`, the end of
        the system block) falls just before a token the tokenizer always splits at, so each side is tokenised on its
        own — the same tokens here as in the full text. Labels follow: answers before `trained_from` become context.
        With `user_keep`, round `first`'s question keeps only its last characters: the text between the two such
        tokens around the question is encoded anew (a question is a prompt: its tokens are never trained)."""
        if not self.cuttable:
            return None
        enc, bounds, n = self.enc, self.bounds, len(self.enc.input_ids)
        begin, end, system = bounds[first], bounds[last + 1], bounds[0]
        hard = self.renderer.hard_split_ids
        if begin >= end or enc.input_ids[begin] not in hard or (end < n and enc.input_ids[end] not in hard):
            return None
        offsets, full = enc.offsets, enc.text
        assert offsets is not None and full is not None
        text = self.renderer.render_text(self._messages(first, last, trained_from, user_keep), tools=self.conv.tools)
        system_chars, begin_char = offsets[system][0] if system else 0, offsets[begin][0]
        end_char = offsets[end][0] if end < n else len(full)
        ids = enc.input_ids[begin:end]
        labels = enc.labels[begin:end]
        new_tokens = 0  # tokens the cut question has more than the whole one (negative: fewer)
        if user_keep is None:
            if text != full[:system_chars] + full[begin_char:end_char]:
                return None
        else:
            replaced = self._replace_question(first, user_keep, text, system_chars, begin, end)
            if replaced is None:
                return None
            after, upto, question_ids = replaced  # question_ids replace ids[after:upto] (relative to `begin`)
            new_tokens = len(question_ids) - (upto - after)
            ids = ids[:after] + question_ids + ids[upto:]
            labels = labels[:after] + [IGNORE_INDEX] * len(question_ids) + labels[upto:]
        labels = [IGNORE_INDEX] * system + labels
        context_end = bounds[trained_from] if trained_from is not None and trained_from > first else begin
        context = context_end - begin + (new_tokens if context_end > begin else 0)
        labels[system: system + context] = [IGNORE_INDEX] * context
        moved = self.round_starts[first] - len(self.system)  # messages dropped between the system and round `first`
        shift = system - begin + new_tokens  # every answer stands after round `first`'s question
        answers = [(i - moved, a + shift, b + shift) for i, a, b in enc.answers or () if begin <= a and b <= end]
        return Encoded(enc.input_ids[:system] + ids, labels, enc.source, answers=answers)

    def _replace_question(self, first: int, user_keep: int, text: str, system_chars: int, begin: int,
                          end: int) -> Optional[tuple[int, int, list[int]]]:
        """For `cut`: where round `first`'s question stands in the full encoding, between which two tokens the
        tokenizer always splits at (token indexes relative to `begin`: the ids after the first, up to the second),
        and the ids of the text between them with the question cut to its last `user_keep` characters; None unless
        the window `text` is provably that."""
        enc, hard = self.enc, self.renderer.hard_split_ids
        offsets, full = enc.offsets, enc.text
        assert offsets is not None and full is not None
        question = self.rounds[first][0].content
        begin_char = offsets[begin][0]
        end_char = offsets[end][0] if end < len(enc.input_ids) else len(full)
        at = full.find(question, begin_char, end_char)
        if at < 0:
            return None
        stop = at + len(question)
        kept = question[len(question) - user_keep:] if user_keep else ""
        if text != full[:system_chars] + full[begin_char:at] + kept + full[stop:end_char]:
            return None
        # The last such token ending at or before the question, and the first starting at or after its end.
        from_at, from_stop = (min(max(first_token_from(offsets, c), begin), end) for c in (at, stop))
        left = next((t for t in range(from_at - 1, begin - 1, -1) if enc.input_ids[t] in hard and offsets[t][1] <= at),
                    None)
        right = next((t for t in range(from_stop, end) if enc.input_ids[t] in hard), None)
        if left is None or right is None:
            return None
        between = full[offsets[left][1]:at] + kept + full[stop:offsets[right][0]]
        question_ids = tokenize_batch(self.renderer.tokenizer, [between])[0][0] if between else []
        return left + 1 - begin, right - begin, question_ids

    def fits(self, enc: Encoded) -> bool:
        return len(enc.input_ids) <= self.max_length

    def window_fits(self, first: int, last: int, trained_from: Optional[int] = None) -> bool:
        if self.trusted:
            return self.estimate(first, last) <= self.max_length
        enc = self.window(first, last, trained_from)
        if self.trusted is None:
            self.trusted = len(enc.input_ids) == self.estimate(first, last)
        return self.fits(enc)

    def checked(self, first: int, last: int, trained_from: Optional[int] = None) -> bool:
        """Encode the window a search chose by estimate; if it does not fit after all, stop trusting estimates."""
        if self.fits(self.window(first, last, trained_from)):
            return True
        self.trusted = False
        return False

    def _dropped_answers(self, first: int) -> int:
        return sum(1 for r in self.rounds[:first] for m in r if m.role == "assistant")

    # -- truncation: turns -----------------------------------------------------------------------------------
    def turns(self) -> Optional[Encoded]:
        last = len(self.rounds) - 1
        while True:
            guess = next((k for k in range(1, last + 1) if self.estimate(k, last) <= self.max_length), last)
            first = _smallest(0, last, guess, lambda k: self.window_fits(k, last))
            if first is None or self.checked(first, last):
                break
        if first is not None:
            enc = self.window(first, last)
        else:
            enc = self._cut_question(last, None)
            if enc is None:
                return None
            first = last
        return replace(enc, turns_dropped=self._dropped_answers(first), truncated=True)

    def _cut_question(self, index: int, trained_from: Optional[int]) -> Optional[Encoded]:
        """Round `index` alone with its user message cut from the left as little as fits; None if even an empty
        question does not fit."""
        user = self.rounds[index][0]
        if user.role != "user" or not self.fits(self.window(index, index, trained_from, 0)):
            return None
        size = len(user.content)
        whole = self.window(index, index, trained_from)
        over = len(whole.input_ids) - self.max_length  # tokens to lose, at the question's characters per token
        guess = 1 + over * size // max(1, self._answer_start(whole))
        cut = _smallest(0, size, guess, lambda k: self.fits(self.window(index, index, trained_from, size - k)))
        return self.window(index, index, trained_from, size - cut)

    # -- truncation: split -----------------------------------------------------------------------------------
    def split(self) -> Fitted:
        total = self.enc.trained_tokens
        end = max((r for r, messages in enumerate(self.rounds) if any(m.role == "assistant" for m in messages)),
                  default=-1) + 1  # trailing rounds without an answer train nothing
        samples: list[Encoded] = []
        lost = 0
        start = 0
        while start < end:
            # The most rounds from `start` on that fit together (k rounds back from the end of the range).
            span = end - start
            while True:
                guess = next((k for k in range(span, 0, -1) if self.estimate(start, start + k - 1) <= self.max_length), 1)
                fewest_dropped = _smallest(-1, span - 1, span - guess,
                                           lambda d: self.window_fits(start, start + span - 1 - d, start))
                # Trusted estimates: the window with context below is the one encoded and checked, not this one.
                if fewest_dropped is None or self.trusted or self.checked(start, start + span - 1 - fewest_dropped,
                                                                          start):
                    break
            if fewest_dropped is None:  # the round does not fit even alone: cut its question, then its answer
                sample, answer_lost = self._squeeze(start)
                lost += answer_lost
                if sample is not None:
                    samples.append(sample)
                start += 1
                continue
            last = start + span - 1 - fewest_dropped
            # Then as much earlier context as fits in front of it.
            while True:
                guess = next((c for c in range(0, start + 1) if self.estimate(c, last) <= self.max_length), start)
                first = _smallest(-1, start, guess, lambda c: self.window_fits(c, last, start))
                if first is None or self.checked(first, last, start):
                    break
            if first is None:  # the estimate trusted above was wrong: even rounds start..last alone do not fit
                continue  # estimates are no longer trusted, so this search encodes every window it tries
            sample = self.window(first, last, start)
            if sample.trained_tokens:
                samples.append(replace(sample, truncated=True, turns_dropped=0))
            start = last + 1
        kept = sum(s.trained_tokens for s in samples)
        lost_counts = {LOST_CUT: lost} if lost else {}
        if total - kept - lost > 0:  # a boundary token that tokenised differently once the text was cut
            lost_counts[LOST_ROUNDS] = total - kept - lost
        return Fitted(samples, total, lost_counts)

    def _squeeze(self, index: int) -> tuple[Optional[Encoded], int]:
        """Round `index` alone: the question cut from the left to at most half the length, the rest cut from the
        right (the answer's end is lost, so it has no end-of-turn token). Returns the sample and the answer tokens
        it lost."""
        alone = self.window(index, index, index)
        whole = alone.trained_tokens
        user = self.rounds[index][0]
        first_answer = min((first for _, first, _ in alone.answers or []), default=0)
        budget = self.max_length // 2
        if first_answer > budget and user.role == "user":
            size = len(user.content)
            guess = 1 + (first_answer - budget) * size // first_answer
            # Where the answer starts depends on the question only: the prompt without it, plus the question's
            # tokens from character k on. Where to cut is a choice, so an estimate will do: the sample is encoded.
            header = self._prompt_length(index, 0)
            kept = self._question_tokens(index, user.content)
            cut = _smallest(0, size, guess, lambda k: header + kept(k) <= budget)
            alone = self.window(index, index, index, size - cut if cut is not None else 0)
        sample = _cut(alone, slice(0, self.max_length))
        if sample.trained_tokens == 0:
            return None, whole
        return replace(sample, turns_dropped=0), max(whole - sample.trained_tokens, 0)

    def _prompt_length(self, index: int, user_keep: int) -> int:
        """Tokens before round `index`'s answer when it stands alone with `user_keep` characters of its question:
        the generation prompt's length. With no question, the cost of everything but the question; the search adds
        the question's own tokens to it (a choice of where to cut, so it need not be exact: the sample is encoded)."""
        user = self.rounds[index][0]
        question = replace(user, content=user.content[len(user.content) - user_keep:] if user_keep else "")
        return len(self.renderer.prompt_ids([*self.system, question], tools=self.conv.tools))

    def _question_tokens(self, index: int, question: str) -> Callable[[int], int]:
        """k → the tokens of question[k:], counted in the full encoding where the question stands in its text (else
        in one encoding of the question alone); a token the cut splits counts whole."""
        enc, offsets, at = self.enc, self.enc.offsets, -1
        if enc.text is not None and offsets is not None and self.bounds[index] < len(offsets):
            at = enc.text.find(question, offsets[self.bounds[index]][0])
        if at < 0:
            _, offsets = tokenize_batch(self.renderer.tokenizer, [question])[0]
            at = 0
        assert offsets is not None
        end = first_token_from(offsets, at + len(question))
        return lambda k: end - bisect.bisect_right(offsets, at + k, key=_end)

    @staticmethod
    def _answer_start(enc: Encoded) -> int:
        return min((first for _, first, _ in enc.answers or []), default=len(enc.input_ids))


def _end(offset: tuple[int, int]) -> int:
    return offset[1]


def has_trained(enc: Encoded) -> bool:
    return any(x != IGNORE_INDEX for x in enc.labels)
