"""Where each assistant answer sits in a rendered conversation, in time linear in the conversation's length.

The definition (what `Renderer.exact_spans` computes): answer k spans from the end of
`render(messages[:k], add_generation_prompt=True)` to the end of `render(messages[:k+1])`. Rendering those prefixes
for every answer costs O(turns²). Instead we render the conversation once more with every message's content replaced
by a sentinel (the *skeleton*). Between two sentinels lies only template text ("glue"). Where an answer's span starts
and ends inside its glue is a property of the template, not of the content: we learn it once per glue shape from the
exact prefix renders (calibration), then for every later answer whose glue is the same text we place the span by
string comparison alone. Glue we have not seen (round numbers, tool calls, a template that varies by position) is
computed exactly, so the result always equals the definition; the first conversations a renderer sees are checked
both ways (audit) and any disagreement switches the renderer to exact spans for good.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

log = logging.getLogger(__name__)

_OPEN, _CLOSE = "\ue000", "\ue001"
AUDITED_CONVERSATIONS = 3  # conversations per renderer computed both ways


@dataclass
class Skeleton:
    """The rendering with contents replaced by sentinels, and how its positions map onto the real text."""

    text: str
    starts: list[int]  # sentinel k starts here in `text` (skeleton coordinates)
    ends: list[int]  # ... and ends here
    shifts: list[int]  # real position = skeleton position + shifts[k] for glue after sentinel k-1 (k = 0: before any)

    def to_real(self, position: int, glue: int) -> int:
        """A skeleton position inside glue number `glue` (the glue before sentinel `glue`) → the real text position."""
        return position + self.shifts[glue]


def sentinel(index: int) -> str:
    return f"{_OPEN}{index}{_CLOSE}"


def build_skeleton(skeleton_text: str, contents: list[str], text: str) -> Optional[Skeleton]:
    """Locate the sentinels and check that putting the contents back gives `text` exactly (contents kept verbatim,
    or stripped, by the template). None when the template transforms contents: spans must then be exact."""
    if any(_OPEN in c or _CLOSE in c for c in contents):
        return None
    starts, ends = [], []
    cursor = 0
    for k in range(len(contents)):
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
            content = transform(content)
            pieces.append(skeleton_text[last:starts[k]])
            pieces.append(content)
            shift += len(content) - (ends[k] - starts[k])
            shifts.append(shift)
            last = ends[k]
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
        """Real (start, end) of answer `index`, or None when its glue shape is new."""
        s = skeleton
        glue_start = s.ends[index - 1] if index > 0 else 0
        glue = s.text[glue_start:s.starts[index]]
        head = self.heads.get(_head_key(roles, calls, index))
        if head is None or head[0] != glue:
            return None
        start = s.to_real(glue_start + head[1], index)
        if last:
            return start, len(s.text) + s.shifts[-1]
        tail = self.tails.get(_tail_key(roles, calls, index))
        if tail is None or not s.text.startswith(tail, s.ends[index]):
            return None
        end = s.ends[index] + len(tail)
        if index + 1 < len(s.starts) and end > s.starts[index + 1]:
            return None
        return start, s.to_real(end, index + 1)

    def learn(self, skeleton: Skeleton, roles: list[str], calls: list[bool], index: int, last: bool,
              start: int, end: int) -> None:
        """Remember the shape of answer `index` whose exact real span is (start, end)."""
        s = skeleton
        glue_start = s.ends[index - 1] if index > 0 else 0
        head_offset = start - s.to_real(glue_start, index)
        if not 0 <= head_offset <= s.starts[index] - glue_start:
            return  # the span starts outside its glue: not a shape we can reuse
        self.heads[_head_key(roles, calls, index)] = (s.text[glue_start:s.starts[index]], head_offset)
        if last:
            return
        tail_end = end - s.shifts[index + 1]
        limit = s.starts[index + 1] if index + 1 < len(s.starts) else len(s.text)
        if s.ends[index] <= tail_end <= limit:
            self.tails[_tail_key(roles, calls, index)] = s.text[s.ends[index]:tail_end]


def _head_key(roles: list[str], calls: list[bool], index: int) -> tuple[Any, ...]:
    return ("head", roles[index - 1] if index > 0 else None, calls[index])


def _tail_key(roles: list[str], calls: list[bool], index: int) -> tuple[Any, ...]:
    return ("tail", roles[index - 1] if index > 0 else None, calls[index])
