"""`ember chat`: interactive or scripted multi-turn chat with a trained model."""

from __future__ import annotations

import argparse
import sys

from ember.config.schema import DEFAULT_MODEL
from ember.errors import ConfigError
from ember.inference.completion import MIN_TEMPERATURE, RANGES, GenerationOptions, option_problem


def add_generation_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generation (defaults: greedy, as recommended for deterministic answers)")
    g.add_argument("--max-new-tokens", type=int, default=256)
    g.add_argument("--temperature", type=float, default=None, help="set > 0 with --do-sample")
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--repetition-penalty", type=float, default=None)
    g.add_argument("--do-sample", action="store_true")
    g.add_argument("--num-beams", type=int, default=1)
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    g.add_argument("--seed", type=int, default=None)


def check_generation_args(args) -> None:
    """Refuse, before any model loads, generation flags outside the ranges `ember serve` accepts in a request (one
    table for both: ember.inference.completion.RANGES). Commands without some of the flags are checked on the rest.

    Raises:
        ConfigError: names the flag, its value and the accepted range.
    """
    for name in RANGES:
        value = getattr(args, name, None)
        problem = option_problem(name, value)
        if problem:
            raise ConfigError(f"--{name.replace('_', '-')} {value} {problem}")
    if getattr(args, "do_sample", False) and args.temperature == 0:
        # serve reads temperature 0 as greedy; sampling at it would divide the logits by zero
        raise ConfigError(f"--temperature 0 means greedy decoding, which --do-sample contradicts: sample at a "
                          f"temperature from {MIN_TEMPERATURE} to {RANGES['temperature'].le}, or leave out --do-sample")


def options_from_args(args, generation_config=None) -> GenerationOptions:
    """CLI values win; otherwise the checkpoint's generation config; otherwise greedy defaults."""
    base = GenerationOptions()
    gc = generation_config
    pick = lambda value, key, default: value if value is not None else (getattr(gc, key, None) if gc is not None and getattr(gc, key, None) is not None else default)  # noqa: E731
    return GenerationOptions(
        max_new_tokens=args.max_new_tokens,
        do_sample=args.do_sample,
        temperature=pick(args.temperature, "temperature", base.temperature),
        top_p=pick(args.top_p, "top_p", base.top_p),
        top_k=pick(args.top_k, "top_k", base.top_k),
        repetition_penalty=pick(args.repetition_penalty, "repetition_penalty", base.repetition_penalty),
        num_beams=args.num_beams,
        stop=list(args.stop),
        seed=args.seed,
    )


def cmd_chat(args) -> int:
    from pathlib import Path

    from ember.data.images import read_image
    from ember.inference.chat import ChatSession, print_calls, print_prompt, run_chat
    from ember.inference.engine import Engine

    check_generation_args(args)
    engine = Engine.load(args.model, args.adapter)
    options = options_from_args(args, getattr(engine.model, "generation_config", None))
    session = ChatSession(engine, options, system=args.system, history_max_tokens=args.history_max_tokens,
                          tools=read_tools(args.tools) if args.tools else None)
    for path in args.image:
        session.attach(read_image(path, Path.cwd(), "--image", "PATH"))
    if args.prompt is not None:
        if args.show_prompt:
            print_prompt(session, args.prompt, sys.stdout)
        shown = False
        for piece in session.ask(args.prompt, stream=True):
            print(piece, end="", flush=True)
            shown = True
        if shown:
            print()
        print_calls(session.last_calls, sys.stdout, interactive=False)
        return 0
    run_chat(session, iter(sys.stdin.readline, ""), interactive=sys.stdin.isatty(), show_prompt=args.show_prompt)
    return 0


def read_tools(path: str) -> list[dict]:
    """`--tools FILE`: a JSON list of tool schemas (OpenAI's `tools`, or flat {name, description, parameters})."""
    import json
    from pathlib import Path

    from ember.data.tools import normalize_tools

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--tools {path}: no such file")
    try:
        tools = normalize_tools(json.loads(file.read_text(encoding="utf-8")), str(file))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--tools {path}: not JSON ({exc.msg}, line {exc.lineno})") from None
    if not tools:
        raise ConfigError(f"--tools {path}: the list holds no tools")
    return tools


def register(sub) -> None:
    p = sub.add_parser("chat", help="multi-turn chat with a model or a training output dir")
    p.add_argument("--model", default=DEFAULT_MODEL, help="output dir of `ember train`, HF dir, .gguf or name")
    p.add_argument("--adapter", default=None, help="a LoRA adapter dir to put on --model")
    p.add_argument("--prompt", default=None, help="answer this once and exit")
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--history-max-tokens", type=int, default=2048, help="prompt budget; oldest turns are dropped first")
    p.add_argument("--show-prompt", action="store_true", help="print the exact rendered prompt and its token count")
    p.add_argument("--image", action="append", default=[], metavar="PATH",
                   help="an image for the first message (repeatable; an image-text model); /image PATH attaches more")
    p.add_argument("--tools", default=None, metavar="FILE",
                   help="a JSON list of tool schemas the model may call; calls are shown, /tool RESULT answers them")
    add_generation_options(p)
    p.set_defaults(func=cmd_chat)
