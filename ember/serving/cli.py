"""`ember serve` (OpenAI-compatible API) and `ember webui` (chat page)."""

from __future__ import annotations

import argparse
import os

from ember.config.schema import DEFAULT_MODEL
from ember.core.ports import check_port
from ember.inference.cli import add_generation_options, check_generation_args, options_from_args


def _add_model(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--model", required=required, default=None if required else DEFAULT_MODEL,
                   help="output dir of `ember train`, HF dir, .gguf or name")
    p.add_argument("--adapter", default=None, help="a LoRA adapter dir to put on --model")


def _load(args):
    from ember.inference.engine import Engine

    check_generation_args(args)
    engine = Engine.load(args.model, args.adapter)
    return engine, options_from_args(args, getattr(engine.model, "generation_config", None))


def bind_port(host: str, port: int):
    """Take the port before anything slow happens, so a busy port fails in a second, not after the model loads.

    Raises:
        ConfigError: the port is out of range, or the address is in use or cannot be bound (the message names it
            and the fix).
    """
    import socket

    from ember.errors import ConfigError

    check_port(port)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host}: cannot resolve it ({exc.strerror})") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}. Another server may be using the port: "
                          "stop it or pick another --port.") from None
    return sock


def cmd_serve(args) -> int:
    import uvicorn

    from ember.serving.api import create_app

    sock = bind_port(args.host, args.port)
    try:
        engine, defaults = _load(args)
        name = args.model_name or engine.loaded.name
        app = create_app(engine, name, api_key=args.api_key, defaults=defaults, max_batch=args.max_batch,
                         prefill_chunk=args.prefill_chunk, max_request_bytes=args.max_request_bytes)
        auth = "API key required" if args.api_key else "no API key"
        print(f"serving '{name}' at http://{args.host}:{sock.getsockname()[1]}/v1  ({auth}; Ctrl-C stops)",
              flush=True)
        config = uvicorn.Config(app, log_level="info" if args.verbose else "warning")
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
    return 0


def cmd_webui(args) -> int:
    check_port(args.port)
    from ember.serving.webui import build_ui

    engine, defaults = _load(args)
    ui = build_ui(engine, defaults, system=args.system, history_max_tokens=args.history_max_tokens)
    print(f"web chat at http://{args.host}:{args.port}/  (Ctrl-C stops)", flush=True)
    ui.queue().launch(server_name=args.host, server_port=args.port, share=False, show_error=True)
    return 0


def register(sub) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP API (chat/completions, completions, models)")
    _add_model(p)
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=os.environ.get("EMBER_API_KEY"),
                   help="require 'Authorization: Bearer KEY' (default: $EMBER_API_KEY; unset = open)")
    p.add_argument("--model-name", default=None,
                   help="the name clients pass as `model` (default: the --model dir name)")
    p.add_argument("--max-batch", type=int, default=8,
                   help="most sequences generated at once (continuous batching); also the most one request may ask for")
    p.add_argument("--prefill-chunk", type=int, default=512,
                   help="most prompt tokens prefilled between two decoding steps (long prompts go in chunks)")
    p.add_argument("--max-request-bytes", type=int, default=1 << 20, help="larger request bodies get a 413")
    add_generation_options(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("webui", help="a web chat page (Gradio) over the model")
    _add_model(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--system", default=None, help="initial system prompt")
    p.add_argument("--history-max-tokens", type=int, default=2048, help="prompt budget; oldest turns are dropped first")
    add_generation_options(p)
    p.set_defaults(func=cmd_webui)
