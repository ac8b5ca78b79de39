"""Make an encoded sample fit `max_length`.

`turns` (default) works on the conversation: drop the oldest whole user→assistant rounds (the system prompt stays),
then cut the last user message from the left; the final answer is never cut, so it keeps its end-of-turn token.
A sample whose final answer alone does not fit is dropped. `left` / `right` cut tokens; `drop` drops long samples.
"""

from __future__ import annotations

from typing import Optional

from ember.data.conversation import Conversation, Message
from ember.data.render import IGNORE_INDEX, Encoded, Renderer


def fit(renderer: Renderer, conv: Conversation, enc: Encoded, mode: str, max_length: int, mask: str) -> Optional[Encoded]:
    """Return `enc` or a shortened version of it; None means the sample cannot fit and is dropped."""
    if len(enc.input_ids) <= max_length:
        return enc
    if mode == "drop":
        return None
    if mode == "right":
        return _cut(enc, slice(0, max_length))
    if mode == "left":
        return _cut(enc, slice(len(enc.input_ids) - max_length, None))
    return _fit_turns(renderer, conv, max_length, mask)


def _cut(enc: Encoded, part: slice) -> Encoded:
    return Encoded(
        enc.input_ids[part],
        enc.labels[part],
        enc.source,
        enc.weights[part] if enc.weights else None,
        enc.turns_dropped,
        True,
        list(enc.warnings),
    )


def _rounds(messages: list[Message]) -> list[list[Message]]:
    """Split into rounds, each starting at a user message (tool results stay in their round)."""
    rounds: list[list[Message]] = []
    for m in messages:
        if m.role == "user" or not rounds:
            rounds.append([m])
        else:
            rounds[-1].append(m)
    return rounds


def _fit_turns(renderer: Renderer, conv: Conversation, max_length: int, mask: str) -> Optional[Encoded]:
    system = conv.messages[:1] if conv.system is not None else []
    rounds = _rounds(conv.messages[len(system):])
    dropped = 0

    def build(msgs: list[Message]) -> Encoded:
        return renderer.encode(Conversation(msgs, conv.source, conv.tools, conv.meta), mask)

    def keep_from(k: int) -> Encoded:
        return build(system + [m for r in rounds[k:] for m in r])

    # Binary search for the fewest oldest rounds to drop (dropping more never makes the rendering longer), so a
    # long conversation costs O(log rounds) re-encodes instead of one per dropped round.
    fitted: dict[int, Encoded] = {}
    lo, hi = 0, len(rounds) - 1  # dropping lo rounds does not fit (the full sample didn't); hi is the last resort
    if hi > 0:
        enc = keep_from(hi)
        if len(enc.input_ids) <= max_length:
            fitted[hi] = enc
            while hi - lo > 1:
                mid = (lo + hi) // 2
                enc = keep_from(mid)
                if len(enc.input_ids) <= max_length:
                    hi, fitted[mid] = mid, enc
                else:
                    lo = mid
            enc = fitted[hi]
            enc.turns_dropped = sum(1 for r in rounds[:hi] for m in r if m.role == "assistant")
            enc.truncated = True
            return enc
    dropped = sum(1 for r in rounds[:-1] for m in r if m.role == "assistant")
    rounds = rounds[-1:]

    last = rounds[0]
    user, rest = last[0], last[1:]
    if user.role != "user":
        return None

    def with_user_suffix(keep: int) -> Encoded:
        text = user.content[len(user.content) - keep:] if keep else ""
        return build(system + [Message("user", text, user.train, user.weight)] + rest)

    if len(with_user_suffix(0).input_ids) > max_length:
        return None  # the final answer alone does not fit
    lo, hi = 0, len(user.content)  # largest suffix length that fits: lo fits, hi does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if len(with_user_suffix(mid).input_ids) <= max_length:
            lo = mid
        else:
            hi = mid
    enc = with_user_suffix(lo)
    enc.turns_dropped, enc.truncated = dropped, True
    return enc


def has_trained(enc: Encoded) -> bool:
    return any(x != IGNORE_INDEX for x in enc.labels)
