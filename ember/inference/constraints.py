"""Constrained decoding: only tokens that keep the answer inside a grammar (JSON) may be chosen.

Built on llguidance (a Rust grammar engine with a Python binding, installed with `ember[serve]`): it compiles a
JSON schema — `{"type": "object"}` for OpenAI's `json_object` mode — into a matcher that, at every step, gives
the set of tokens that can extend the text towards a valid document, and allows the stop token only once the
document is complete. The mask is applied to the row's logits before greedy choice or sampling, so the answer is
valid JSON unless it runs out of tokens first (`finish_reason: "length"`).
"""

from __future__ import annotations

import json
import threading
from typing import Any, Optional

import torch

from ember.errors import ConfigError


class GrammarCompiler:
    """One per tokenizer: builds the (slow, ~1 s) llguidance tokenizer once, then checks and compiles schemas."""

    def __init__(self, tokenizer: Any, stop_ids: set[int]):
        self.tokenizer = tokenizer
        self.stop_ids = sorted(stop_ids)
        self._ll_tokenizer = None
        self._lock = threading.Lock()

    def _ll(self):
        try:
            import llguidance.hf
        except ImportError:
            raise ConfigError("JSON-constrained answers need the llguidance package: pip install 'ember[serve]'") \
                from None
        with self._lock:
            if self._ll_tokenizer is None:
                self._ll_tokenizer = llguidance.hf.from_tokenizer(self.tokenizer, n_vocab=len(self.tokenizer),
                                                                  eos_token=self.stop_ids[0] if self.stop_ids else None)
        return self._ll_tokenizer

    def json(self, schema: Optional[dict] = None) -> "JsonGrammar":
        """A grammar for one JSON value matching `schema` (default: any JSON object).

        Raises:
            ConfigError: the schema is not one llguidance can compile (the message says why).
        """
        import llguidance

        tokenizer = self._ll()
        # Compact JSON (", " and ": " separators, no free whitespace): a small model may otherwise fill its whole
        # token budget with blank lines that every JSON grammar allows between tokens.
        schema = {**(schema or {"type": "object"}), "x-guidance": {"whitespace_flexible": False}}
        grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema))
        probe = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
        if probe.is_error():
            raise ConfigError(f"the JSON schema cannot be used: {probe.get_error()}")
        return JsonGrammar(tokenizer, grammar)


    def lark(self, grammar: str) -> "JsonGrammar":
        """A grammar in llguidance's Lark syntax, e.g. fixed text around JSON (`%json {schema}`), as a forced tool
        call (ember.serving.tools) is.

        Raises:
            ConfigError: llguidance cannot compile it (the message says why).
        """
        import llguidance

        tokenizer = self._ll()
        try:
            compiled = llguidance.LLMatcher.grammar_from_lark(grammar)
        except (ValueError, RuntimeError) as exc:
            raise ConfigError(f"the grammar cannot be used: {exc}") from None
        probe = llguidance.LLMatcher(tokenizer, compiled, log_level=0)
        if probe.is_error():
            raise ConfigError(f"the grammar cannot be used: {probe.get_error()}")
        return JsonGrammar(tokenizer, compiled)


class JsonGrammar:
    """A compiled grammar; `constraint()` makes the per-row state (each row walks the grammar on its own)."""

    def __init__(self, ll_tokenizer: Any, grammar: str):
        self.ll_tokenizer = ll_tokenizer
        self.grammar = grammar

    def constraint(self) -> "GrammarConstraint":
        import llguidance

        return GrammarConstraint(llguidance.LLMatcher(self.ll_tokenizer, self.grammar, log_level=0))


class GrammarConstraint:
    """The `ember.inference.sampling.Constraint` of one row."""

    def __init__(self, matcher: Any):
        self.matcher = matcher

    def allowed(self) -> Optional[torch.Tensor]:
        if self.matcher.is_error():
            return None  # a token outside the grammar slipped in (cannot happen with the mask applied): stop limiting
        bias = self.matcher.compute_logit_bias()
        return torch.frombuffer(bytearray(bias), dtype=torch.uint8) > 0

    def advance(self, token: int) -> None:
        self.matcher.consume_token(token)
