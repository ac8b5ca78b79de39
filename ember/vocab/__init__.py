"""Vocabulary extension: learn pieces (train), merge them into a base tokenizer and resize the model (extend),
and measure compression (stats). Heavy imports (tokenizers, torch, transformers) happen inside the functions."""

from ember.vocab.corpus import read_corpus
from ember.vocab.embeddings import base_piece_ids, padded_size, resize_and_init
from ember.vocab.extend import ExtendSummary, extend_vocab, save_tokenizer
from ember.vocab.merge import ExtendResult, extend_tokenizer_json
from ember.vocab.pieces import load_pieces, save_pieces
from ember.vocab.sources import open_tokenizer
from ember.vocab.stats import TokenizerStats, compare_tokenizers, format_table, stats_json
from ember.vocab.train import train_pieces

__all__ = [
    "ExtendResult",
    "ExtendSummary",
    "TokenizerStats",
    "base_piece_ids",
    "compare_tokenizers",
    "extend_tokenizer_json",
    "extend_vocab",
    "format_table",
    "load_pieces",
    "open_tokenizer",
    "padded_size",
    "read_corpus",
    "resize_and_init",
    "save_pieces",
    "save_tokenizer",
    "stats_json",
    "train_pieces",
]
