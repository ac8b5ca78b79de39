"""Where each assistant answer sits in a rendered conversation, in time linear in the conversation's length.

The definition (what `Renderer.exact_spans` computes): answer k spans from the end of
`render(messages[:k], add_generation_prompt=True)` to the end of `render(messages[:k+1])`. Rendering those prefixes
for every answer costs O(turns²). Instead we render the conversation once more with every message's content replaced
by a sentinel (the *skeleton*). Between two sentinels lies only template text ("glue"). Where an answer's span starts
and ends inside its glue is a property of the template, not of the content: we learn it once per glue shape from the
exact prefix renders (calibration), then for every later answer whose glue is the same text we place the span by
string comparison alone. Glue we have not seen (round numbers, tool calls, a template that varies by position) is
computed exactly, so the result always equals the definition; the first conversations a renderer sees are checked
both ways (audit: their first answers and their last) and any disagreement switches the renderer to exact spans for
good.

A tool call without text is left unmarked: templates write the calls (JSON that differs per call) where the text
would be, and many add a separator only when there is text, so a sentinel there would change the glue. Such a
message is part of the glue around it; its own span is always computed exactly, the other answers still placed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

log = logging.getLogger(__name__)

_OPEN, _CLOSE = "\ue000", "\ue001"
AUDITED_CONVERSATIONS = 3  # conversations per renderer computed both ways
AUDITED_ANSWERS = 8  # of each audited conversation: its first answers (and its last one) computed both ways


@dataclass
class Skeleton:
    """The rendering with contents replaced by sentinels, and how its positions map onto the real text."""

    text: str
    starts: list[Optional[int]]  # sentinel k starts here in `text` (skeleton coordinates); None: message k unmarked
    ends: list[Optional[int]]  # ... and ends here
    shifts: list[int]  # real position = skeleton position + shifts[k] for glue after sentinel k-1 (k = 0: before any)

    def to_real(self, position: int, glue: int) -> int:
        """A skeleton position inside glue number `glue` (the glue before sentinel `glue`) → the real text position."""
        return position + self.shifts[glue]

    def glue_start(self, index: int) -> int:
        """Where the glue before message `index` starts: the end of the last marked message before it."""
        return next((e for e in reversed(self.ends[:index]) if e is not None), 0)

    def next_start(self, index: int) -> int:
        """Where the first marked message after `index` starts (the end of the text when there is none)."""
        return next((b for b in self.starts[index + 1:] if b is not None), len(self.text))


def sentinel(index: int) -> str:
    return f"{_OPEN}{index}{_CLOSE}"


def build_skeleton(skeleton_text: str, contents: list[str], text: str,
                   unmarked: Optional[list[bool]] = None) -> Optional[Skeleton]:
    """Locate the sentinels and check that putting the contents back gives `text` exactly (contents kept verbatim,
    or stripped, by the template). None when the template transforms contents: spans must then be exact.
    `unmarked[k]`: message k was rendered as itself (no sentinel), so it is part of the glue."""
    if any(_OPEN in c or _CLOSE in c for c in contents):
        return None
    unmarked = unmarked or [False] * len(contents)
    starts: list[Optional[int]] = []
    ends: list[Optional[int]] = []
    cursor = 0
    for k in range(len(contents)):
        if unmarked[k]:
            starts.append(None)
            ends.append(None)
            continue
        mark = sentinel(k)
        at = skeleton_text.find(mark, cursor)
        if at < 0:
            return None  # a template that drops a message (or renders it twice) is not one we can map
        starts.append(at)
        ends.append(at + len(mark))
        cursor = at + len(mark)
    for transform in (lambda s: s, str.strip):
        pieces, shifts, shift, last = [], [0], 0, 0
        for k, content in enumerate(contents):
            begin, end = starts[k], ends[k]
            if begin is None or end is None:
                shifts.append(shift)
                continue
            content = transform(content)
            pieces.append(skeleton_text[last:begin])
            pieces.append(content)
            shift += len(content) - (end - begin)
            shifts.append(shift)
            last = end
        pieces.append(skeleton_text[last:])
        if "".join(pieces) == text:
            return Skeleton(skeleton_text, starts, ends, shifts)
    return None


class SpanLayout:
    """Per-renderer memory of glue shapes: (glue text before an answer, offset of the span start in it) and the tail
    text each answer's span ends with. Keys hold the roles around the answer, so a shape is only reused where the
    template saw the same neighbours."""

    def __init__(self) -> None:
        self.heads: dict[tuple[Any, ...], tuple[str, int]] = {}
        self.tails: dict[tuple[Any, ...], str] = {}
        self.audits_left = AUDITED_CONVERSATIONS
        self.exact_only = False

    def place(self, skeleton: Skeleton, roles: list[str], calls: list[bool], index: int,
              last: bool) -> Optional[tuple[int, int]]:
        """Real (start, end) of answer `index`, or None when its glue shape is new (or it is unmarked)."""
        s = skeleton
        begin, finish = s.starts[index], s.ends[index]
        if begin is None or finish is None:
            return None
        glue_start = s.glue_start(index)
        glue = s.text[glue_start:begin]
        head = self.heads.get(_head_key(roles, calls, index))
        if head is None or head[0] != glue:
            return None
        start = s.to_real(glue_start + head[1], index)
        if last:
            return start, len(s.text) + s.shifts[-1]
        tail = self.tails.get(_tail_key(roles, calls, index))
        if tail is None or not s.text.startswith(tail, finish):
            return None
        end = finish + len(tail)
        if end > s.next_start(index):
            return None
        return start, s.to_real(end, index + 1)

    def learn(self, skeleton: Skeleton, roles: list[str], calls: list[bool], index: int, last: bool,
              start: int, end: int) -> None:
        """Remember the shape of answer `index` whose exact real span is (start, end)."""
        s = skeleton
        begin, finish = s.starts[index], s.ends[index]
        if begin is None or finish is None:
            return  # an unmarked answer: its span is always exact
        glue_start = s.glue_start(index)
        head_offset = start - s.to_real(glue_start, index)
        if not 0 <= head_offset <= begin - glue_start:
            return  # the span starts outside its glue: not a shape we can reuse
        self.heads[_head_key(roles, calls, index)] = (s.text[glue_start:begin], head_offset)
        if last:
            return
        tail_end = end - s.shifts[index + 1]
        if finish <= tail_end <= s.next_start(index):
            self.tails[_tail_key(roles, calls, index)] = s.text[finish:tail_end]


def _head_key(roles: list[str], calls: list[bool], index: int) -> tuple[Any, ...]:
    return ("head", roles[index - 1] if index > 0 else None, calls[index])


def _tail_key(roles: list[str], calls: list[bool], index: int) -> tuple[Any, ...]:
    return ("tail", roles[index - 1] if index > 0 else None, calls[index])
