"""Ember: turn a base LLM into a tuned, served, measured model.

The public Python API (the same paths the `ember` commands take; `import ember` itself loads no torch):

    import ember
    cfg = ember.load_config("examples/quickstart.yaml", ["train.max_steps=10"])
    result = ember.train(cfg)                        # → TrainResult(output_dir, metrics, ...)
    engine = ember.load_run(result.output_dir)       # the tuned model, rendering exactly as training did
    print(engine.generate([{"role": "user", "content": "你是谁？"}]).text)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Sequence

__version__ = "0.2.0"

if TYPE_CHECKING:  # pragma: no cover
    from ember.config.schema import EmberConfig
    from ember.inference.engine import Engine
    from ember.training.prepare import PreparedData
    from ember.training.run import TrainResult


def load_config(path: Optional[str] = None, overrides: Sequence[str] = ()) -> "EmberConfig":
    """Read a run config.

    Args:
        path: a YAML file (model / data / method / train / output sections), or None for the defaults.
        overrides: dotted `section.key=value` strings, applied in order (`data.datasets.0.path=x.jsonl` indexes lists).

    Returns:
        The typed, validated `EmberConfig`.

    Raises:
        ConfigError: the file is missing or not YAML, a key is unknown (the message names the closest valid one), a
            value has the wrong type, or a cross-field rule fails.
    """
    from ember.config import load_config as _load, validate

    return validate(_load(path, list(overrides)))


def prepare_data(cfg: "EmberConfig", tokenizer: Any = None, progress: bool = True) -> "PreparedData":
    """Build the exact training samples of a config (cached by content), as `ember train` and `ember data` do.

    Args:
        cfg: a config from `load_config`.
        tokenizer: a tokenizer to use instead of the model's own (the chat template is written into it).
        progress: show progress bars for long preparations.

    Returns:
        `PreparedData(tokenizer, renderer, data, from_cache)`; `data.train` / `data.eval` are sequences of samples
        (`input_ids`, `labels`, `weights`) stored memory-mapped, `data.report` counts what was kept and why not.

    Raises:
        DataError: a malformed record (file:line, field, what was expected) with `data.on_error: strict`, or no
            trainable token left (with the counts of what was dropped).
        ConfigError: the template cannot label answers safely, or the model / tokenizer cannot be found.
    """
    from ember.training.prepare import prepare_data as _prepare

    return _prepare(cfg, tokenizer=tokenizer, progress=progress)


def train(cfg: "EmberConfig | str", overrides: Sequence[str] = (), callbacks: Sequence[Any] = ()) -> "TrainResult":
    """Run one training job and write a servable output directory.

    Args:
        cfg: an `EmberConfig`, or the path of a YAML config.
        overrides: dotted overrides applied when `cfg` is a path.
        callbacks: extra `transformers.TrainerCallback`s, run beside Ember's own.

    Returns:
        `TrainResult(output_dir, metrics, trainable_params, total_params)`.

    Raises:
        ConfigError: an invalid config, caught before any weight loads.
        DataError: bad data (see `prepare_data`).
        EmberError: the divergence guard stopped the run (non-finite or exploding loss; the last good checkpoint
            is kept), or a checkpoint could not be written.
    """
    from ember.training.run import train as _train

    if not hasattr(cfg, "model"):
        cfg = load_config(str(cfg), overrides)
    return _train(cfg, callbacks=callbacks)


def load_run(model: str, adapter: Optional[str] = None, dtype: str = "auto") -> "Engine":
    """Load a model for generation exactly as it was trained: weights (+ adapter), tokenizer, chat template, stop
    tokens and the training system prompt.

    Args:
        model: an `ember train` output directory, a Hugging Face model directory, a .gguf file, a registry name or a
            hub id.
        adapter: a LoRA adapter directory to put on `model`.
        dtype: "auto" (bf16 on a GPU that has it, else fp32), "float32", "bfloat16" or "float16".

    Returns:
        An `Engine`: `generate(messages)`, `generate_batch(conversations)`, `stream(messages)`, `prompt_ids(messages)`.

    Raises:
        ConfigError: the model cannot be found, or it has no chat template.
    """
    from ember.inference.engine import Engine

    return Engine.load(model, adapter, dtype)


def __getattr__(name: str) -> Any:
    if name == "Engine":
        from ember.inference.engine import Engine

        return Engine
    if name in ("EmberError", "ConfigError", "DataError"):
        import ember.errors

        return getattr(ember.errors, name)
    raise AttributeError(f"module 'ember' has no attribute {name!r}")


__all__ = ["ConfigError", "DataError", "EmberError", "Engine", "load_config", "load_run", "prepare_data", "train"]
