"""`ember chat`: interactive or scripted multi-turn chat with a trained model."""

from __future__ import annotations

import argparse
import sys

from ember.config.schema import DEFAULT_MODEL
from ember.inference.completion import GenerationOptions


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
    from ember.inference.chat import ChatSession, print_prompt, run_chat
    from ember.inference.engine import Engine

    engine = Engine.load(args.model, args.adapter)
    options = options_from_args(args, getattr(engine.model, "generation_config", None))
    session = ChatSession(engine, options, system=args.system, history_max_tokens=args.history_max_tokens)
    if args.prompt is not None:
        if args.show_prompt:
            print_prompt(session, args.prompt, sys.stdout)
        for piece in session.ask(args.prompt, stream=True):
            print(piece, end="", flush=True)
        print()
        return 0
    run_chat(session, iter(sys.stdin.readline, ""), interactive=sys.stdin.isatty(), show_prompt=args.show_prompt)
    return 0


def register(sub) -> None:
    p = sub.add_parser("chat", help="multi-turn chat with a model or a training output dir")
    p.add_argument("--model", default=DEFAULT_MODEL, help="output dir of `ember train`, HF dir, .gguf or name")
    p.add_argument("--adapter", default=None, help="a LoRA adapter dir to put on --model")
    p.add_argument("--prompt", default=None, help="answer this once and exit")
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--history-max-tokens", type=int, default=2048, help="prompt budget; oldest turns are dropped first")
    p.add_argument("--show-prompt", action="store_true", help="print the exact rendered prompt and its token count")
    add_generation_options(p)
    p.set_defaults(func=cmd_chat)
